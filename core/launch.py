"""`effnet-studio app`: where the app's files are, in a checkout or an installed copy, and the line that starts it.

An installed copy (pip install '.[train]') puts streamlit_app.py and pages/ beside core/ in site-packages, and
.streamlit/config.toml under <prefix>/share/effnet-studio/ (pyproject.toml's data-files: it is no package). Streamlit
reads a config.toml only from the current folder or ~/.streamlit, so `app` passes the app's own settings as
`--section.option` flags instead, which also works from any folder of a checkout.
"""

from __future__ import annotations

import importlib.metadata
import os
import runpy
import sys
import tomllib
from pathlib import Path
from typing import Any

from core import StudioError

DISTRIBUTION = "effnet-studio"
APP_SCRIPT = "streamlit_app.py"
CONFIG = Path(".streamlit") / "config.toml"
INSTALLED_CONFIG = "share/effnet-studio/streamlit/config.toml"  # pyproject.toml's data-files, under the prefix
SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the checkout, or site-packages when installed


def is_checkout(root: Path = SOURCE_ROOT) -> bool:
    """A source checkout (or an editable install of one) has its pyproject.toml beside core/."""
    return (root / "pyproject.toml").is_file()


def app_script(root: Path = SOURCE_ROOT) -> Path:
    """streamlit_app.py, with the pages/ folder its navigation names next to it."""
    script = root / APP_SCRIPT
    if not script.is_file() or not (root / "pages" / "data.py").is_file():
        raise StudioError(f"The app's files are not beside {root / 'core'}: expected {script} and {root / 'pages'}/. "
                          f"Reinstall with `pip install '{DISTRIBUTION}[train]'` (or run from a checkout).")
    return script


def config_file(root: Path = SOURCE_ROOT) -> Path | None:
    """The app's Streamlit settings: the checkout's .streamlit/config.toml, or the installed copy of it."""
    if (root / CONFIG).is_file():
        return root / CONFIG
    try:
        files = importlib.metadata.distribution(DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if str(entry).replace("\\", "/").endswith(INSTALLED_CONFIG):
            located = Path(entry.locate()).resolve()
            return located if located.is_file() else None
    return None


def _flag_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def config_flags(path: Path | None) -> list[str]:
    """config.toml as `streamlit run` flags: `--server.maxUploadSize=1024`, a list as one flag per item."""
    if path is None:
        return []
    flags = []
    for section, options in tomllib.loads(path.read_text(encoding="utf-8")).items():
        for key, value in options.items():
            for item in value if isinstance(value, list) else [value]:
                flags.append(f"--{section}.{key}={_flag_value(item)}")
    return flags


def installed_defaults(cwd: Path) -> dict[str, str]:
    """Where an installed copy keeps runs, the app's workspace and demo bundles: the current folder (as
    `--models-dir`'s help says), never site-packages. A checkout keeps its own defaults (beside the code)."""
    if is_checkout():
        return {}
    return {"STUDIO_MODELS_DIR": str(cwd / "models"), "STUDIO_WORKSPACE": str(cwd / "workspace"),
            "STUDIO_DEMO_DIR": str(cwd / "demo")}


def streamlit_command(port: int, address: str | None, headless: bool, extra: list[str],
                      quiet: bool = True) -> list[str]:
    """The full `streamlit run` line: the app's settings, then these options, then the user's own. `quiet` runs
    it through this module, which hides TensorFlow's import-time C++ lines in the server (the pages import it)."""
    runner = ["-m", "core.launch"] if quiet else ["-m", "streamlit"]
    command = [sys.executable, *runner, "run", str(app_script()), *config_flags(config_file())]
    if not is_checkout():
        # Streamlit watches the script's folder for edits: installed, that is all of site-packages (inotify runs out
        # of watches), and an installed app is not edited.
        command.append("--server.fileWatcherType=none")
    command.append(f"--server.port={port}")
    if address:
        command.append(f"--server.address={address}")
    if headless:
        command.append("--server.headless=true")
    return command + [item for item in extra if item != "--"]


def start(command: list[str]) -> int:
    """Become the Streamlit server (signals and the exit code are then its own); where exec is not offered, wait."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execv(command[0], command)
    import subprocess

    return subprocess.call(command)


def run_streamlit_quietly(argv: list[str]) -> None:
    """`python -m core.launch run ...` = `python -m streamlit run ...` with core.terminal.QuietImports in place:
    Streamlit's own command line, run as the program (by name, as `-m streamlit` would: core uses none of it)."""
    from core.terminal import QuietImports

    sys.meta_path.insert(0, QuietImports())
    sys.argv = ["streamlit", *argv]
    runpy.run_module("streamlit", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    run_streamlit_quietly(sys.argv[1:])
