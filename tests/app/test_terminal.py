"""The command line's terminal (issue 18): progress from the app's records, as bars on a terminal and plain lines
elsewhere, nothing with --quiet; TensorFlow's C++ lines and Python warnings hidden unless --verbose; the result
alone on stdout."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import REPO, flower_files, run_cli
from core.terminal import BAR, LINES, OFF, Display, Stage, Stages, choose_mode, quiet_logs

# What TensorFlow, XLA and absl print on a machine without a GPU when nothing hides them.
LIBRARY_NOISE = re.compile(r"absl::InitializeLog|cuInit|cuda|oneDNN|^[IWEF]\d{4} |Traceback|Warning", re.I | re.M)


class FakeClock:
    """Seconds from a start; never 0, which core.base.progress would read as 'not started'."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return 1000.0 + self.now


class Terminal(io.StringIO):
    encoding = "utf-8"  # tqdm draws an ASCII bar on a stream it cannot tell is UTF-8

    def isatty(self) -> bool:
        return True


def two_stages(display: Display, clock: FakeClock) -> Stages:
    return Stages(display, [Stage("decode", 0, title="Decoding images"), Stage("features", 0, title="Features")],
                  clock=clock)


def test_the_mode_follows_the_stream_and_quiet() -> None:
    assert choose_mode(Terminal()) == BAR
    assert choose_mode(io.StringIO()) == LINES
    assert choose_mode(Terminal(), quiet=True) == OFF


def test_plain_lines_say_each_finished_phase_once_and_a_long_phase_every_interval() -> None:
    clock, out = FakeClock(), io.StringIO()
    display = Display(out, LINES, interval=30, clock=clock)
    stages = two_stages(display, clock)
    stages("decode", 0, 100)
    clock.now = 10
    stages("decode", 20, 100)  # before the interval: nothing yet
    assert out.getvalue() == ""
    clock.now = 31
    stages("decode", 62, 100)
    clock.now = 40
    stages("decode", 100, 100)
    stages("features", 0, 100)
    clock.now = 42
    stages("features", 100, 100)
    stages.finish()
    display.show(stages.tracker.snapshot())  # the trainer's ticker repeats a finished phase: no second line
    display.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("1/2 Decoding images: 62/100 images · 2.0 images/s · ") and "left" in lines[0]
    assert lines[1] == "1/2 Decoding images: 100 images in 0:40 (2.5 images/s)"
    assert lines[2] == "2/2 Features: 100 images in 0:02 (50 images/s)"


def test_a_terminal_gets_a_bar_per_phase_with_count_rate_and_time_left() -> None:
    clock, out = FakeClock(), Terminal()
    display = Display(out, BAR, clock=clock)
    stages = two_stages(display, clock)
    stages("decode", 0, 400)
    clock.now = 4
    stages("decode", 100, 400)
    clock.now = 8
    stages("decode", 200, 400)
    clock.now = 16
    stages("decode", 400, 400)
    stages("features", 0, 10)
    display.note("a note between the bars")
    stages.finish()
    display.close()
    screen = out.getvalue()
    assert "\r" in screen and "█" in screen and "1/2 Decoding images" in screen
    assert re.search(r"200/400 images · 2\d images/s · 0:0\d left", screen), screen
    assert "400/400 images · 25 images/s · in 0:16" in screen  # the finished phase stays as one line
    assert "a note between the bars\n" in screen and "2/2 Features" in screen


def test_quiet_draws_nothing() -> None:
    clock, out = FakeClock(), Terminal()
    display = Display(out, OFF, clock=clock)
    stages = two_stages(display, clock)
    stages("decode", 5, 10)
    display.note("hidden")
    stages.finish()
    display.close()
    assert out.getvalue() == ""


