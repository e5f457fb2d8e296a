"""Helpers for the UI tests: the sample data, a Streamlit server on a free port, Chromium, full-page screenshots.

Run as a script to time the newcomer path (open the app -> sample -> Train -> Start -> trained model) in a real
browser and to refresh docs/screenshots/: `.venv/bin/python -m tests.helpers_ui newcomer`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def in_ci() -> bool:
    """CI sets CI=true; there a missing prerequisite is a failure, not a skip."""
    from conftest import IN_CI

    return IN_CI


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a prerequisite is missing."""
    if not condition:
        if in_ci():
            pytest.fail(f"{reason} (CI=true, so this is a failure, not a skip)")
        pytest.skip(reason)


def flowers_mini() -> Path | None:
    """The offline sample, where the app itself looks for it."""
    from core.data.samples import flowers_mini_dir

    return flowers_mini_dir()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(workspace: Path, log: Path, env: dict[str, str] | None = None, script: str = "streamlit_app.py",
                     cwd: Path | None = None) -> Iterator[str]:
    """`streamlit run SCRIPT` (from the repository's root, or `cwd`) on a free port with its own workspace (and `env`
    on top of ours); yields the base URL."""
    port = free_port()
    # STUDIO_OFFLINE: the served pages never probe an outside host (core.data.samples.is_online)
    env = {**os.environ, "STUDIO_WORKSPACE": str(workspace), "PYTHONUNBUFFERED": "1", "STUDIO_OFFLINE": "1",
           **(env or {})}
    command = [sys.executable, "-m", "streamlit", "run", script, "--server.port", str(port),
               "--server.headless", "true", "--server.fileWatcherType", "none",
               "--browser.gatherUsageStats", "false"]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=cwd or REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
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


def launch_chromium(playwright, extra_args: list[str] | None = None):
    """Debian's Chromium, headless, with nothing reaching out to the network (`extra_args` on top, e.g. a fake
    camera)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + list(extra_args or []))


def wait_idle(page, timeout: float = 60_000) -> None:
    """Wait until Streamlit has finished the current script run (its status widget says 'Running' meanwhile)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=timeout)


THROTTLE_ENV = "STUDIO_TRAIN_THROTTLE"  # core.base.progress: seconds each phase waits at its start
HOLD_THROTTLE_SECONDS = "0.5"  # that wait, long enough for trainer_held to catch even a phase with no work


@dataclass
class HeldTrainer:
    """A trainer frozen by trainer_held: its run folder, process id and the phase it was caught in."""

    run: Path
    pid: int
    phase: str

    def stop_requested(self) -> bool:
        """True once the app has asked this run to stop (core.base.runs' STOP file)."""
        from core.base.runs import RunDir

        return RunDir(self.run).stop_requested()


def running_trainer(runs_dir: Path) -> tuple[Path, dict] | None:
    """The run under `runs_dir` whose trainer is running now, with its status.json (None when there is none)."""
    for status_file in runs_dir.glob("*/status.json"):
        try:
            status = json.loads(status_file.read_text(encoding="utf-8"))
        except (ValueError, OSError):  # replaced while read: read again on the next poll
            continue
        if isinstance(status, dict) and status.get("state") == "running" and status.get("pid"):
            return status_file.parent, status
    return None


