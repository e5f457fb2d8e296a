"""The serve profile end to end (issue 6, "Done when"): a fresh virtual environment built from requirements.txt
alone starts the app on $PORT, loads a demo bundle that the train profile produced, and classifies photos in a
real browser with the same top-1 as the train profile's `python -m core predict`; the training pages say they
need the train profile. It also records the time from process start to a listening port and the server's peak
memory (docs/deploy.md).

Run as a script to measure a bundle of your own (e.g. a B0 one) with N photos, as docs/deploy.md does:
`.venv/bin/python -m tests.test_serve measure --venv /tmp/serve/.venv --demo /tmp/demo --photos 10`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers_ui import (ARTIFACTS, CHROMIUM, REPO_ROOT, flowers_mini, free_port, go_to, in_ci, launch_chromium,
                              require, stop_server, wait_for_health, wait_idle)

# Head only, one epoch, 96 px: the bundle only has to exist and agree with Keras, not be good.
TINY_TRAIN = ["--image-size", "96", "--head-epochs", "1", "--finetune-epochs", "0"]
CANDIDATES = 2  # val photos per class given to `python -m core predict`; the browser gets 3 of them
SHOWN = 3
TRAIN_PACKAGES = ("tensorflow", "keras", "albumentations")
SERVE_VENV_ENV = "STUDIO_SERVE_VENV"  # reuse an existing serve venv (local iteration only; CI builds a fresh one)
PORT_LIMIT_S = 20.0  # the bound for this machine (Heroku kills a web process after 60 s)
MEMORY_LIMIT_MIB = 450.0  # the bound for a B0 bundle; a 96 px Lite0 bundle stays far below it


# ----------------------------------------------------------------------------------------- helpers
def build_serve_venv(folder: Path) -> Path:
    """python -m venv + pip install -r requirements.txt (and nothing else); returns the venv's python."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True, timeout=120)
    python = folder / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                             "-r", str(REPO_ROOT / "requirements.txt")],
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"pip install -r requirements.txt failed:\n{result.stderr[-3000:]}")
    return python


def train_cli(*args: str, timeout: float = 900) -> str:
    """`python -m core ...` in the train profile (this interpreter); returns stdout, fails with stderr's tail."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"python -m core {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result.stdout


def serve_env(demo_dir: Path, workspace: Path, port: int) -> dict[str, str]:
    """The environment a Heroku dyno gives the app: PORT, the bundle folder; nothing of the train venv leaks in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PORT": str(port), "STUDIO_DEMO_DIR": str(demo_dir), "STUDIO_WORKSPACE": str(workspace),
            "PYTHONUNBUFFERED": "1"}


@dataclass
class ServedApp:
    url: str
    process: subprocess.Popen
    started: float  # time.perf_counter() just before the process was started
    seconds_to_port: float


def seconds_until_listening(port: int, process: subprocess.Popen, started: float, timeout: float = 60.0) -> float:
    """Seconds from `started` (process start) until a TCP connect to `port` succeeds."""
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return time.perf_counter() - started
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout:.0f} s")


@contextlib.contextmanager
def serve_app(python: Path, demo_dir: Path, workspace: Path, log: Path) -> Iterator[ServedApp]:
    """The Procfile's command with `python`: streamlit on $PORT, headless; stopped afterwards."""
    port = free_port()
    command = [str(python), "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
               "--server.headless", "true"]
    with open(log, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=serve_env(demo_dir, workspace, port), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        seconds = seconds_until_listening(port, process, started)
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, process, log)
        yield ServedApp(url, process, started, seconds)
    finally:
        stop_server(process)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM in /proc/<pid>/status), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def val_photos(flowers: Path, picks: list[tuple[str, int]]) -> list[Path]:
    """Chosen validation photos of flowers-mini (names are unique across classes)."""
    return [sorted((flowers / "val" / cls).glob("*.jpg"))[index] for cls, index in picks]


