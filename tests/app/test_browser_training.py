"""Training watched in a real browser (issue 12): the bar moves through every phase, Stop works in every phase,
and the Train page and the sidebar agree after a failure, a success and each stop.

The trainer is the real one (Lite0, 96 px, a 24-photo dataset). For Stop in every phase the test holds the trainer
in each phase (helpers_ui.trainer_held: frozen as the phase starts, before its work, until Stop has been pressed), so
every phase is seen and stopped in however fast or slow the machine trains.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from core.base.progress import LABELS
from tests.helpers_ui import (CHROMIUM, HOLD_THROTTLE_SECONDS, THROTTLE_ENV, flowers_mini, go_to, keep_failure,
                              launch_chromium, require, snapshot, streamlit_server, trainer_held, wait_idle, wait_until)

PHASES = ["prepare", "decode", "features", "head_fit", "finetune", "save", "evaluate"]
CLASSES = ("daisy", "roses", "tulips")


def make_workspace(root: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A session workspace whose current dataset is 3 classes x 8 flowers; returns its session id."""
    monkeypatch.setenv("STUDIO_WORKSPACE", str(root))
    from core.base.workspace import Workspace, new_session_id

    session = new_session_id()
    workspace = Workspace.for_session(session)
    data = workspace.datasets_dir() / "tiny-flowers"
    for name in CLASSES:
        (data / name).mkdir(parents=True)
        for image in sorted((flowers_mini() / "train" / name).iterdir())[:8]:
            shutil.copy(image, data / name / image.name)
    workspace.save_state(dataset=str(data))
    return session


def main_bar(page):
    return page.locator('[data-testid="stMain"] [data-testid="stProgress"]')


def read_bar(page) -> tuple[float, str] | None:
    """The Train page's progress bar: (percent, caption), or None when it is not shown."""
    bar = main_bar(page)
    if bar.count() == 0:
        return None
    try:
        value = bar.first.get_by_role("progressbar").get_attribute("aria-valuenow", timeout=1000)
        return float(value or 0), bar.first.inner_text(timeout=1000)
    except Exception:  # redrawn between the two reads
        return None


def sidebar_text(page) -> str:
    return page.locator('[data-testid="stSidebar"]').inner_text()


def set_tiny_settings(page) -> None:
    size = page.get_by_role("slider", name="Image size (pixels)")
    size.focus()
    size.press("Home")  # 96 px
    wait_idle(page)
    finetune = page.get_by_role("spinbutton", name="Fine-tune epochs (phase 2)")
    finetune.fill("1")
    finetune.press("Enter")
    wait_idle(page)


def start(page):
    from playwright.sync_api import expect

    button = page.get_by_role("button", name="Start training")
    expect(button).to_be_enabled(timeout=30_000)
    button.click()
    expect(page.get_by_role("button", name="Start training")).to_be_disabled(timeout=30_000)


def watch_until_finished(page, limit: float = 300) -> list[tuple[float, float, str]]:
    """(time, percent, caption) of the Train page's bar, read every 0.3 s until the run has ended."""
    seen: list[tuple[float, float, str]] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        reading = read_bar(page)
        if reading is not None:
            seen.append((time.monotonic(), *reading))
        elif page.get_by_text("Training finished").count() or page.get_by_text("The run failed").count():
            break
        page.wait_for_timeout(300)
    return seen


def longest_standstill(seen: list[tuple[float, float, str]]) -> tuple[float, str]:
    """The longest time the bar's value did not change, and the readings around it."""
    changes = [t for (t, v, _), (_, previous, _) in zip(seen[1:], seen) if v != previous]
    moments = [seen[0][0], *changes, seen[-1][0]]
    longest, at = max((b - a, a) for a, b in zip(moments, moments[1:]))
    trace = "\n".join(f"{t - seen[0][0]:6.1f} s {v:5.1f}% {c}" for t, v, c in seen if at - 3 <= t <= at + longest + 3)
    return longest, trace