@contextlib.contextmanager
def trainer_held(runs_dir: Path, phases: Sequence[str], timeout: float = 300.0) -> Iterator[HeldTrainer]:
    """Freeze the trainer running under `runs_dir` (SIGSTOP) as soon as its status says it is in one of `phases`,
    and let it go on (SIGCONT) when the block ends: the page can then be looked at, and Stop pressed, in that phase
    however fast or slow this machine trains. The server must run with THROTTLE_ENV (e.g. HOLD_THROTTLE_SECONDS):
    each phase then waits that long at its start, so a phase is caught before it has done any work, and a stop
    asked for meanwhile is honoured in it."""
    from core.base.progress import LABELS

    order = list(LABELS)  # the phases in the order a run goes through them
    last_wanted = max(order.index(phase) for phase in phases)
    deadline = time.monotonic() + timeout
    seen = "no running trainer"
    while time.monotonic() < deadline:
        found = running_trainer(runs_dir)
        if found is not None:
            run, status = found
            seen = f"{run.name} in phase {status.get('phase')!r}"
            if status.get("phase") in phases:
                break
            if status.get("phase") in order and order.index(status["phase"]) > last_wanted:
                raise AssertionError(f"{seen}: it passed {list(phases)} before it was caught; give it a longer "
                                     f"{THROTTLE_ENV}")
        time.sleep(0.01)
    else:
        raise AssertionError(f"no trainer under {runs_dir} reached {list(phases)} within {timeout:.0f} s ({seen})")
    pid = int(status["pid"])
    os.kill(pid, signal.SIGSTOP)
    try:
        caught = json.loads((run / "status.json").read_text(encoding="utf-8"))  # it cannot change while frozen
        assert caught.get("phase") == status["phase"] and caught.get("state") == "running", \
            f"the trainer left phase {status['phase']!r} before it was held (now {caught.get('phase')!r}, " \
            f"{caught.get('state')!r}); give it a longer {THROTTLE_ENV}"
        yield HeldTrainer(run, pid, status["phase"])
    finally:
        os.kill(pid, signal.SIGCONT)


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    """Poll `condition()` every 0.1 s until it holds (or fail naming `what`)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


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


# ------------------------------------------------------------------------------------------------ folder uploads
PHOTO_CLASSES = ("apple", "banana", "cherry", "date", "elder", "fig")


def make_photo_folder(root: Path, photos: int = 2010, garbage: int = 6, notes: int = 3,
                      size: int = 64) -> dict[str, int]:
    """A picked-folder-to-be: `photos` small JPEGs in 6 class folders, `garbage` damaged .jpg files, `notes`
    text files and one .DS_Store. Returns what the Data page should count: picked, received, skipped,
    unreadable, missing. Random pixels, so no two photos are byte-identical (no duplicates to drop)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(12)
    for name in PHOTO_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(photos):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        (root / PHOTO_CLASSES[i % 6] / f"photo-{i:05d}.jpg").write_bytes(cv2.imencode(".jpg", pixels)[1].tobytes())
    for i in range(garbage):
        (root / PHOTO_CLASSES[i % 6] / f"damaged-{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a photo " * (i + 1))
    for i in range(notes):
        (root / PHOTO_CLASSES[i % 6] / f"notes-{i}.txt").write_text("taken with the old camera\n")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return {"picked": photos + garbage + notes + 1, "received": photos, "skipped": notes + 1,
            "unreadable": garbage, "missing": 0}


def folder_picker_input(page, timeout: float = 60_000):
    """The Data page folder picker's <input webkitdirectory> (inside the component's frame), once it listens.

    Streamlit shows a component's frame only after its script has said it is ready; files set on the input
    before that would change it before anything listens, and the pick would be lost.
    """
    page.locator('iframe[title*="folder_picker"]').wait_for(state="visible", timeout=timeout)
    return page.frame_locator('iframe[title*="folder_picker"]').locator("input[webkitdirectory]")


def server_pid(url: str) -> int:
    """The process id of the `streamlit run` serving `url` (found by its --server.port argument)."""
    port = url.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"streamlit" in b" ".join(args) and b"--server.port" in args \
                and args[args.index(b"--server.port") + 1] == port.encode():
            return int(proc.name)
    raise RuntimeError(f"no streamlit process serves {url}")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory in MB: now (VmRSS), or its high-water mark so far (field="VmHWM")."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def keep_failure(pages: dict, logs: dict | None = None) -> None:
    """After a failed browser test: a screenshot of each page and a copy of each log in tests/artifacts/
    ({file name: page}, {file name: log path})."""
    import shutil

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, page in pages.items():
        page.screenshot(path=str(ARTIFACTS / name))
    for name, log in (logs or {}).items():
        if Path(log).is_file():
            shutil.copy(log, ARTIFACTS / name)


def record_uploads(page) -> list[str]:
    """The URLs of file uploads the page sends (Streamlit's PUT to /_stcore/upload_file), as they happen."""
    uploads: list[str] = []
    page.on("request", lambda r: uploads.append(r.url) if "/_stcore/upload_file" in r.url and r.method == "PUT"
            else None)
    return uploads


def warm_up_with_a_small_folder(page, url: str, warm_up: Path, settle_seconds: float = 1.0) -> tuple[int, float]:
    """Open the app and upload a small folder first, so the server has drawn a report once (charts, tables, image
    decoding loaded): memory measured afterwards is what a big upload leaves behind. Returns (server pid, RSS MB)."""
    from playwright.sync_api import expect

    page.goto(url)
    wait_idle(page, timeout=120_000)
    page.get_by_role("tab", name="Upload a folder").click()
    folder_picker_input(page).set_input_files(str(warm_up))
    expect(page.get_by_text("All 25 picked files arrived")).to_be_visible(timeout=120_000)
    wait_idle(page)
    pid = server_pid(url)
    time.sleep(settle_seconds)
    return pid, rss_mb(pid)


