"""The command line's terminal: live progress from the records the app reads, and quiet library logs.

Progress. Every long command reports phases as records shaped like status.json's progress fields
(core.base.progress: phase, label, done/total, unit, rate, time left): training through its own Tracker, the
other commands through a Tracker of their stages (`Stages`), so the terminal and the app say the same thing. A
`Display` draws them on stderr: a tqdm bar per phase (count, rate, time left; each finished phase stays as one
line) when stderr is a terminal; plain lines when it is not (a pipe, CI, the app's train.log): one per finished
phase and one every PLAIN_INTERVAL s inside a long one, since a log gains nothing from a redrawn bar; nothing
with --quiet. stdout keeps only the result (a run folder, JSON), so scripts can read it.

Quiet logs. TensorFlow writes C++ log lines at import (absl: "All log messages before absl::InitializeLog() ...",
oneDNN, "Could not find cuda drivers") before any log level applies, so the only way to hide them is to point
file descriptor 2 elsewhere while `tensorflow` is imported; later lines (e.g. "failed call to cuInit ... (303)"
on a machine without a GPU) obey TF_CPP_MIN_LOG_LEVEL=3, which must be in the environment before that import.
Python warnings and library log records below ERROR are hidden too. --verbose shows all of it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterator

from core.base import progress

PLAIN_INTERVAL = 30.0  # seconds between two lines about the same phase when stderr is not a terminal
BAR, LINES, OFF = "bar", "lines", "off"
# Modules whose import writes C++ log lines that no log level can hide (see the module's docstring).
NOISY_IMPORTS = ("tensorflow",)
Record = dict[str, Any]


def choose_mode(stream: IO[str], quiet: bool = False) -> str:
    """A bar on a terminal, plain lines elsewhere, nothing when asked to be quiet."""
    if quiet:
        return OFF
    try:
        return BAR if stream.isatty() else LINES
    except (AttributeError, ValueError):  # a closed or file-less stream
        return LINES


# ----------------------------------------------------------------------------------------------- the words
def _rate(record: Record) -> str:
    """'41 images/s', '2.5 images/s', or under one a second '4.2 s/format' (as tqdm says it)."""
    rate, unit = record.get("rate"), record.get("unit") or ""
    if not rate or float(record.get("total") or 0) <= 1:
        return ""
    rate = float(rate)
    if rate < 1:
        return f"{1 / rate:,.1f} s/{unit[:-1] if unit.endswith('s') else unit}"
    return f"{rate:,.1f} {unit}/s" if rate < 10 else f"{rate:,.0f} {unit}/s"


def _count(record: Record) -> str:
    total = float(record.get("total") or 0)
    if total <= 1:  # "0/1 steps" says nothing
        return ""
    return f"{int(float(record.get('done') or 0)):,}/{int(total):,} {record.get('unit') or ''}".strip()


def _left(record: Record) -> str:
    """This phase's time left, and the whole command's when later phases add to it."""
    phase_left, all_left = record.get("phase_eta_seconds"), record.get("eta_seconds")
    if phase_left is None:
        return ""
    text = f"{progress.format_seconds(float(phase_left))} left"
    if all_left is not None and float(all_left) > float(phase_left) + 1:
        text += f", {progress.format_seconds(float(all_left))} in all"
    return text


def title(record: Record) -> str:
    """'3/7 Computing frozen-base features' (the step number only when there are several)."""
    label = record.get("phase_label") or progress.LABELS.get(record.get("phase") or "", record.get("phase") or "")
    if record.get("phase_count") and int(record["phase_count"]) > 1:
        return f"{record.get('phase_index')}/{record['phase_count']} {label}"
    return str(label)


def details(record: Record) -> str:
    """'640/1,420 images · 41 images/s · 0:19 left, 1:05 in all · epoch 2/5 · validating': what matters most
    first, since a bar line is cut at the terminal's edge (epoch 2/5 as Keras says it: at most 5 with early
    stopping)."""
    parts = [_count(record), _rate(record), _left(record),
             f"epoch {record.get('phase_epoch') or 1}/{record['phase_epochs']}" if record.get("phase_epochs") else "",
             str(record.get("message") or "")]
    return " · ".join(p for p in parts if p)


def finished_line(record: Record, seconds: float) -> str:
    """A finished phase as one plain line: '3/7 Computing frozen-base features: 1,420 images in 0:35 (41 images/s)'."""
    count = f"{int(float(record.get('total') or 0)):,} {record.get('unit') or ''} in " \
        if float(record.get("total") or 0) > 1 else ""
    rate = _rate({**record, "rate": float(record.get("total") or 0) / seconds if seconds > 0 else None})
    return f"{title(record)}: {count}{progress.format_seconds(seconds)}" + (f" ({rate})" if rate else "")


# ----------------------------------------------------------------------------------------------- the display
FALLBACK_SHAPE = (80, 24)


def screen_shape(stream: Any) -> tuple[int, int]:
    """(columns - 1, lines - 1) of the terminal `stream` writes to, as tqdm uses them. A pseudo-terminal with no
    size set (under `script`, some container runtimes) reports 0 × 0, which tqdm turns into bars -1 wide: blank
    lines. Then $COLUMNS / $LINES, else 80 × 24, as `shutil.get_terminal_size` does for stdout."""
    try:
        columns, lines = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):  # not a terminal, no file number, or closed
        columns, lines = 0, 0
    columns = columns if columns > 0 else _positive_env("COLUMNS") or FALLBACK_SHAPE[0]
    lines = lines if lines > 0 else _positive_env("LINES") or FALLBACK_SHAPE[1]
    return columns - 1, lines - 1


def _positive_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _tqdm_class() -> type:
    """tqdm with a field of our own in its line, `info`: count, rate and time left as the record has them (tqdm's
    own would be measured from the calls to it, and disagree with the app)."""
    from tqdm import tqdm

    class RecordBar(tqdm):
        def __init__(self, *args: Any, info: str = "", **kwargs: Any):
            self.info = info  # before tqdm draws the first line
            stream = kwargs.get("file")
            kwargs.update(ncols=screen_shape(stream)[0], dynamic_ncols=False)  # tqdm's own reads 0 as -1
            super().__init__(*args, **kwargs)
            self.dynamic_ncols = screen_shape  # re-read on each draw, so a resized window redraws to fit

        @property
        def format_dict(self) -> dict[str, Any]:
            return {**super().format_dict, "info": self.info}

    return RecordBar


BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {info}"


class Display:
    """Shows progress records on `stream`, one phase at a time; thread-safe (the trainer's ticker thread writes
    records too)."""

    def __init__(self, stream: IO[str] | None = None, mode: str | None = None, quiet: bool = False,
                 interval: float = PLAIN_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.mode = mode or choose_mode(self.stream, quiet)
        self.interval, self.clock = interval, clock
        self.lock = threading.RLock()
        self.phase: str | None = None  # the phase on screen
        self.ended: set[str] = set()  # phases already drawn to the end (the trainer's ticker repeats the last one)
        self.last: Record = {}
        self.started = 0.0
        self.printed = 0.0  # lines mode: when the last line about this phase was written
        self.bar: Any = None
        self.width = 0  # the longest `info` of this phase: padding to it keeps the bar from jumping

    def __enter__(self) -> "Display":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def show(self, record: Record) -> None:
        """Draw one record: a new phase ends the one on screen (its line stays) and starts its own."""
        if self.mode == OFF or not record.get("phase"):
            return
        with self.lock:
            if record["phase"] in self.ended:
                return
            if record["phase"] != self.phase:
                self._end()
                self.phase, self.started, self.printed = record["phase"], self.clock(), self.clock()
                if self.mode == BAR:
                    self.width = len(details(record))
                    self.bar = _tqdm_class()(total=max(float(record.get("total") or 0), 1.0), desc=title(record),
                                             info=details(record), file=self.stream, bar_format=BAR_FORMAT,
                                             dynamic_ncols=True, leave=True, mininterval=0)
            # Fields a record leaves out keep their last value, as in status.json (the trainer's ticker writes
            # only the time-based ones; its epoch reports add the epoch and a message).
            record = self.last = {**self.last, **record} if self.last.get("phase") == record["phase"] else record
            if self._phase_done(record):
                self._end()
            elif self.mode == BAR:
                self._draw(record)
            elif self.clock() - self.printed >= self.interval:
                self._print(f"{title(record)}: {details(record)}")
                self.printed = self.clock()

    def note(self, text: str) -> None:
        """A message between the bars (e.g. 'no GPU found: ...'); hidden with --quiet."""
        if self.mode == OFF:
            return
        with self.lock:
            if self.bar is not None:
                self.bar.write(text, file=self.stream)
            else:
                self._print(text)

    def close(self) -> None:
        with self.lock:
            self._end()

    def _phase_done(self, record: Record) -> bool:
        """The trainer marks a finished phase 'done' in the record's list of phases."""
        return any(p.get("name") == record["phase"] and p.get("state") == "done" for p in record.get("phases") or [])

    def _draw(self, record: Record) -> None:
        bar = self.bar
        total = max(float(record.get("total") or 0), 1.0)
        bar.total = total
        bar.n = min(float(record.get("done") or 0), total)
        info = details(record)
        self.width = max(self.width, len(info))
        bar.info = info.ljust(self.width)
        bar.refresh()

    def _end(self) -> None:
        """The phase on screen is over: its bar is drawn full and left as a line, or its plain line printed."""
        if self.phase is None:
            return
        record, seconds = self.last, self.clock() - self.started
        if self.mode == BAR and self.bar is not None:
            done = {**record, "done": record.get("total"), "phase_eta_seconds": None,
                    "rate": float(record.get("total") or 0) / seconds if seconds > 0 else None, "message": ""}
            self.bar.n = self.bar.total
            self.bar.info = " · ".join(p for p in (_count(done), _rate(done),
                                                   f"in {progress.format_seconds(seconds)}") if p).ljust(self.width)
            self.bar.close()
            self.bar = None
        elif self.mode == LINES:
            self._print(finished_line(record, seconds))
        self.ended.add(self.phase)
        self.phase = None

    def _print(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed pipe must not fail the command whose result is on stdout
            pass


@dataclass
class Stage(progress.Phase):
    """A phase of a command other than training, with its own words (core.base.progress.LABELS has training's)."""

    title: str = ""

    @property
    def label(self) -> str:
        return self.title or progress.LABELS.get(self.name, self.name)


class Stages:
    """Turns a command's `(stage, done, total)` reports into progress records through a core.base.progress
    Tracker (the trainer's own bookkeeping of rates and time left), and hands them to a Display."""

    def __init__(self, display: Display, stages: list[Stage], clock: Callable[[], float] = time.monotonic):
        self.tracker = progress.Tracker(list(stages), display.show, clock=clock, throttle=0.0)

    def __call__(self, stage: str, done: float, total: float | None = None, message: str = "") -> None:
        tracker = self.tracker
        if tracker.current is None or tracker.current.name != stage:
            if tracker.current is not None and tracker.current.ended is None:
                tracker.finish(tracker.current.name)
            tracker.start(stage, total, message=message)
        elif total is not None:
            tracker.current.total = float(total)
        current = tracker.current
        tracker.advance(done, force=current is not None and float(done) >= current.total, message=message)

    def finish(self) -> None:
        """Close the stage in progress (a command's last report is not always its total)."""
        current = self.tracker.current
        if current is not None and current.ended is None:
            self.tracker.finish(current.name)


# ----------------------------------------------------------------------------------------------- the device
def device_note() -> str:
    """'no GPU found: training on CPU, 2 cores', or 'training on NVIDIA H200'. Asked once training has set up its
    devices (the first progress record), so it never starts a backend early."""
    from core.network.device import detect_device, gpu_memory_from_nvidia_smi

    device = detect_device()
    cores = f"{os.cpu_count()} core{'s' if os.cpu_count() != 1 else ''}"
    if device.accelerator == "gpu":
        return f"training on {device.count} x {device.name}" if device.count > 1 else f"training on {device.name}"
    seen = gpu_memory_from_nvidia_smi()
    if seen:
        return (f"nvidia-smi lists {len(seen)} GPU(s) but {device.backend} sees none: training on CPU, {cores} "
                "(install the GPU wheels: `make install-plan` or `pip install 'effnet-studio[gpu]'`)")
    return f"no GPU found: training on CPU, {cores}"


# ----------------------------------------------------------------------------------------------- quiet logs
@contextlib.contextmanager
def _stderr_to_file() -> Iterator[None]:
    """Point file descriptor 2 at a temporary file for the block; replay what it caught when the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            os.write(2, sink.read())  # the library's own account of why its import failed
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """Runs another loader's module code with stderr caught, then steps aside."""

    def __init__(self, loader: Any):
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with _stderr_to_file():
            self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader  # later readers see the real loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class QuietImports(importlib.abc.MetaPathFinder):
    """A finder that wraps the loader of NOISY_IMPORTS in _QuietLoader, whoever imports them (keras imports
    tensorflow), so commands that never need TensorFlow never pay for importing it."""

    def __init__(self, names: tuple[str, ...] = NOISY_IMPORTS):
        self.names, self.busy = set(names), False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.names or self.busy:
            return None
        self.busy = True  # importlib.util.find_spec below asks every finder again, this one included
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy = False
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


@contextlib.contextmanager
def quiet_logs(verbose: bool = False) -> Iterator[None]:
    """For one command: library logs hidden (or all shown with `verbose`); everything is put back afterwards,
    so calling `core.cli.main` in a test leaves the process as it was."""
    saved_env = {key: os.environ.get(key) for key in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}
    finder = None
    # Read by TensorFlow's C++ side when it logs, so it works for anything logged after its import; 0 shows all.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
    if not verbose:
        os.environ["GRPC_VERBOSITY"] = "ERROR"  # multi-process training's gRPC chatter
        if not any(name in sys.modules for name in NOISY_IMPORTS):
            finder = QuietImports()
            sys.meta_path.insert(0, finder)
    try:
        with warnings.catch_warnings():
            if not verbose and not sys.warnoptions:  # -W or PYTHONWARNINGS given by the user still apply
                warnings.simplefilter("ignore")
            disabled = logging.root.manager.disable
            if not verbose:
                # Library records below ERROR (TensorFlow's and absl's WARNING lines, tf2onnx's INFO): absl resets
                # its logger's level when it is imported, so the threshold is set for all loggers at once.
                logging.disable(logging.WARNING)
            try:
                yield
            finally:
                logging.disable(disabled)
    finally:
        if finder is not None and finder in sys.meta_path:
            sys.meta_path.remove(finder)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