def test_the_sample_run_shows_every_phase_moving_and_states_agree(tmp_path: Path) -> None:
    """The newcomer path at the default settings (flowers-mini, Lite0 288 px): a failure first, then a success
    watched from Start to the end."""
    require(Path(CHROMIUM).is_file(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    require(flowers_mini() is not None, "flowers-mini is missing (see core.data.samples.flowers_mini_missing_message)")
    from playwright.sync_api import expect, sync_playwright

    from core.base.workspace import SESSIONS

    expect.set_options(timeout=60_000)
    root = tmp_path / "workspace"
    with streamlit_server(root, tmp_path / "server.log") as url, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("button", name="Use flowers-mini").click()
        expect(page.get_by_text("Ready to train")).to_be_visible()
        session = re.search(r"ws=([^&]+)", page.url).group(1)
        go_to(page, "Train")

        # A failure (the cache folder is a file): the page and the sidebar both say failed.
        runs = root / SESSIONS / session / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        (runs / ".cache").write_text("not a folder")
        start(page)
        expect(page.get_by_text("The run failed")).to_be_visible(timeout=120_000)
        expect(page.locator('[data-testid="stSidebar"]').get_by_text("failed")).to_be_visible()
        (runs / ".cache").unlink()

        # A success: every phase shown, the bar never goes back and never stands still for more than 10 s.
        start(page)
        expect(page.get_by_text("The run failed")).to_have_count(0)  # the earlier error is gone at once
        seen = watch_until_finished(page)
        expect(page.get_by_text("Training finished")).to_be_visible(timeout=60_000)
        captions = "\n".join(c for _, _, c in seen)
        from core.training.jobs import active_run  # noqa: F401  (imports core before reading the run below)
        from core.base.runs import list_runs

        (run,) = [r for r in list_runs(runs) if r.read_status()["state"] == "succeeded"]
        durations = {m["phase"]: m["seconds"] for m in run.read_metrics() if m.get("kind") == "phase"}
        assert set(durations) == set(PHASES) - {"finetune"}  # the CPU recipe fits the head only
        for name, seconds in durations.items():
            if seconds > 4.0:  # the page redraws every 2 s: anything longer is seen
                assert LABELS[name] in captions, f"phase {name!r} ({seconds:.0f} s) never shown:\n{captions}"
        values = [v for _, v, _ in seen]
        assert values == sorted(values), values
        assert re.search(r"about \d+:\d\d left", captions)
        longest, trace = longest_standstill(seen)
        print(f"the bar's longest standstill: {longest:.0f} s (measured, not asserted):\n{trace}")
        expect(page.locator('[data-testid="stSidebar"]').get_by_text("succeeded")).to_be_visible()
        expect(page.get_by_role("button", name="Start training")).to_be_enabled()
        snapshot(page, "train-finished")
        browser.close()


def test_stop_works_in_every_phase_and_states_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each phase held on screen (the trainer frozen as the phase starts), Stop pressed in it: the run ends stopped
    within seconds of being let go, says in which phase and whether a model was kept, and the sidebar agrees."""
    require(Path(CHROMIUM).is_file(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    require(flowers_mini() is not None, "flowers-mini is missing (see core.data.samples.flowers_mini_missing_message)")
    from playwright.sync_api import expect, sync_playwright

    from core.base.workspace import SESSIONS

    expect.set_options(timeout=60_000)
    root = tmp_path / "workspace"
    session = make_workspace(root, monkeypatch)
    runs = root / SESSIONS / session / "runs"
    log = tmp_path / "server.log"
    with streamlit_server(root, log, env={THROTTLE_ENV: HOLD_THROTTLE_SECONDS}) as url, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(f"{url}/train?ws={session}")
            expect(page.get_by_role("heading", name="Train", level=1)).to_be_visible()
            set_tiny_settings(page)
            latencies = {}
            for name in PHASES:
                start(page)
                with trainer_held(runs, [name]) as held:
                    expect(main_bar(page).get_by_text(LABELS[name])).to_be_visible(timeout=120_000)
                    if name == "features":
                        snapshot(page, "train-progress")
                    asked = time.monotonic()
                    page.get_by_role("button", name="Stop").click()
                    wait_until(held.stop_requested, f"the stop request of {held.run.name}")  # then let it go on
                expect(page.get_by_text(f"Stopped during '{LABELS[name]}'")).to_be_visible(timeout=30_000)
                latencies[name] = time.monotonic() - asked
                expect(page.locator('[data-testid="stSidebar"]').get_by_text("stopped")).to_be_visible()
                assert "running" not in sidebar_text(page) and "queued" not in sidebar_text(page)
                if PHASES.index(name) < PHASES.index("head_fit"):
                    expect(page.get_by_text("No model was saved")).to_be_visible()
                elif name != "head_fit":  # in the head fit a stop may come before or after the first fit ends
                    expect(page.get_by_text("was not evaluated")).to_be_visible()
        except Exception:
            keep_failure({"stop-failure.png": page}, {"stop-server.log": log})
            raise
        finally:
            browser.close()
    # Measured, not asserted (docs/testing.md: speed is never asserted): the trainer honours a stop at its next
    # report (the phase's first, once it is let go) and the page polls every 2 s. What is asserted above is the order:
    # the stop was asked while the trainer was held in that phase, and the page says it stopped there.
    print("stop latencies (s, from the click, including the page's 2 s poll):", latencies)
