"""`python -m core bench load`: many visitors at once against a real served app (issue 27, "a stakeholder demo is
the moment several people open the same link together").

The app is started as `bench serve` starts it (core.bench.serve_app: the Procfile's command), in hosted mode, with
its TMPDIR in a scratch folder; Chromium drives it. Each visitor is its own thread with its own Playwright and
browser (Playwright's sync API cannot share a browser between threads), so each is a separate Streamlit session.
Parts, each optional (--parts):

- burst: N visitors upload M photos on Classify at the same moment (a barrier), against one visitor alone;
- training: a visitor opens page after page while a default run trains, then while a second one trains and the
  burst's crowd classifies;
- sessions: K sessions opened and closed one after another, the server's RSS before and after;
- soak: mixed visits for --minutes, RSS at start and end, and what the server left in its temp folder.

Figures are measured, never asserted in tests; docs/benchmarks.md has them with their command lines.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from core import StudioError
from core.bench import (BROWSER_TIMEOUT_MS, CHROMIUM, CHROMIUM_ARGS, SHOWN_ANSWER, TRAIN_PACKAGES, ServedApp,
                        bundle_summary, open_page, packages_in, peak_rss_mib, round_robin_val_photos, serve_app,
                        wait_until_idle)

PARTS = ("burst", "training", "sessions", "soak")
DEFAULT_PARTS = {"serve": ("burst", "sessions", "soak"), "train": PARTS}  # the serve profile cannot train
DEFAULT_PHOTOS = 8  # per visitor, unless --photos is typed (bench serve's default is 10)
MAX_VISITORS = 64  # each visitor is a Chromium of its own: more would measure this machine, not the app
PAGE_TITLES = ("Evaluate", "Classify", "Data", "Train", "Augment", "Workspace")  # cycled by the page-opening visitor
SOAK_PHOTOS_PER_VISIT = 3
ALONE_ROUNDS = 3  # one visitor alone, one after another: the burst's yardstick is their median
EXCEPTION = '[data-testid="stException"]'  # where Streamlit shows a script's uncaught exception
VIEWPORT = {"width": 1400, "height": 1000}
TRAINING_DEADLINE_S = 1800.0  # a default run on flowers-mini takes 1-2 minutes here; far past that it is stuck


# ----------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class LoadInputs:
    """Everything a run needs, checked before the app starts."""

    profile: str
    python: Path
    bundle: Path
    photos: list[Path]  # the validation photos, one class after another; visitors take turns through them
    flowers: Path
    parts: tuple[str, ...]
    visitors: int
    photos_per_visitor: int
    sessions: int
    minutes: float
    settle_s: float


def parse_parts(text: str | None, profile: str) -> tuple[str, ...]:
    """`burst,sessions` -> ("burst", "sessions"); none given: every part this profile can run."""
    if not text:
        return DEFAULT_PARTS[profile]
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise StudioError(f"--parts: unknown part {unknown[0] if unknown else text!r}; choose from "
                          f"{','.join(PARTS)} (comma-separated).")
    if "training" in parts and profile != "train":
        raise StudioError("--parts training needs --profile train: the serve profile has no TensorFlow to train "
                          "with.")
    return parts


def photos_per_visitor(args: argparse.Namespace) -> int:
    """--photos as typed, else 8 (bench serve's own default is 10)."""
    photos = getattr(args, "photos", None)
    return DEFAULT_PHOTOS if photos is None else photos


def _check_range(flag: str, value: float, low: float, high: float | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"{low:g} to {high:g}" if high is not None else f"at least {low:g}"
        raise StudioError(f"{flag} takes {bound}, not {value:g}.")


def load_inputs(args: argparse.Namespace) -> LoadInputs:
    """The command line checked: a bad value raises StudioError naming its flag."""
    from core.data.samples import flowers_mini_dir, flowers_mini_missing_message
    from core.serving.bundle import find_bundles
    from core.serving.predict import MAX_PHOTOS_PER_BATCH

    profile = getattr(args, "profile", None) or "serve"
    if profile not in DEFAULT_PARTS:
        raise StudioError(f"--profile takes serve or train, not {profile!r}.")
    parts = parse_parts(getattr(args, "parts", None), profile)
    photos = photos_per_visitor(args)
    _check_range("--photos", photos, 1, MAX_PHOTOS_PER_BATCH)
    _check_range("--visitors", args.visitors, 1, MAX_VISITORS)
    _check_range("--sessions", args.sessions, 1)
    _check_range("--minutes", args.minutes, 0.1)
    _check_range("--settle", args.settle, 0)
    if profile == "serve":
        if not args.venv:
            raise StudioError("--profile serve needs --venv VENV (a serve-profile venv: pip install -r "
                              "requirements.txt).")
        python = Path(args.venv) / "bin" / "python"
        if not python.is_file():
            raise StudioError(f"--venv: {python} is no interpreter; --venv takes a virtual environment's folder.")
    else:
        if args.venv:
            raise StudioError("--venv is for --profile serve; the train profile serves from this venv.")
        python = Path(sys.executable)
    if not args.demo:
        raise StudioError("bench load needs --demo DIR (the folder holding the demo bundle Classify shows).")
    bundles = find_bundles(args.demo)
    if not bundles:
        raise StudioError(f"--demo: {args.demo} holds no demo bundle (folder or .zip); make one with `python -m "
                          "core export RUN --format tflite --bundle` and copy its .zip there.")
    flowers = flowers_mini_dir()
    if flowers is None:
        raise StudioError(flowers_mini_missing_message())
    if not Path(CHROMIUM).is_file():
        raise StudioError(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium).")
    every_photo = round_robin_val_photos(flowers, len(list((flowers / "val").glob("*/*.jpg"))))
    if photos > len(every_photo):
        raise StudioError(f"--photos: flowers-mini has {len(every_photo)} validation photos; ask for at most that "
                          "many.")
    return LoadInputs(profile, python, bundles[0], every_photo, flowers, parts, args.visitors, photos,
                      args.sessions, args.minutes, args.settle)


def photos_of(inputs: LoadInputs, visitor: int, count: int) -> list[Path]:
    """Visitor i's `count` photos: the next ones round the list after visitor i-1's, so visitors differ."""
    return [inputs.photos[(visitor * count + j) % len(inputs.photos)] for j in range(count)]


# ----------------------------------------------------------------------------------------- the served app
@dataclass(frozen=True)
class LoadTarget:
    """The app under load: its process, its workspace and temp folders, and the demo bundle's address."""

    served: ServedApp
    workspace: Path
    temp_dir: Path
    bundle_name: str

    @property
    def pid(self) -> int:
        return self.served.process.pid

    @property
    def start_url(self) -> str:
        return f"{self.served.url}/?demo={self.bundle_name}"

    @property
    def classify_url(self) -> str:
        return f"{self.served.url}/classify?demo={self.bundle_name}"


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """os.environ with these values while the block runs (what the server or a trainer inherits), then as before."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def app_environment(workspace: Path, temp_dir: Path) -> contextlib.AbstractContextManager[None]:
    """What a hosted demo runs with: hosted mode, its workspace, and a temp folder of its own to inspect after."""
    return environment(STUDIO_HOSTED="1", STUDIO_WORKSPACE=str(workspace), TMPDIR=str(temp_dir))


@contextlib.contextmanager
def served_app(inputs: LoadInputs, scratch: Path) -> Iterator[LoadTarget]:
    """The app started from the profile's python on the bundle's folder, hosted, TMPDIR in `scratch`."""
    workspace, temp_dir = scratch / "workspace", scratch / "tmp"
    temp_dir.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        with app_environment(workspace, temp_dir):  # serve_env copies os.environ when the process starts
            served = stack.enter_context(serve_app(inputs.python, inputs.bundle.parent, workspace,
                                                   scratch / "server.log"))
        yield LoadTarget(served, workspace, temp_dir, inputs.bundle.name)


# ----------------------------------------------------------------------------------------- memory and disk
def reset_peak_rss(pid: int) -> None:
    """Start VmHWM afresh from the current RSS (Linux: writing 5 to clear_refs resets the peak)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def rss_mib(pid: int) -> float:
    """The process's resident memory now (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise StudioError(f"/proc/{pid}/status has no VmRSS line (bench load needs Linux).")


def file_sizes(folder: Path) -> dict[str, int]:
    """Every regular file below `folder` (relative name -> bytes)."""
    sizes: dict[str, int] = {}
    for dirpath, _, filenames in os.walk(folder):
        for filename in filenames:
            path = Path(dirpath) / filename
            with contextlib.suppress(OSError):  # removed while walking
                sizes[str(path.relative_to(folder))] = path.lstat().st_size
    return sizes


def files_summary(sizes: dict[str, int]) -> dict[str, Any]:
    """Count, bytes and the first few names of a set of files (what was left behind)."""
    return {"files": len(sizes), "bytes": sum(sizes.values()), "first": sorted(sizes)[:3]}


UPLOAD_METRIC = re.compile(r'^cache_memory_bytes\{[^}]*cache_type="UploadedFileManager"[^}]*\}\s+(\d+)', re.M)


def uploads_held_bytes(url: str) -> int:
    """Bytes of uploaded files Streamlit still holds in memory (its /_stcore/metrics; 0 when it lists none).
    Streamlit 1.67 keeps uploads in memory, per session, not on disk."""
    with urllib.request.urlopen(f"{url}/_stcore/metrics", timeout=10) as response:
        text = response.read().decode("utf-8", "replace")
    return sum(int(found) for found in UPLOAD_METRIC.findall(text))


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages: a 2-core machine shared with others moves every figure."""
    return [round(value, 2) for value in os.getloadavg()]


# ----------------------------------------------------------------------------------------- one visitor
@dataclass
class Visit:
    """What one visitor saw after uploading photos on Classify."""

    photos: int
    answered: int = 0
    seconds: float | None = None  # upload to the last answer drawn; None when not every photo was answered
    server_s: float | None = None  # what the page says the server took ("Classified 8 photo(s) in 0.52 s")
    tracebacks: list[str] = field(default_factory=list)  # first line of each exception the page shows
    error: str | None = None  # the visit itself failed (timeout, browser)

    @property
    def complete(self) -> bool:
        return self.answered >= self.photos and not self.tracebacks and self.error is None


def first_line(text: str, limit: int = 200) -> str:
    return (text.strip().splitlines() or [""])[0][:limit]


def tracebacks_on(page) -> list[str]:
    """The first line of each exception Streamlit shows on the page (its red traceback boxes)."""
    return [first_line(text) for text in page.locator(EXCEPTION).all_inner_texts()]


def shown_answers(page) -> dict[str, str]:
    """Photo name -> class, for every answer line the Classify page shows (core.bench.SHOWN_ANSWER)."""
    shown = {}
    for text in page.locator('[data-testid="stMarkdownContainer"]').all_inner_texts():
        match = SHOWN_ANSWER.fullmatch(text)
        if match:
            shown[match.group(1)] = match.group(2)
    return shown


def open_classify(page, url: str) -> None:
    """Open Classify on the demo bundle and wait until it can take photos (the model is loaded, the script idle)."""
    page.goto(url)
    page.get_by_role("heading", name="Classify", exact=True, level=1).wait_for()
    page.locator('[data-testid="stFileUploader"] input[type=file]').first.wait_for(state="attached")
    wait_until_idle(page)


SERVER_SECONDS = re.compile(r"Classified \d+ photo\(s\) in ([\d.]+) s")


def classify_and_watch(page, photos: Sequence[Path], timeout_s: float = BROWSER_TIMEOUT_MS / 1000) -> Visit:
    """Upload the photos on the open Classify page and time them until every answer is drawn.

    Not core.bench.classify_in_browser: that one waits two minutes for the "Classified" caption, which a page
    showing a traceback never draws; here the caption or an exception, whichever comes first, ends the wait."""
    visit = Visit(photos=len(photos))
    started = time.perf_counter()
    page.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files([str(p) for p in photos])
    caption = page.get_by_text(f"Classified {len(photos)} photo(s)")
    caption.or_(page.locator(EXCEPTION)).first.wait_for(timeout=timeout_s * 1000)
    # The caption comes first and each photo's line follows as the script goes on: poll until all are drawn.
    deadline = started + timeout_s
    while True:
        visit.answered = len(shown_answers(page))
        visit.tracebacks = tracebacks_on(page)
        if visit.answered >= len(photos) or visit.tracebacks or time.perf_counter() > deadline:
            break
        page.wait_for_timeout(100)
    if visit.answered >= len(photos):
        visit.seconds = time.perf_counter() - started
        said = SERVER_SECONDS.search(caption.first.inner_text())
        visit.server_s = float(said.group(1)) if said else None
    wait_until_idle(page)
    visit.tracebacks = tracebacks_on(page)
    return visit


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    """A page in a Chromium of its own, with Playwright started in this thread (its sync API is per thread)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(BROWSER_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {first_line(str(err))}"


def visitor(url: str, photos: Sequence[Path], together: threading.Barrier) -> Visit:
    """One visitor: open Classify, wait for the others (the barrier), then upload the photos at once."""
    try:
        with browser_page() as page:
            open_classify(page, url)
            together.wait(timeout=BROWSER_TIMEOUT_MS / 1000)
            return classify_and_watch(page, photos)
    except Exception as err:  # a visit that fails is a figure (counted as not answered), not the bench's end
        together.abort()  # the others must not wait for a visitor who will never arrive
        return Visit(photos=len(photos), error=error_text(err))


def in_threads(work: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run each callable in its own thread, all at once; their results in the same order."""
    results: list[Any] = [None] * len(work)

    def run(index: int) -> None:
        results[index] = work[index]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def crowd(target: LoadTarget, inputs: LoadInputs, visitors: int, first_visitor: int = 0) -> list[Visit]:
    """`visitors` visitors uploading their photos on Classify at the same moment."""
    together = threading.Barrier(visitors)
    count = inputs.photos_per_visitor
    return in_threads([lambda i=i: visitor(target.classify_url, photos_of(inputs, first_visitor + i, count),
                                           together) for i in range(visitors)])


def crowd_summary(visits: Sequence[Visit]) -> dict[str, Any]:
    """Per-visitor time to all answers (median, max), how many were answered, the tracebacks and failures."""
    times = [v.seconds for v in visits if v.complete and v.seconds is not None]
    server_times = [v.server_s for v in visits if v.complete and v.server_s is not None]
    lines = [line for v in visits for line in v.tracebacks]
    return {"visitors": len(visits), "photos_each": visits[0].photos if visits else 0,
            "answered": sum(v.complete for v in visits),
            "photos_answered": sum(v.answered for v in visits),
            "visitors_with_traceback": sum(bool(v.tracebacks) for v in visits),
            "tracebacks": sorted(set(lines)),
            "failed": [v.error for v in visits if v.error],
            "median_s": round(statistics.median(times), 2) if times else None,
            "max_s": round(max(times), 2) if times else None,
            "each_s": [None if v.seconds is None else round(v.seconds, 2) for v in visits],
            # the model's share as the page reports it (classify_arrays, waiting for a runner included); the rest of
            # each_s is the upload, decoding, the page drawn (by browsers on this same machine's cores), polling
            "server_median_s": round(statistics.median(server_times), 2) if server_times else None,
            "server_max_s": round(max(server_times), 2) if server_times else None}


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used so far, every thread, user and system (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def measured_crowd(target: LoadTarget, inputs: LoadInputs, visitors: int, rounds: int = 1) -> dict[str, Any]:
    """`rounds` crowds one after another, summed up as one, with the server's peak RSS (reset first) and the CPU
    seconds it used meanwhile."""
    reset_peak_rss(target.pid)
    cpu_before = cpu_seconds(target.pid)
    summary = crowd_summary([visit for _ in range(rounds) for visit in crowd(target, inputs, visitors)])
    summary["server_cpu_s"] = round(cpu_seconds(target.pid) - cpu_before, 1)
    summary["server_peak_rss_mib"] = round(peak_rss_mib(target.pid))
    return summary


def measured_burst(target: LoadTarget, inputs: LoadInputs, alone_s: float | None) -> dict[str, Any]:
    """The crowd of --visitors, its server peak and CPU, and its times against one visitor alone."""
    summary = measured_crowd(target, inputs, inputs.visitors)
    if alone_s and summary["median_s"] is not None:
        summary["median_over_alone"] = round(summary["median_s"] / alone_s, 2)
        summary["max_over_alone"] = round(summary["max_s"] / alone_s, 2)
    return summary


# ----------------------------------------------------------------------------------------- burst
def part_burst(target: LoadTarget, inputs: LoadInputs) -> dict[str, Any]:
    """One visitor alone (after a warm-up, which pays the interpreter's first call; the median of ALONE_ROUNDS
    visits, since one figure on a shared 2-core machine is noise), then the crowd."""
    load_before = load_average()
    warm_up = crowd_summary(crowd(target, inputs, 1))
    alone = measured_crowd(target, inputs, 1, rounds=ALONE_ROUNDS)
    crowd_result = measured_burst(target, inputs, alone["median_s"])
    return {"warm_up": warm_up, "alone": alone, "crowd": crowd_result,
            "load_average_before": load_before, "load_average_after": load_average()}


# ----------------------------------------------------------------------------------------- training
@dataclass
class PageOpen:
    title: str
    began: float  # time.perf_counter()
    seconds: float


def percentiles(seconds: Sequence[float]) -> dict[str, Any]:
    """Count, p50, p95 and max of page-open times (p95 by linear interpolation: with few opens, read the count)."""
    import numpy as np

    if not seconds:
        return {"opens": 0}
    values = np.asarray(seconds)
    return {"opens": len(values), "p50_s": round(float(np.percentile(values, 50)), 2),
            "p95_s": round(float(np.percentile(values, 95)), 2), "max_s": round(float(values.max()), 2)}


def page_opener(url: str, ready: threading.Event, stop: threading.Event, opened: list[PageOpen]) -> str | None:
    """A visitor opening page after page through the sidebar until `stop`; each open timed until the page's title
    is shown and the script idle (core.bench.open_page, whose idle wait includes a fixed 300 ms settle)."""
    try:
        with browser_page() as page:
            page.goto(url)
            page.get_by_role("heading", level=1).first.wait_for()
            wait_until_idle(page)
            ready.set()
            turn = 0
            while not stop.is_set():
                title = PAGE_TITLES[turn % len(PAGE_TITLES)]
                turn += 1
                began = time.perf_counter()
                open_page(page, title)
                opened.append(PageOpen(title, began, time.perf_counter() - began))
        return None
    except Exception as err:
        ready.set()
        return error_text(err)


def start_default_run(target: LoadTarget, flowers: Path):
    """A default training run started as the Train page starts one: into a fresh session's runs folder of the
    served workspace, the root workspace as the lock folder, with the app's environment (hosted limits apply)."""
    from core.base.config import TrainConfig
    from core.base.workspace import SESSIONS, new_session_id
    from core.training.jobs import start_training

    runs = target.workspace / SESSIONS / new_session_id() / "runs"
    with app_environment(target.workspace, target.temp_dir):
        return start_training(TrainConfig(data=str(flowers)), runs, lock_dir=target.workspace)


def wait_for_run(run) -> dict[str, Any]:
    """Block until the run is final; its state as the app would show it."""
    from core.base.runs import FINAL_STATES
    from core.training.jobs import run_state

    deadline = time.monotonic() + TRAINING_DEADLINE_S
    while time.monotonic() < deadline:
        state = run_state(run)
        if state.get("state") in FINAL_STATES:
            return state
        time.sleep(0.5)
    return {"state": "still running", "error": f"not final within {TRAINING_DEADLINE_S:.0f} s"}


@dataclass(frozen=True)
class Window:
    """A stretch of time (time.perf_counter()) in which something ran."""

    began: float
    ended: float

    def holds(self, page_open: PageOpen) -> bool:
        return self.began <= page_open.began and page_open.began + page_open.seconds <= self.ended

    def overlaps(self, page_open: PageOpen) -> bool:
        return page_open.began < self.ended and page_open.began + page_open.seconds > self.began


def trained_run(target: LoadTarget, inputs: LoadInputs, meanwhile: Callable[[], Any] | None = None
                ) -> tuple[dict[str, Any], Window, Any, Window | None]:
    """A default run from start to its final state, with `meanwhile` (timed) run just after it started: the run's
    summary and window, and what `meanwhile` returned and its window."""
    began = time.perf_counter()
    run = start_default_run(target, inputs.flowers)
    extra, extra_window = None, None
    if meanwhile is not None:
        extra_began = time.perf_counter()
        extra = meanwhile()
        extra_window = Window(extra_began, time.perf_counter())
    final = wait_for_run(run)
    window = Window(began, time.perf_counter())
    evaluation = run.read_evaluation() or {}
    summary = {"id": run.run_id, "state": final.get("state"), "error": final.get("error"),
               "seconds": round(window.ended - window.began, 1), "accuracy": evaluation.get("accuracy")}
    return summary, window, extra, extra_window


def part_training(target: LoadTarget, inputs: LoadInputs) -> dict[str, Any]:
    """Two default runs, one after the other (one training slot), while a visitor opens page after page: during the
    first nothing else happens; during the second the crowd classifies at once, as in the burst."""
    load_before = load_average()
    ready, stop = threading.Event(), threading.Event()
    opened: list[PageOpen] = []
    opener_errors: list[str | None] = []
    opener = threading.Thread(target=lambda: opener_errors.append(page_opener(target.start_url, ready, stop, opened)),
                              daemon=True)
    opener.start()
    ready.wait(timeout=BROWSER_TIMEOUT_MS / 1000)
    quiet_run, quiet = trained_run(target, inputs)[:2]
    busy_run, busy, burst, burst_window = trained_run(
        target, inputs, meanwhile=lambda: measured_burst(target, inputs, alone_s=None))
    stop.set()
    opener.join(timeout=BROWSER_TIMEOUT_MS / 1000)
    training_only = [o for o in opened if quiet.holds(o)]
    with_burst = [o for o in opened if busy.holds(o) and burst_window.overlaps(o)]
    after_burst = [o for o in opened if busy.holds(o) and o.began >= burst_window.ended]
    return {"page_opens_while_training": percentiles([o.seconds for o in training_only]),
            "slowest_opens_while_training": slowest(training_only),
            "run_with_page_opens": quiet_run,
            "crowd_while_training": burst,
            "page_opens_while_training_and_crowd": percentiles([o.seconds for o in with_burst]),
            "page_opens_while_training_after_crowd": percentiles([o.seconds for o in after_burst]),
            "crowd_seconds": round(burst_window.ended - burst_window.began, 1),
            "run_with_crowd": busy_run,
            "page_opener_error": next(iter(opener_errors), "still opening pages when the bench went on"),
            "load_average_before": load_before, "load_average_after": load_average()}


def slowest(opens: Sequence[PageOpen], count: int = 5) -> list[dict[str, Any]]:
    """The slowest page opens, which page and how long."""
    return [{"page": o.title, "s": round(o.seconds, 2)} for o in sorted(opens, key=lambda o: -o.seconds)[:count]]


# ----------------------------------------------------------------------------------------- sessions
def open_and_close_session(browser, url: str) -> None:
    """A new browser context (a new Streamlit session): open the app, wait for its first page, close it."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.set_default_timeout(BROWSER_TIMEOUT_MS)
        page.goto(url)
        page.get_by_role("heading", level=1).first.wait_for()
        wait_until_idle(page)
    finally:
        context.close()


def settled(target: LoadTarget, seconds: float) -> dict[str, Any]:
    """RSS and held uploads after waiting `seconds` (--settle) for Streamlit to drop closed sessions (0: not waited).
    Streamlit keeps a closed tab's session, and its uploads, for server.disconnectedSessionTTL (120 s) in case it
    reconnects: memory measured sooner still holds them."""
    if seconds <= 0:
        return {}
    time.sleep(seconds)
    return {"settle_s": seconds, "rss_mib_after_settle": round(rss_mib(target.pid), 1),
            "uploads_held_bytes_after_settle": uploads_held_bytes(target.served.url)}


def part_sessions(target: LoadTarget, inputs: LoadInputs) -> dict[str, Any]:
    """--sessions sessions opened and closed one after another; RSS now (VmRSS) before and after."""
    from playwright.sync_api import sync_playwright

    load_before = load_average()
    failed: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            open_and_close_session(browser, target.start_url)  # the first visit imports and loads: not growth
            before = rss_mib(target.pid)
            began = time.perf_counter()
            for _ in range(inputs.sessions):
                try:
                    open_and_close_session(browser, target.start_url)
                except Exception as err:
                    failed.append(error_text(err))
            seconds = time.perf_counter() - began
        finally:
            browser.close()
    after = rss_mib(target.pid)
    result = {"sessions": inputs.sessions, "failed": len(failed), "first_failures": failed[:3],
              "seconds": round(seconds, 1), "rss_mib_before": round(before, 1), "rss_mib_after": round(after, 1),
              "rss_growth_mib": round(after - before, 1), "load_average_before": load_before,
              "load_average_after": load_average()}
    result.update(settled(target, inputs.settle_s))
    if "rss_mib_after_settle" in result:
        result["rss_growth_mib_after_settle"] = round(result["rss_mib_after_settle"] - before, 1)
    return result


# ----------------------------------------------------------------------------------------- soak
def mixed_visit(browser, target: LoadTarget, photos: Sequence[Path], other_page: str) -> Visit:
    """A visitor who classifies a few photos, looks at Evaluate, opens one more page and leaves."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.set_default_timeout(BROWSER_TIMEOUT_MS)
        open_classify(page, target.classify_url)
        visit = classify_and_watch(page, photos)
        for title in ("Evaluate", other_page):
            open_page(page, title)
            visit.tracebacks += tracebacks_on(page)
        return visit
    except Exception as err:
        return Visit(photos=len(photos), error=error_text(err))
    finally:
        context.close()


def part_soak(target: LoadTarget, inputs: LoadInputs) -> dict[str, Any]:
    """Mixed visits, one after another, for --minutes; RSS at start and end, temp files and held uploads."""
    from playwright.sync_api import sync_playwright

    others = [t for t in PAGE_TITLES if t not in ("Evaluate", "Classify")]
    load_before = load_average()
    visits: list[Visit] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            mixed_visit(browser, target, photos_of(inputs, 0, SOAK_PHOTOS_PER_VISIT), others[0])  # warm-up
            temp_start = file_sizes(target.temp_dir)  # the extracted demo bundle lives there while served
            rss_start = rss_mib(target.pid)
            reset_peak_rss(target.pid)
            began = time.perf_counter()
            while time.perf_counter() - began < inputs.minutes * 60:
                turn = len(visits) + 1
                visits.append(mixed_visit(browser, target, photos_of(inputs, turn, SOAK_PHOTOS_PER_VISIT),
                                          others[turn % len(others)]))
            seconds = time.perf_counter() - began
        finally:
            browser.close()
    rss_end = rss_mib(target.pid)
    temp_end = file_sizes(target.temp_dir)
    result = {"minutes": round(seconds / 60, 2), "visits": len(visits),
              "visits_answered": sum(v.complete for v in visits),
              "photos_answered": sum(v.answered for v in visits),
              "visits_with_traceback": sum(bool(v.tracebacks) for v in visits),
              "tracebacks": sorted({line for v in visits for line in v.tracebacks}),
              "failed": sorted({v.error for v in visits if v.error}),
              "rss_mib_start": round(rss_start, 1), "rss_mib_end": round(rss_end, 1),
              "rss_growth_mib": round(rss_end - rss_start, 1), "peak_rss_mib": round(peak_rss_mib(target.pid)),
              "temp_files_start": files_summary(temp_start), "temp_files_end": files_summary(temp_end),
              "temp_files_new": files_summary({k: v for k, v in temp_end.items() if k not in temp_start}),
              "uploads_held_bytes_end": uploads_held_bytes(target.served.url),
              "load_average_before": load_before, "load_average_after": load_average()}
    result.update(settled(target, inputs.settle_s))
    if "rss_mib_after_settle" in result:
        result["rss_growth_mib_after_settle"] = round(result["rss_mib_after_settle"] - rss_start, 1)
    return result


# ----------------------------------------------------------------------------------------- the bench
PART_RUNNERS: dict[str, Callable[[LoadTarget, LoadInputs], dict[str, Any]]] = {
    "burst": part_burst, "training": part_training, "sessions": part_sessions, "soak": part_soak}


def bench_load(args: argparse.Namespace) -> dict[str, Any]:
    """Start the app (hosted) from the profile's venv on the demo bundle and run the chosen parts against it."""
    inputs = load_inputs(args)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise StudioError("bench load drives Chromium with Playwright: pip install -r requirements-dev.txt.") from None
    train_packages = packages_in(inputs.python, TRAIN_PACKAGES)
    if inputs.profile == "serve" and train_packages:
        raise StudioError(f"--venv {args.venv} has {', '.join(train_packages)}: a serve-profile venv must not "
                          "(pip install -r requirements.txt into a fresh venv).")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="studio-bench-load-") as scratch:
        with served_app(inputs, Path(scratch)) as target:
            server = {"seconds_to_port": round(target.served.seconds_to_port, 2),
                      "rss_mib_after_start": round(rss_mib(target.pid), 1)}
            for part in inputs.parts:
                results[part] = PART_RUNNERS[part](target, inputs)
            server["temp_files_at_end"] = files_summary(file_sizes(target.temp_dir))
    return {"profile": inputs.profile, "hosted": True, "python": str(inputs.python),
            "train_packages_in_venv": train_packages, "bundle": bundle_summary(inputs.bundle),
            "parts": list(inputs.parts),
            "sizes": {"visitors": inputs.visitors, "photos_per_visitor": inputs.photos_per_visitor,
                      "sessions": inputs.sessions, "minutes": inputs.minutes, "settle_s": inputs.settle_s},
            "server": server, **results}
