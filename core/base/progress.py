"""Training as a list of phases, each with done/total, a rate and an ETA, written into the run's status.

The trainer announces its plan (which phases, how much work each), then reports progress as it goes; this module
turns that into what a watcher shows: the phase, the overall fraction, images per second and time left. Time
left uses each phase's measured rate once it has one, and until then a rate scaled from a measured phase (a
fine-tuning image costs about three frozen feature passes), else a prior. The overall fraction is time spent over
time spent plus time left, and never goes back.

Stop requests are asked here too, so every phase honours them at the same points as it reports progress.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

PREPARE, DECODE, FEATURES, HEAD_FIT, HEAD_EPOCHS, FINETUNE, SAVE, EVALUATE = (
    "prepare", "decode", "features", "head_fit", "head", "finetune", "save", "evaluate")
SCRATCH = "scratch"  # a from-scratch backbone's one phase (core.training.train)
LABELS = {
    PREPARE: "Loading the backbone",
    DECODE: "Decoding images",
    FEATURES: "Computing frozen-base features",
    HEAD_FIT: "Fitting the head",
    HEAD_EPOCHS: "Training the head",
    FINETUNE: "Fine-tuning the top layers",
    SCRATCH: "Training the whole network from scratch",
    SAVE: "Saving the best model",
    EVALUATE: "Evaluating the best model",
}
# Seconds per unit before anything is measured (2-core CPU, Lite0 at 288 px); measured rates replace them.
PRIOR_SECONDS = {PREPARE: 6.0, DECODE: 0.006, FEATURES: 0.03, HEAD_FIT: 3.0, HEAD_EPOCHS: 0.03, FINETUNE: 0.1,
                 SAVE: 2.0, EVALUATE: 0.03}
WRITE_INTERVAL = 0.5  # seconds between status writes within a phase (phase changes are written at once)
THROTTLE_ENV = "STUDIO_TRAIN_THROTTLE"  # tests and demos: seconds each phase waits at its start, to watch it


@dataclass
class Phase:
    """One step of the plan: `total` units of work (images, fits, batches), each about `seconds_per_unit`."""

    name: str
    total: float
    unit: str = "images"
    seconds_per_unit: float | None = None  # prior; None = PRIOR_SECONDS[name]
    scale_from: str | None = None  # once that phase has a measured rate, this one costs `factor` times it
    factor: float = 1.0
    done: float = 0.0
    started: float | None = None
    ended: float | None = None
    # The first report of work done: the rate is measured from there on, because the first batch also pays
    # one-time costs (tracing, compiling, warming caches) that would make every later estimate too long.
    first_report: tuple[float, float] | None = None
    # Seconds of other one-time costs inside the phase (tracing the validation step at the first epoch's end), left
    # out of the measured rate for the same reason.
    one_time_seconds: float = 0.0

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)

    def measured_seconds_per_unit(self, now: float) -> float | None:
        if self.started is None or self.done <= 0:
            return None
        end = self.ended or now
        if self.first_report is not None and self.done > self.first_report[1] and self.ended is None:
            spent = max(end - self.first_report[0] - self.one_time_seconds, 0.0)
            return spent / (self.done - self.first_report[1])
        return (end - self.started) / self.done


@dataclass
class Tracker:
    """Follows the plan, writes progress through `write(fields)`, and answers whether to stop."""

    phases: list[Phase]
    write: Callable[[dict[str, Any]], None]
    should_stop: Callable[[], bool] = lambda: False
    clock: Callable[[], float] = time.monotonic
    throttle: float = field(default_factory=lambda: float(os.environ.get(THROTTLE_ENV) or 0.0))
    current: Phase | None = None
    last_write: float = float("-inf")
    best_fraction: float = 0.0
    fraction_time: float | None = None
    stopped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_finish: Callable[[Phase], None] | None = None  # e.g. log the phase's time and rate
    ticker_closed: bool = False  # once set (under lock) no ticker write lands, so none can follow the final state

    def phase(self, name: str) -> Phase:
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(p.name == name for p in self.phases)

    def start(self, name: str, total: float | None = None, **fields: Any) -> Phase:
        """Enter a phase (ending the previous one); its first report is written at once."""
        if self.current is not None and self.current.ended is None:
            self.current.ended = self.clock()
        phase = self.phase(name)
        if total is not None:
            phase.total = total
        phase.started, phase.done, phase.first_report, phase.one_time_seconds = self.clock(), 0.0, None, 0.0
        self.current = phase
        self._write(force=True, **{"message": "", "phase_epochs": None, "phase_epoch": None, **fields})
        if self.throttle and not self.stopped:  # tests and demos: hold the phase on screen before its work
            time.sleep(self.throttle)
        return phase

    def advance(self, done: float, force: bool = False, **fields: Any) -> bool:
        """Report `done` units of the current phase; returns False once a stop was requested."""
        phase = self.current
        if phase is not None:
            phase.done = min(float(done), phase.total) if phase.total else float(done)
            if phase.first_report is None and phase.done > 0:
                phase.first_report = (self.clock(), phase.done)
        self._write(force=force, **fields)
        return not self.stop_requested()

    def refresh(self) -> None:
        """Rewrite the time-based fields (fraction, ETA) without new work done: called by a ticker thread so
        the bar moves even inside one long call (building a model, saving it)."""
        self._write(force=True, ticker=True)

    def finish(self, name: str) -> None:
        """Mark a phase done (also when it ended early, e.g. early stopping): its remaining work is dropped."""
        phase = self.phase(name)
        if phase.started is None:
            phase.started = self.clock()
        phase.ended = self.clock()
        phase.total = phase.done = max(phase.done, 0.0) or phase.total
        self._write(force=True)
        if self.on_finish is not None:
            self.on_finish(phase)

    def stop_requested(self) -> bool:
        if not self.stopped and self.should_stop():
            self.stopped = True
        return self.stopped

    # ------------------------------------------------------------------------------------------ estimates
    def seconds_per_unit(self, phase: Phase, now: float) -> float:
        measured = phase.measured_seconds_per_unit(now)
        if measured is not None and phase.done >= min(phase.total, 1.0):
            return measured
        if phase.scale_from and self.has(phase.scale_from):
            source = self.phase(phase.scale_from).measured_seconds_per_unit(now)
            if source is not None:
                return source * phase.factor
        return phase.seconds_per_unit if phase.seconds_per_unit is not None else PRIOR_SECONDS.get(phase.name, 1.0)

    def phase_eta(self, phase: Phase, now: float) -> float:
        if phase.ended is not None:
            return 0.0
        left = max(0.0, phase.total - phase.done) * self.seconds_per_unit(phase, now)
        if phase.started is not None and phase.done <= 0:
            # No unit done yet, so no rate: the time already spent in the phase comes off the estimate (a
            # long first step must not keep saying "about 0:06 left"), down to a second.
            left = max(1.0, left - (now - phase.started))
        return left

    def eta(self, now: float | None = None) -> float:
        """Seconds left for the current phase and every later one."""
        now = self.clock() if now is None else now
        return sum(self.phase_eta(p, now) for p in self.phases if p.ended is None)

    def elapsed(self, now: float) -> float:
        return sum(((p.ended or now) - p.started) for p in self.phases if p.started is not None)

    def fraction(self, now: float | None = None) -> float:
        """The bar's position: the first time, time spent / (time spent + time left); after that each moment
        moves it through the part still to go in proportion to the time passed over the time left. So it never
        goes back, never stands still while time passes (even when an estimate has just grown), and when the
        estimates hold it moves like time spent / total."""
        now = self.clock() if now is None else now
        left = self.eta(now)
        if self.fraction_time is None:
            spent = self.elapsed(now)
            value = spent / (spent + left) if spent + left > 0 else 0.0
        else:
            passed = max(0.0, now - self.fraction_time)
            value = self.best_fraction + (1.0 - self.best_fraction) * (passed / (passed + left) if passed + left > 0
                                                                       else 0.0)
        self.fraction_time = now
        self.best_fraction = max(self.best_fraction, min(value, 0.999))
        return self.best_fraction

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """The progress fields of status.json."""
        now = self.clock() if now is None else now
        phase = self.current
        fields: dict[str, Any] = {"fraction": round(self.fraction(now), 4), "eta_seconds": round(self.eta(now), 1),
                                  "phases": [{"name": p.name, "label": p.label,
                                              "state": "done" if p.ended is not None else
                                              "running" if p is phase else "pending"} for p in self.phases]}
        if phase is not None:
            elapsed = now - (phase.started or now)
            fields.update({"phase": phase.name, "phase_label": phase.label, "done": phase.done,
                           "total": phase.total, "unit": phase.unit,
                           "rate": round(phase.done / elapsed, 3) if elapsed > 0 and phase.done else None,
                           "phase_eta_seconds": round(self.phase_eta(phase, now), 1),
                           "phase_index": self.phases.index(phase) + 1, "phase_count": len(self.phases)})
        return fields

    def _write(self, force: bool = False, ticker: bool = False, **fields: Any) -> None:
        with self.lock:  # the ticker thread and the trainer write through one writer, one at a time
            if ticker and self.ticker_closed:
                return
            now = self.clock()
            if not force and now - self.last_write < WRITE_INTERVAL:
                return
            self.last_write = now
            self.write({**self.snapshot(now), **fields})


class Ticker:
    """A daemon thread that refreshes a tracker's status every `interval` seconds until closed; `on_tick` (if
    given) runs first on each beat, e.g. to act on a stop while the main thread is inside one long call."""

    def __init__(self, tracker: Tracker, interval: float = 1.0, on_tick: Callable[[], None] | None = None):
        self.tracker, self.interval, self.on_tick = tracker, interval, on_tick
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="progress-ticker", daemon=True)

    def __enter__(self) -> "Ticker":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        with self.tracker.lock:
            self.tracker.ticker_closed = True
        self.done.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def _loop(self) -> None:
        while not self.done.wait(self.interval):
            if self.on_tick is not None:
                self.on_tick()
            if self.tracker.current is not None:
                try:
                    self.tracker.refresh()
                except OSError:  # a full disk fails the run in the main thread; the ticker just skips a beat
                    pass


def caption(status: dict[str, Any]) -> str:
    """One line for a progress bar: 'Step 3 of 6 · Computing frozen-base features · 640/2,000 images · 41
    images/s · about 1:05 left'."""
    parts = []
    if status.get("phase_index") and status.get("phase_count"):
        parts.append(f"Step {status['phase_index']} of {status['phase_count']}")
    parts.append(status.get("phase_label") or LABELS.get(status.get("phase") or "", "Preparing"))
    if status.get("phase_epochs"):
        parts.append(f"epoch {status.get('phase_epoch') or 1} of at most {status['phase_epochs']}")
    total, unit = status.get("total"), status.get("unit") or ""
    if total and float(total) > 1:  # "0/1 steps" says nothing
        parts.append(f"{_count(status.get('done') or 0)}/{_count(total)} {unit}".strip())
    if status.get("rate") and total and float(total) > 1:
        parts.append(f"{float(status['rate']):,.1f} {unit}/s" if float(status["rate"]) < 10
                     else f"{float(status['rate']):,.0f} {unit}/s")
    if status.get("eta_seconds") is not None:
        parts.append(f"about {format_seconds(float(status['eta_seconds']))} left")
    if status.get("message"):
        parts.append(str(status["message"]))
    return " · ".join(parts)


def _count(value: float) -> str:
    """Whole units done (a fit half done is not a fit done)."""
    return f"{int(float(value)):,}"


def format_seconds(seconds: float) -> str:
    """75 -> '1:15'; 3725 -> '1:02:05'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