def classify_in_browser(page, photos: list[Path]) -> dict[str, tuple[str, float]]:
    """Upload the photos on Classify and read the top-1 and its percentage the page shows ('name: class (p%)')."""
    go_to(page, "Classify")
    page.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files([str(p) for p in photos])
    page.get_by_text(f"Classified {len(photos)} photo(s)").wait_for(timeout=120_000)
    wait_idle(page)
    # The caption comes first and each photo's line follows as the script goes on: poll until all are drawn.
    deadline = time.monotonic() + 60
    while True:
        shown: dict[str, tuple[str, float]] = {}
        for text in page.locator('[data-testid="stMarkdownContainer"]').all_inner_texts():
            match = re.fullmatch(r"\s*(\S+): (\S+) \(([\d.]+)%\)\s*", text)
            if match:
                shown[match.group(1)] = (match.group(2), float(match.group(3)))
        if len(shown) >= len(photos) or time.monotonic() > deadline:
            return shown
        page.wait_for_timeout(500)


def distinct_predictions(predicted: list[dict], count: int) -> list[dict]:
    """`count` predictions, as many different top-1 classes first as there are: a model that says one class for
    everything would otherwise let a browser that shows a constant pass."""
    chosen: list[dict] = []
    for result in predicted:
        if result["predicted"] not in {c["predicted"] for c in chosen}:
            chosen.append(result)
    return (chosen + [r for r in predicted if r not in chosen])[:count]


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def serve_python(tmp_path_factory) -> Path:
    """A fresh venv from requirements.txt alone, built once per test session (needs PyPI; CI has it)."""
    reuse = os.environ.get(SERVE_VENV_ENV)
    if reuse:
        return Path(reuse) / "bin" / "python"
    try:
        return build_serve_venv(tmp_path_factory.mktemp("serve-venv") / ".venv")
    except (RuntimeError, subprocess.SubprocessError, OSError) as err:
        require(False, f"could not build the serve venv from requirements.txt ({str(err)[-500:]})")
        raise


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """A tiny Lite0 run trained and bundled by the train profile's CLI, and its `predict` top-1 for SHOWN photos."""
    flowers = flowers_mini()
    require(flowers is not None, "flowers-mini is missing (see core.data.samples.flowers_mini_missing_message)")
    require(all(importlib.util.find_spec(m) for m in ("tensorflow", "ai_edge_litert")),
            "the train profile (requirements-train.txt) in this interpreter")
    root = tmp_path_factory.mktemp("serve-demo")
    run = train_cli("--models-dir", str(root / "models"), "train", "--data", str(flowers),
                    *TINY_TRAIN).strip().splitlines()[-1]
    exported = json.loads(train_cli("--models-dir", str(root / "models"), "export", run, "--format", "tflite",
                                    "--bundle"))
    demo_dir = root / "demo"
    demo_dir.mkdir()
    shutil.copy(exported["bundle"]["zip"], demo_dir)  # ship the .zip, as a deployment would commit it
    classes = sorted(p.name for p in (flowers / "val").iterdir())
    candidates = val_photos(flowers, [(c, i) for c in classes for i in range(CANDIDATES)])
    predicted = json.loads(train_cli("--models-dir", str(root / "models"), "predict", run, *map(str, candidates)))
    chosen = distinct_predictions(predicted, SHOWN)
    return {"dir": demo_dir, "photos": [Path(p["path"]) for p in chosen], "run": run,
            "top1": {Path(p["path"]).name: (p["predicted"], 100 * p["confidence"]) for p in chosen}}


