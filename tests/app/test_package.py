"""A real package (issue 18): pyproject.toml's pins agree with requirements*.txt, and an installed copy's
`effnet-studio` command works from any folder and finds the app's files (streamlit_app.py, pages/, its settings).

The install test builds the project into a fresh virtualenv without downloading anything: `pip install --no-deps
--no-build-isolation`, the dependencies read from this environment through a .pth file (a virtualenv's
--system-site-packages would reach the base Python's, not this one's). A full `pip install '.[train]'` from PyPI is
checked by hand (README, "Install as a package").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO

PROFILE_FILES = {  # pyproject's list -> the requirements file make, Heroku and Community Cloud install
    "dependencies": "requirements.txt", "train": "requirements-train.txt", "gpu": "requirements-gpu.txt",
    "dev": "requirements-dev.txt"}
SOURCES = ["core", "pages", "streamlit_app.py", ".streamlit", "pyproject.toml", "README.md"]


def normalised(requirement: str) -> str:
    name, _, rest = requirement.replace(" ", "").partition("==")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={rest}"


def pins(path: Path) -> set[str]:
    """The file's own requirement lines (`-r` includes and comments left out)."""
    lines = (line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return {normalised(line) for line in lines if line and not line.startswith("-")}


def test_pyproject_pins_agree_with_the_requirements_files() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lists = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    for key, filename in PROFILE_FILES.items():
        own = {normalised(r) for r in lists[key] if not r.startswith(project["name"] + "[")}
        assert own == pins(REPO / filename), f"pyproject's {key} and {filename} disagree"
    assert lists["serve"] == []  # the base install is the serve profile
    every = [normalised(r) for key in PROFILE_FILES for r in lists[key] if not r.startswith(project["name"])]
    assert all(re.fullmatch(r"[a-z0-9-]+(\[[a-z-]+\])?==[\w.]+", r) for r in every), every  # exact pins only
    assert project["scripts"] == {"effnet-studio": "core.cli:console"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with this project installed from a copy of its sources; returns its bin/ folder."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                          if (REPO / name).is_dir() else {}))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_studio_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                           "--no-build-isolation", str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin"


def run_installed(bin_dir: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The console command from a folder outside the checkout, with nothing pointing Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STUDIO_MODELS_DIR", "STUDIO_WORKSPACE",
                                                          "STUDIO_DEMO_DIR")}
    return subprocess.run([str(bin_dir / "effnet-studio"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_console_command_works_from_any_folder(installed: Path, tmp_path: Path, flowers_dir: Path) -> None:
    manual = run_installed(installed, tmp_path, "--help")
    assert manual.returncode == 0 and manual.stdout.startswith("usage: effnet-studio "), manual.stderr
    assert "effnet-studio train --data" in manual.stdout and "exit codes" in manual.stdout
    inspected = run_installed(installed, tmp_path, "inspect", str(flowers_dir))
    assert inspected.returncode == 0 and json.loads(inspected.stdout)["trainable"] is True, inspected.stderr
    where = run_installed(installed, tmp_path, "-q", "status", "no-such-run")
    assert where.returncode == 2 and where.stderr.startswith("error: No run found at no-such-run"), where.stderr


def test_app_finds_its_installed_files_and_serves_them(installed: Path, tmp_path: Path) -> None:
    plan = run_installed(installed, tmp_path, "app", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    facts = json.loads(plan.stdout)
    site = Path(facts["app"]).parent
    assert site.is_relative_to(installed.parent) and not site.is_relative_to(REPO)
    assert (site / "pages" / "train.py").is_file() and (site / "pages" / "_folder_upload" / "index.html").is_file()
    assert Path(facts["config"]).is_file() and Path(facts["config"]).is_relative_to(installed.parent)
    assert "--server.maxUploadSize=1024" in facts["command"] and facts["models_dir"] == str(tmp_path / "models")
    # Streamlit's navigation over pages/ from site-packages: each page runs from the installed copy.
    script = (f"from streamlit.testing.v1 import AppTest\n"
              f"at = AppTest.from_file({facts['app']!r}, default_timeout=60).run()\n"
              "assert not at.exception, at.exception\n"
              "titles = [at.title[0].value]\n"
              "at.switch_page('pages/workspace.py').run()\n"
              "assert not at.exception, at.exception\n"
              "print(titles + [at.title[0].value])\n")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "STUDIO_WORKSPACE": str(tmp_path / "ws")}
    pages = subprocess.run([str(installed / "python"), "-c", script], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=180)
    assert pages.returncode == 0 and pages.stdout.strip() == "['Data', 'Workspace']", pages.stderr[-3000:]
    # And the real server, started by the command, answers.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = subprocess.Popen([str(installed / "effnet-studio"), "app", "--headless", "--port", str(port),
                               "--address", "127.0.0.1"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline, answer = time.monotonic() + 60, ""
        while time.monotonic() < deadline and server.poll() is None and answer != "ok":
            try:
                answer = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read().decode()
            except OSError:
                time.sleep(0.3)
        assert answer == "ok", f"the server did not answer (exit code {server.poll()})"
    finally:
        server.terminate()
        server.wait(timeout=30)