def test_quiet_logs_hides_warnings_and_library_logs_and_puts_everything_back() -> None:
    before = (os.environ.get("TF_CPP_MIN_LOG_LEVEL"), list(sys.meta_path), logging.root.manager.disable)
    with quiet_logs(verbose=False):
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn("hidden", UserWarning)
        assert not logging.getLogger("tensorflow").isEnabledFor(logging.WARNING)
        assert logging.getLogger("tensorflow").isEnabledFor(logging.ERROR)
    assert (os.environ.get("TF_CPP_MIN_LOG_LEVEL"), list(sys.meta_path), logging.root.manager.disable) == before
    with quiet_logs(verbose=True):
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert not [w for w in caught if "hidden" in str(w.message)] or sys.warnoptions


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def piped_run(tmp_path_factory, flowers_dir: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """`train` with stdout and stderr on pipes, as a script or the app's train.log sees it."""
    models = tmp_path_factory.mktemp("models")
    result = run_cli("--models-dir", str(models), "train", "--data", str(flowers_dir), "--image-size", "64")
    assert result.returncode == 0, result.stderr[-3000:]
    return result, Path(result.stdout.strip())


def test_train_on_a_pipe_prints_the_folder_alone_and_one_plain_line_per_phase(piped_run) -> None:
    result, run = piped_run
    assert result.stdout == f"{run}\n" and run.is_dir()  # the result alone on stdout, for scripts
    preset, device, *phases = result.stderr.splitlines()
    assert re.fullmatch(r"Preset quick: .+ Expected on this CPU: about \d+:\d\d \(.+\)\.", preset), preset
    assert device == f"no GPU found: training on CPU, {os.cpu_count()} cores" or device.startswith("training on ")
    assert [line.split(" ", 1)[0] for line in phases] == [f"{i}/{len(phases)}" for i in range(1, len(phases) + 1)]
    assert re.search(r"^\d/\d Computing frozen-base features: [\d,]+ images in \d+:\d\d \([\d,.]+ images/s\)$",
                     result.stderr, re.M), result.stderr
    assert not LIBRARY_NOISE.search(result.stderr), result.stderr


def _read_waiting(fd: int) -> str:
    """What is on the terminal now (empty when nothing was drawn; never blocks the test)."""
    import select

    screen = b""
    while select.select([fd], [], [], 0.5)[0]:
        screen += os.read(fd, 65536)
    return screen.decode("utf-8", "replace")


def test_a_terminal_that_reports_no_size_gets_80_columns_not_blank_lines(monkeypatch) -> None:
    """A pseudo-terminal with no size set (as under `script` or some container runtimes) reports 0 columns; tqdm
    would draw its bars -1 wide. The bar falls back to $COLUMNS, else 80."""
    import pty

    monkeypatch.delenv("COLUMNS", raising=False)
    main, secondary = pty.openpty()  # a new pty has a 0 x 0 window
    assert os.get_terminal_size(secondary).columns == 0
    with os.fdopen(secondary, "w", encoding="utf-8", closefd=True) as stream:
        clock = FakeClock()
        display = Display(stream, BAR, clock=clock)
        stages = two_stages(display, clock)
        stages("decode", 0, 400)
        clock.now = 4
        stages("decode", 100, 400)
        stream.flush()
        screen = _read_waiting(main)
        drawn = [line for line in re.split(r"[\r\n]+", screen) if line.strip()]
        assert drawn and all("1/2 Decoding images" in line for line in drawn), screen
        assert re.search(r"100/400 images", screen) and "█" in screen, screen
        assert max(len(line.rstrip()) for line in drawn) <= 79, drawn
        monkeypatch.setenv("COLUMNS", "50")
        clock.now = 8
        stages("decode", 200, 400)
        stream.flush()
        later = [line for line in re.split(r"[\r\n]+", _read_waiting(main)) if line.strip()]
        assert later and max(len(line.rstrip()) for line in later) <= 49, later
        display.close()
    os.close(main)


def _pty_run(args: list[str], columns: int = 120) -> tuple[int, str, str]:
    """`python -m core ARGS` with stderr on a pseudo-terminal of `columns` and stdout on a pipe."""
    import fcntl
    import pty
    import struct
    import termios

    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    child = subprocess.Popen([sys.executable, "-m", "core", *args], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=secondary, stdin=subprocess.DEVNULL)
    os.close(secondary)
    screen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    out = child.stdout.read().decode()
    child.wait(timeout=300)
    os.close(main)
    return child.returncode, out, screen.decode("utf-8", "replace")


def test_predict_on_a_terminal_draws_live_bars_and_keeps_json_on_stdout(piped_run, flowers_dir: Path) -> None:
    _, run = piped_run
    photos = [str(p) for p in flower_files(flowers_dir, "roses", 40)]
    code, out, screen = _pty_run(["predict", str(run), *photos])
    assert code == 0, screen[-2000:]
    assert [row["path"] for row in json.loads(out)] == photos
    assert "\r" in screen and "█" in screen and "1/2 Loading the model" in screen, screen[-2000:]
    assert re.search(r"2/2 Classifying 100%\|█+\| 40/40 photos · [\d.,]+ photos/s · in 0:\d\d", screen), screen
    assert not LIBRARY_NOISE.search(screen), screen[-2000:]


def test_quiet_leaves_stderr_empty_and_verbose_shows_the_library_logs(piped_run, flowers_dir: Path) -> None:
    _, run = piped_run
    photo = str(flower_files(flowers_dir, "tulips", 1)[0])
    quiet = run_cli("predict", str(run), photo, "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == "" and json.loads(quiet.stdout)[0]["path"] == photo
    loud = run_cli("-v", "predict", str(run), photo)
    assert loud.returncode == 0 and json.loads(loud.stdout)[0]["path"] == photo
    assert LIBRARY_NOISE.search(loud.stderr), loud.stderr  # TensorFlow's own start-up lines, shown on request


def test_an_interrupt_exits_3_with_one_line(monkeypatch, capsys) -> None:
    import core.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(core.cli, "cmd_status", interrupted)
    assert core.cli.main(["status", "whatever"]) == core.cli.EXIT_INTERRUPTED == 3
    assert capsys.readouterr().err == "error: interrupted\n"
