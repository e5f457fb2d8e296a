"""Issue 17: core/ is grouped by the data's path, and imports only go downward (function-level imports too)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "core"
# Lowest first: a module may import its own package and those before it, never one after it.
LAYERS = ["base", "data", "network", "results", "training", "serving"]
TOP = {"cli", "bench", "loadbench", "poolbench", "terminal", "launch", "gpucheck", "installplan", "upkeep", "__main__",
       "__init__"}  # the command line on top


def layer_of(module: str) -> int:
    """core.<package>.<module> -> its package's place; the top-level modules sit above every package."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return len(LAYERS)


def core_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `core...` import in a file, wherever it is (functions included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "core":
            if node.module == "core":  # from core import StudioError | from core import <package>
                found += [(node.lineno, f"core.{a.name}") for a in node.names if a.name in LAYERS]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "core"]
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def test_core_is_grouped_into_packages_with_nothing_loose():
    loose = sorted(p.stem for p in CORE.glob("*.py")) 
    assert set(loose) <= TOP, f"modules outside the packages: {set(loose) - TOP}"
    for package in LAYERS:
        assert (CORE / package / "__init__.py").is_file()
        assert ast.get_docstring(ast.parse((CORE / package / "__init__.py").read_text())), package


def test_imports_only_go_downward():
    upward = []
    for path in sorted(CORE.rglob("*.py")):
        mine = module_name(path)
        for line, target in core_imports(path):
            if layer_of(target) > layer_of(mine):
                upward.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_every_import_names_a_module_that_exists():
    """A package path mistyped in a function-level import would only fail when that function runs."""
    import importlib.util

    missing = []
    for path in sorted(CORE.rglob("*.py")) + sorted((REPO / "pages").glob("*.py")):
        for line, target in core_imports(path):
            if importlib.util.find_spec(target) is None:
                missing.append(f"{path.relative_to(REPO)}:{line} {target}")
    assert not missing, missing


def test_core_never_imports_streamlit():
    offenders = [str(p.relative_to(REPO)) for p in CORE.rglob("*.py")
                 if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "streamlit" in
                        ((n.module or "") if isinstance(n, ast.ImportFrom) else " ".join(a.name for a in n.names))
                        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))))]
    assert not offenders, offenders


def test_the_layer_rule_catches_an_upward_import(tmp_path):
    """The rule itself, on a made-up module: data importing training is refused."""
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from core.training.jobs import active_run\n")
    assert core_imports(fake) == [(2, "core.training.jobs")]
    assert layer_of("core.training.jobs") > layer_of("core.data.images")

