"""Issue 17: pages/ stays thin. The shared helpers are small modules by concern, layered without cycles, and every
name a page imports from them exists where it is imported from."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = REPO / "pages"
MAX_LINES = 250  # a helper module past this is holding more than one concern: split it by what it does
# The shared helpers, lowest first: each may import only those before it (the sidebar reads the session and the
# loaders, never the other way round). pages/_common.py is the bottom: messages every page shows the same way, and
# where the pages are; pages/_app.py the top: the app every entrypoint runs.
SHARED = ["_common", "_session", "_loaders", "_model_choice", "_sidebar", "_app"]


def helper_modules() -> list[Path]:
    return sorted(PAGES.glob("_*.py"))


def pages_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every `from pages.<module> import ...` in a file, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pages":
            found.append((node.module.split(".", 1)[1] if "." in node.module else "",
                          [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".", 1)[1], []) for a in node.names if a.name.startswith("pages.")]
    return found


def top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_shared_helpers_are_small_modules_that_say_what_they_hold():
    assert {p.stem for p in helper_modules()} >= set(SHARED)
    for path in helper_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{path.name} needs a docstring saying what it holds"
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= MAX_LINES, f"{path.name} has {lines} lines: split it by concern (issue 17)"


def test_every_page_module_draws_with_streamlit():
    """A module in pages/ that never touches Streamlit is logic, and logic belongs in core/."""
    for path in sorted(PAGES.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        roots = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        roots |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        assert "streamlit" in roots, f"{path.name} does not use Streamlit: move its logic into core/"


def test_shared_helpers_import_only_those_below_them():
    for rank, name in enumerate(SHARED):
        for module, _ in pages_imports(PAGES / f"{name}.py"):
            assert module in SHARED[:rank], f"pages/{name}.py imports pages.{module}: only {SHARED[:rank]} may be"


def test_pages_import_helpers_never_page_scripts_and_only_names_that_exist():
    """Importing a page script would run it; a misplaced helper name would only fail when its page is opened."""
    scripts = sorted(PAGES.glob("*.py")) + [REPO / "streamlit_app.py"]
    for path in scripts:
        for module, names in pages_imports(path):
            target = PAGES / f"{module}.py"
            assert module.startswith("_") and target.is_file(), f"{path.name} imports pages.{module}"
            missing = set(names) - top_level_names(target)
            assert not missing, f"{path.name} imports {sorted(missing)} from pages.{module}, which does not define them"


def test_the_import_reader_sees_function_level_imports(tmp_path):
    """The reader the checks rely on: an import inside a function counts, and a name is found where it is defined."""
    fake = tmp_path / "_session.py"
    fake.write_text("import streamlit as st\n\n\ndef f():\n    from pages._sidebar import sidebar\n")
    assert pages_imports(fake) == [("_sidebar", ["sidebar"])]
    assert "_sidebar" not in SHARED[:SHARED.index("_session")]  # so the layering test would fail on it
    assert {"st", "f"} <= top_level_names(fake) and "sidebar" not in top_level_names(fake)