# ----------------------------------------------------------------------------------------- the test
def test_fresh_serve_venv_classifies_a_bundle_like_the_train_profile(serve_python: Path, demo: dict,
                                                                      tmp_path: Path) -> None:
    require(Path(CHROMIUM).is_file(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    probe = ("import importlib.util, json; "
             f"print(json.dumps([m for m in {TRAIN_PACKAGES!r} if importlib.util.find_spec(m)]))")
    leaked = json.loads(subprocess.run([str(serve_python), "-c", probe], capture_output=True, text=True,
                                       check=True).stdout)
    assert leaked == [], f"the serve venv has train-profile packages: {leaked}"
    expect.set_options(timeout=60_000)
    log = tmp_path / "server.log"
    with serve_app(serve_python, demo["dir"], tmp_path / "workspace", log) as served, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(served.url)
            sidebar = page.locator('[data-testid="stSidebar"]')
            expect(sidebar.get_by_text("serve profile")).to_be_visible()
            expect(page.get_by_text("Demo bundle of run")).to_be_visible()  # Evaluate opens on the bundle
            shown = classify_in_browser(page, demo["photos"])
            assert {n: c for n, (c, _) in shown.items()} == {n: c for n, (c, _) in demo["top1"].items()}, \
                f"browser (serve venv) {shown} != train profile {demo['top1']}"
            # Probabilities are not compared: `predict` reads a JPEG file with DCT downscaling (load_for_model), the
            # page decodes the uploaded bytes at full size before resizing, which moves them by ~0.3 points.
            expect(page.get_by_text("Heatmaps need")).to_be_visible()
            main = page.locator('[data-testid="stMain"]')
            for title in ("Data", "Train"):
                go_to(page, title)
                expect(main.get_by_text("needs the train profile")).to_be_visible()
                expect(main.get_by_text("requirements-train.txt")).to_be_visible()
            peak = peak_rss_mib(served.process.pid)
        except Exception:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-failure.png"))
            shutil.copy(log, ARTIFACTS / "serve-server.log")
            raise
        finally:
            browser.close()
    print(f"serve profile: port open {served.seconds_to_port:.1f} s after start; server peak RSS {peak:.0f} MiB "
          f"(Lite0 96 px bundle, {len(demo['photos'])} photos); top-1 {shown}")
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]
    assert served.seconds_to_port < PORT_LIMIT_S * (3 if in_ci() else 1)  # shared CI runners are slower
    assert peak < MEMORY_LIMIT_MIB


# ----------------------------------------------------------------------------------------- measuring
def measure(venv: Path, demo_dir: Path, photos: int) -> dict:
    """Start the app from `venv` on the bundle(s) in `demo_dir`, classify `photos` flowers-mini val photos in the
    browser (one upload), and report the time to a listening port and the server's peak RSS."""
    from playwright.sync_api import sync_playwright

    flowers = flowers_mini()
    classes = sorted(p.name for p in (flowers / "val").iterdir())
    picks = [(classes[i % len(classes)], i // len(classes)) for i in range(photos)]  # round-robin over classes
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"studio-measure-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    with serve_app(venv / "bin" / "python", demo_dir, scratch / "workspace", scratch / "server.log") as served, \
            sync_playwright() as p:
        after_start = peak_rss_mib(served.process.pid)
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(served.url)
        page.get_by_text("Demo bundle of run").wait_for()
        first_page = time.perf_counter() - served.started
        after_bundle = peak_rss_mib(served.process.pid)
        shown = classify_in_browser(page, val_photos(flowers, picks))
        browser.close()
        result = {"seconds_to_port": round(served.seconds_to_port, 2),
                  "seconds_to_first_page_with_bundle": round(first_page, 2),
                  "peak_rss_mib_after_start": round(after_start),
                  "peak_rss_mib_after_bundle": round(after_bundle),
                  "peak_rss_mib_after_classify": round(peak_rss_mib(served.process.pid)),
                  "photos_classified": len(shown)}
    shutil.rmtree(scratch, ignore_errors=True)
    return result


if __name__ == "__main__" and sys.argv[1:2] == ["measure"]:
    parser = argparse.ArgumentParser(prog="python -m tests.test_serve measure")
    parser.add_argument("--venv", type=Path, required=True,
                        help="a serve-profile venv (pip install -r requirements.txt)")
    parser.add_argument("--demo", dest="demo_dir", type=Path, required=True, help="folder holding the demo bundle(s)")
    parser.add_argument("--photos", type=int, default=10)
    print(json.dumps(measure(**vars(parser.parse_args(sys.argv[2:]))), indent=1))