def upload_bench(photos: int = 2010, size: int = 112, zip_first: bool = False) -> dict[str, float]:
    """The same generated folder (2,020 files, ~30 MB) through the folder picker and as a .zip, in one run, with
    the server's RSS before and after each upload: `.venv/bin/python -m tests.helpers_ui upload-bench [zip-first]`.

    Each time runs from handing the browser the folder (or the .zip) until the Data page shows the result (the
    accounting of every picked file, or the dataset report), so it includes packing, sending, unpacking and
    checking every image. The second upload of a run finds the server warmed up; `zip_first` swaps the order.
    Before each upload the disk is synced and left to settle: the freshly generated 60 MB would otherwise still
    be written back while the first upload writes its 2,020 files, which slows whichever goes first by ~1.5 s.
    """
    import tempfile
    import zipfile

    from playwright.sync_api import expect, sync_playwright

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="upload-bench-") as scratch:
        scratch_dir = Path(scratch)
        folder = scratch_dir / "photos-2020"
        expected = make_photo_folder(folder, photos=photos, size=size)
        warm_up = scratch_dir / "warm-up"
        make_photo_folder(warm_up, photos=24, garbage=0, notes=0)
        archive = scratch_dir / "photos-2020-zipped.zip"  # its own dataset name, so its report is told apart
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:  # as "Compress folder" makes it
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    out.write(path, path.relative_to(scratch_dir).as_posix())
        results["files"] = expected["picked"]
        results["folder_mb"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1024**2
        workspace = scratch_dir / "workspace"
        workspace.mkdir()
        with streamlit_server(workspace, scratch_dir / "server.log") as url, sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            uploads = record_uploads(page)
            pid, results["rss_before_mb"] = warm_up_with_a_small_folder(page, url, warm_up, settle_seconds=2)

            def settle() -> None:
                os.sync()
                time.sleep(2)

            def through_folder() -> None:
                settle()
                page.get_by_role("tab", name="Upload a folder").click()
                uploads.clear()
                started = time.perf_counter()
                folder_picker_input(page).set_input_files(str(folder))
                counts = (f"{expected['received']:,} received, {expected['skipped']:,} skipped, "
                          f"{expected['unreadable']:,} unreadable, 0 missing")
                expect(page.get_by_text(counts)).to_be_visible(timeout=300_000)
                results["folder_s"] = time.perf_counter() - started
                results["folder_requests"] = len(uploads)
                wait_idle(page)
                time.sleep(2)
                results["rss_after_folder_mb"] = rss_mb(pid)

            def through_zip() -> None:
                settle()
                page.get_by_role("tab", name="Upload a .zip").click()
                started = time.perf_counter()
                page.locator('.st-key-zip_upload input[type="file"]').set_input_files(str(archive))
                expect(page.get_by_role("heading", name=f"Dataset: {archive.stem}-")).to_be_visible(timeout=300_000)
                expect(page.get_by_text("Ready to train")).to_be_visible()
                results["zip_s"] = time.perf_counter() - started
                wait_idle(page)
                time.sleep(2)
                results["rss_after_zip_mb"] = rss_mb(pid)

            for step in ((through_zip, through_folder) if zip_first else (through_folder, through_zip)):
                step()
            browser.close()
    results["ratio"] = results["folder_s"] / results["zip_s"]
    print(f"upload-bench: {results['files']:,} files, {results['folder_mb']:.0f} MB in 6 class folders"
          f"{' (the .zip first)' if zip_first else ''}")
    print(f"  folder picker: {results['folder_s']:.1f} s in {results['folder_requests']:.0f} upload request(s)")
    print(f"  .zip:          {results['zip_s']:.1f} s   (folder / zip = {results['ratio']:.2f})")
    print(f"  server RSS:    {results['rss_before_mb']:.0f} MB before, {results['rss_after_folder_mb']:.0f} MB after "
          f"the folder, {results['rss_after_zip_mb']:.0f} MB after the .zip")
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))  # run as a script (`python tests/helpers_ui.py newcomer`): import core
if __name__ == "__main__" and sys.argv[1:] == ["newcomer"]:
    newcomer()
if __name__ == "__main__" and sys.argv[1:2] == ["upload-bench"]:
    upload_bench(zip_first="zip-first" in sys.argv[2:])
