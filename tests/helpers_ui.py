"""Helpers for the UI tests: the sample data, a Streamlit server on a free port, Chromium, full-page screenshots.

Run as a script to time the newcomer path (open the app -> sample -> Train -> Start -> trained model) in a real
browser and to refresh docs/screenshots/: `.venv/bin/python -m tests.helpers_ui newcomer`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def in_ci() -> bool:
    """CI sets CI=true; there a missing prerequisite is a failure, not a skip."""
    return os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a prerequisite is missing."""
    if not condition:
        if in_ci():
            pytest.fail(f"{reason} (CI=true, so this is a failure, not a skip)")
        pytest.skip(reason)


def flowers_mini() -> Path | None:
    """The offline sample, where the app itself looks for it."""
    from core.samples import flowers_mini_dir

    return flowers_mini_dir()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(workspace: Path, log: Path) -> Iterator[str]:
    """`streamlit run streamlit_app.py` on a free port with its own workspace; yields the base URL."""
    port = free_port()
    env = {**os.environ, "STUDIO_WORKSPACE": str(workspace), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
               "--server.headless", "true", "--server.fileWatcherType", "none",
               "--browser.gatherUsageStats", "false"]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, server, log)
        yield url
    finally:
        stop_server(server)


def stop_server(server: subprocess.Popen) -> None:
    """Terminate a server politely, then for good if it does not exit within 15 s."""
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def wait_for_health(url: str, server: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Block until Streamlit answers its health check (or fail with the server's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"streamlit did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def launch_chromium(playwright):
    """Debian's Chromium, headless, with nothing reaching out to the network."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def wait_idle(page, timeout: float = 60_000) -> None:
    """Wait until Streamlit has finished the current script run (its status widget says 'Running' meanwhile)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=timeout)


def snapshot(page, name: str, folder: Path = ARTIFACTS) -> Path:
    """A screenshot of the whole page: Streamlit scrolls inside its main pane, so grow the window to fit it."""
    folder.mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"]
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=15_000)
    height = page.evaluate("""() => {
        const main = document.querySelector('[data-testid="stMain"]');
        return main ? main.scrollHeight : window.innerHeight;
    }""")
    original = page.viewport_size
    page.set_viewport_size({"width": width, "height": min(max(int(height) + 40, original["height"]), 6000)})
    page.wait_for_timeout(500)  # Plotly redraws at the new size
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=15_000)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size(original)
    return path


def go_to(page, title: str) -> None:
    """Open a page through the sidebar navigation, as a person would (a click during a rerun is retried)."""
    link = page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title, exact=True)
    heading = page.get_by_role("heading", name=title, exact=True, level=1)
    for _ in range(3):
        link.click()
        try:
            heading.wait_for(timeout=15_000)
            break
        except Exception:  # playwright's TimeoutError: the click landed while a script run was finishing
            continue
    wait_idle(page)


def newcomer(out: Path = REPO_ROOT / "docs" / "screenshots") -> float:
    """Time open -> 'Use flowers-mini' -> Train -> Start -> finished, with default settings; save screenshots."""
    from playwright.sync_api import sync_playwright

    workspace = Path(os.environ.get("NEWCOMER_WORKSPACE", "/tmp/studio-newcomer"))
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir(parents=True)
    with streamlit_server(workspace, workspace / "server.log") as url, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        started = time.perf_counter()
        page.goto(url)
        page.get_by_role("button", name="Use flowers-mini").click()
        page.get_by_text("Ready to train").wait_for(timeout=60_000)
        go_to(page, "Train")
        page.get_by_role("button", name="Start training").click()
        page.get_by_text("Training finished").wait_for(timeout=300_000)
        elapsed = time.perf_counter() - started
        print(f"newcomer: open -> trained model in {elapsed:.1f} s")
        page.wait_for_timeout(1500)
        snapshot(page, "train", out)
        go_to(page, "Data")
        page.get_by_text("Examples per class").wait_for()
        page.wait_for_timeout(1500)
        snapshot(page, "data", out)
        go_to(page, "Augment")
        page.get_by_text("augmented 1").first.wait_for()
        snapshot(page, "augment", out)
        go_to(page, "Evaluate")
        page.locator(".js-plotly-plot").first.wait_for()
        page.wait_for_timeout(1000)
        snapshot(page, "evaluate", out)
        go_to(page, "Classify")
        sample = next((flowers_mini() / "val" / "sunflowers").iterdir())
        page.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files(str(sample))
        page.get_by_text("Classified 1 photo").wait_for(timeout=120_000)
        page.wait_for_timeout(1500)
        snapshot(page, "classify", out)
        browser.close()
    return elapsed


if __name__ == "__main__" and sys.argv[1:] == ["newcomer"]:
    newcomer()
