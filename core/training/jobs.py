"""Training jobs: start the trainer as a child process, watch its run folder, ask it to stop.

The UI never trains in its own process (Streamlit reruns scripts and a reload starts a new session), so a job is
`python -m core --models-dir DIR train --config DIR/ID/config.json --run-id ID` with its output in the run
folder's `train.log`. Everything a page shows comes from the run folder, which any tab or a restarted server can
read. One job at a time per models folder: two trainings would share one GPU (or two CPU cores) and both crawl.

When the machine's one training slot is taken (by any session), Start does not refuse: the run joins a queue (one
file per waiting run in `<lock folder>/queue/`, oldest first) with its place in line and an estimate of when it
starts. Whoever frees the slot starts the next one: the trainer process as it ends, or any page that looks
(`dispatch`), so the queue moves even when the server restarted or a trainer was killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator

from core import StudioError
from core.base import progress as core_progress
from core.base.config import TrainConfig
from core.base.cpushare import environment_for, share_beside_server
from core.base.runs import (FINAL_STATES, HEARTBEAT_TIMEOUT_SECONDS, RunDir, list_runs, new_run_id, read_json,
                       write_json_atomic)

LOG = "train.log"
JOB = "job.json"  # the launcher's record: child pid, command line, start time
START_LOCK = ".start.lock"  # held while a Start checks for a busy slot and launches (flock)
SLOT = "active-job.json"  # in the lock folder: the one run that may train now, whichever workspace it is in
QUEUE = "queue"  # in the lock folder: one JSON file per run waiting for the slot, named so that oldest sorts first
HISTORY = "history.jsonl"  # in the queue folder: runs the queue started, to estimate how long the next ones take
QUEUE_ENV = "STUDIO_QUEUE_DIR"  # tells a trainer started from the queue where to hand the slot on when it ends
TYPICAL_RUN_SECONDS = 300.0  # the wait per run ahead before any run has finished here
ACTIVE_STATES = ("queued", "running")
STARTING_SHARE = 0.05  # of the progress bar, for starting the trainer process before its first phase
REPO_ROOT = Path(__file__).resolve().parents[2]
# Child processes started by this server process, kept so that finished ones are reaped (no zombies).
_children: dict[int, subprocess.Popen] = {}


def start_training(config: TrainConfig, models_dir: Path, run_name: str = "", python: str | None = None,
                   lock_dir: Path | None = None, after_own: bool = False) -> RunDir:
    """Write the config and a queued status into a new run folder, then launch the trainer on it.

    `lock_dir` is shared by everyone who must take turns (the app passes the root workspace, so two sessions'
    runs never train at once); the check and the launch happen under one file lock, so two Start clicks
    arriving together start one job. `after_own`: a run of this folder that is still queued or training does
    not refuse the start; this one waits in the queue behind it (the second run of an experiment pair,
    core.training.pairs).
    """
    from core.training.hosting import check_training_limits
    from core.base.workspace import workspace_of

    config.validate()
    check_training_limits(config)  # hosted mode: what one visitor may ask for
    models_dir = Path(models_dir)
    visitor = workspace_of(models_dir)
    if visitor is not None:
        visitor.check_quota("a training run")
    lock_dir = Path(lock_dir or models_dir)
    with start_lock(lock_dir):
        busy = active_run(models_dir)
        if busy is not None and not after_own:
            raise StudioError(f"Run {busy.run_id} is still {run_state(busy)['state']}; stop it or wait for it to "
                              "finish before starting another (one training at a time).")
        if busy is not None or slot_busy(lock_dir) or _queue_entries(lock_dir):  # first come, first served
            return _enqueue(config, models_dir, run_name, python, lock_dir)
        run = _create_run(config, models_dir, run_name)
        _start_trainer(run, models_dir, python, lock_dir)
    return run


@contextlib.contextmanager
def start_lock(folder: Path, timeout: float = 30.0) -> Iterator[None]:
    """An exclusive lock on `folder`/.start.lock (fcntl.flock: between threads and between processes)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / START_LOCK, "a+b") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StudioError("Another Start is still being handled; try again in a moment.") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def slot_busy(lock_dir: Path) -> bool:
    """True while the job recorded in `lock_dir`'s slot (any session's) is still queued or training."""
    slot = _read_json_quietly(Path(lock_dir) / SLOT)
    if not slot.get("run"):
        return False
    run = RunDir(slot["run"])
    if (run.path / "config.json").is_file():
        return run_state(run).get("state") in ACTIVE_STATES
    return process_alive(slot.get("pid"), slot.get("pid_start"))  # its folder was deleted under it


def _create_run(config: TrainConfig, models_dir: Path, run_name: str, **status: Any) -> RunDir:
    """A new run folder with its config and a queued status; on a disk or permission error nothing is left."""
    run: RunDir | None = None
    try:
        run = RunDir.create(models_dir, new_run_id())
        values = config.to_dict()
        if run_name:
            values["run_name"] = run_name
        run.write_config(values)
        run.set_status("queued", **{"message": "Starting the trainer", "created": time.time(), **status})
    except OSError as err:
        if run is not None:
            shutil.rmtree(run.path, ignore_errors=True)
        raise StudioError(f"Could not start a run in {Path(models_dir).name} ({err.strerror or type(err).__name__}); "
                          "earlier runs are untouched. Free some disk space or check the folder's permissions.") \
            from None
    return run


def _start_trainer(run: RunDir, models_dir: Path, python: str | None, lock_dir: Path) -> None:
    """Launch the trainer on a run folder and give it the slot (the caller holds the start lock). On a disk or
    permission error the run is removed, as if Start had never been clicked."""
    child: subprocess.Popen | None = None
    try:
        command = [python or sys.executable, "-m", "core", "--models-dir", str(Path(models_dir).resolve()),
                   "train", "--config", str(run.file("config.json").resolve()), "--run-id", run.run_id]
        with open(run.file(LOG), "ab") as log:
            # A new session: the trainer outlives a Streamlit restart and gets no Ctrl-C meant for the server.
            child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=_child_env(lock_dir))
        _children[child.pid] = child
        write_json_atomic(run.file(JOB), {"pid": child.pid, "pid_start": process_start_ticks(child.pid),
                                          "command": command, "started": time.time()})
        write_json_atomic(Path(lock_dir) / SLOT, {"run": str(run.path.resolve()), **read_json(run.file(JOB), {})})
    except OSError as err:
        if child is not None:
            child.kill()
            child.wait()
        shutil.rmtree(run.path, ignore_errors=True)
        raise StudioError(f"Could not start a run in {Path(models_dir).name} ({err.strerror or type(err).__name__}); "
                          "earlier runs are untouched. Free some disk space or check the folder's permissions.") \
            from None


# ----------------------------------------------------------------------------------------- the queue
def _queue_dir(lock_dir: Path) -> Path:
    return Path(lock_dir) / QUEUE


def _queue_entries(lock_dir: Path) -> list[Path]:
    """The waiting runs' queue files, oldest first."""
    folder = _queue_dir(lock_dir)
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _enqueue(config: TrainConfig, models_dir: Path, run_name: str, python: str | None, lock_dir: Path) -> RunDir:
    """A run folder that waits for the slot, and its place at the end of the queue."""
    entry = _queue_dir(lock_dir) / f"{time.time_ns():020d}-{new_run_id()}.json"
    run = _create_run(config, models_dir, run_name, waiting=True, queue_entry=str(entry),
                      message="Waiting for the training slot")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(entry, {"run": str(run.path.resolve()), "models_dir": str(Path(models_dir).resolve()),
                                  "python": python, "enqueued": time.time()})
    except OSError as err:
        shutil.rmtree(run.path, ignore_errors=True)
        raise StudioError(f"Could not join the training queue ({err.strerror or type(err).__name__}); try again.") \
            from None
    return run


def dispatch(lock_dir: Path) -> RunDir | None:
    """Start the oldest waiting run if the slot is free (runs cancelled or deleted meanwhile are dropped from the
    queue); return it. Cheap when there is nothing to do, so any page may call it whenever it looks."""
    lock_dir = Path(lock_dir)
    if not _queue_entries(lock_dir):
        return None
    with start_lock(lock_dir):
        if slot_busy(lock_dir):
            return None
        for entry in _queue_entries(lock_dir):
            record = _read_json_quietly(entry)
            run = RunDir(record["run"]) if isinstance(record.get("run"), str) else None
            waiting = run is not None and run.file("config.json").is_file() and not run.stop_requested() \
                and _read_json_quietly(run.file("status.json")).get("waiting") is True
            if not waiting:
                entry.unlink(missing_ok=True)  # cancelled, deleted, or not ours to start
                continue
            run.set_status("queued", waiting=False, queue_entry=None, message="Starting the trainer",
                           created=time.time())
            try:
                _start_trainer(run, Path(record.get("models_dir") or run.path.parent), record.get("python"),
                               lock_dir)
            finally:
                entry.unlink(missing_ok=True)
            _append_history(lock_dir, run)
            return run
    return None


def _append_history(lock_dir: Path, run: RunDir) -> None:
    try:
        with open(_queue_dir(lock_dir) / HISTORY, "a", encoding="utf-8") as history:
            history.write(json.dumps({"run": str(run.path.resolve())}) + "\n")
    except OSError:
        pass  # only the wait estimate is poorer without it


def typical_run_seconds(lock_dir: Path, last: int = 10) -> float:
    """How long the last runs the queue started took (median), capped by the hosted time limit."""
    from core.training.hosting import run_time_limit_seconds

    durations = []
    try:
        lines = (_queue_dir(lock_dir) / HISTORY).read_text(encoding="utf-8").splitlines()[-last:]
    except OSError:
        lines = []
    for line in lines:
        try:
            status = _read_json_quietly(Path(json.loads(line)["run"]) / "status.json")
            started, finished = float(status["started"]), float(status["finished"])
        except (ValueError, KeyError, TypeError):
            continue
        if finished > started:
            durations.append(finished - started)
    typical = sorted(durations)[len(durations) // 2] if durations else TYPICAL_RUN_SECONDS
    limit = run_time_limit_seconds()
    return min(typical, limit) if limit else typical


@dataclass
class QueuePlace:
    """Where a waiting run stands: 1 = next; the seconds until it is expected to start."""

    position: int
    waiting_ahead: int
    eta_seconds: float

    def describe(self) -> str:
        ordinal = {1: "next", 2: "2nd in line", 3: "3rd in line"}.get(self.position, f"{self.position}th in line")
        return f"Waiting for the training slot: {ordinal}, starts in about " \
               f"{core_progress.format_seconds(max(self.eta_seconds, 1.0))}"


def queue_place(run: RunDir, lock_dir: Path) -> QueuePlace | None:
    """The run's place in the queue and an estimate of its start (the slot's remaining time plus a typical run
    for each run ahead), or None when it is not waiting."""
    mine = str(run.path.resolve())
    entries = _queue_entries(lock_dir)
    runs = [_read_json_quietly(e).get("run") for e in entries]
    if mine not in runs:
        return None
    ahead = runs.index(mine)
    typical = typical_run_seconds(lock_dir)
    slot = _read_json_quietly(Path(lock_dir) / SLOT)
    current = 0.0
    if slot_busy(lock_dir) and isinstance(slot.get("run"), str):
        status = _read_json_quietly(Path(slot["run"]) / "status.json")
        eta = status.get("eta_seconds")
        current = float(eta) if isinstance(eta, (int, float)) and eta >= 0 else typical / 2
    return QueuePlace(ahead + 1, ahead, current + ahead * typical)


def leave_queue(run: RunDir) -> bool:
    """Take a waiting run out of the queue (its Stop): it ends as stopped without having started."""
    status = _read_json_quietly(run.file("status.json"))
    if status.get("waiting") is not True:
        return False
    entry = status.get("queue_entry")
    if isinstance(entry, str) and entry.endswith(".json") and Path(entry).parent.name == QUEUE:
        Path(entry).unlink(missing_ok=True)
    run.set_status("stopped", waiting=False, queue_entry=None, finished=time.time(), phase="done", fraction=1.0,
                   message="Left the queue before it started; nothing was trained.")
    return True


def _child_env(lock_dir: Path | None = None) -> dict[str, str]:
    """The server's environment, with the repository importable and Python output unbuffered (live log), the
    queue the trainer hands the slot on to when it ends, and its share of the machine beside the server: a lower
    priority and every core but one (core.base.cpushare; a STUDIO_TRAINER_* set by hand wins)."""
    env = {**environment_for(share_beside_server()), **os.environ}
    if lock_dir is not None:
        env[QUEUE_ENV] = str(Path(lock_dir).resolve())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def reap() -> None:
    """Collect the exit status of finished children so they do not linger as zombies."""
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            del _children[pid]


def job_pid(run: RunDir) -> int | None:
    """The trainer's process id as recorded by the launcher (None for runs started elsewhere, e.g. the CLI)."""
    job = _read_json_quietly(run.file(JOB))
    return int(job["pid"]) if job.get("pid") else None


def _read_json_quietly(path: Path) -> dict[str, Any]:
    """A small JSON record, {} when missing or damaged (a reader must never crash on a half-deleted run)."""
    try:
        value = read_json(path, {})
    except (ValueError, OSError):
        return {}
    return value if isinstance(value, dict) else {}


def process_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot, from /proc), to tell it from a later one with its pid."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int | None, start_ticks: int | None = None) -> bool:
    """True while a process with this id exists, is not a zombie, and (if known) started when ours did."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError, OverflowError):
        return False
    except PermissionError:
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) said it exists
    if fields[0] in ("Z", "X"):
        return False
    # After a reboot (or a long time) the pid may belong to another program: then ours is gone.
    try:
        return start_ticks is None or not fields[19:20] or int(fields[19]) == int(start_ticks)
    except (TypeError, ValueError, OverflowError):  # a damaged job.json: its start time can't vouch for the pid
        return False


def heartbeat_timeout() -> float:
    """Seconds of silence after which a run whose trainer is gone is reported ended ($STUDIO_HEARTBEAT_TIMEOUT)."""
    try:
        return float(os.environ.get("STUDIO_HEARTBEAT_TIMEOUT") or HEARTBEAT_TIMEOUT_SECONDS)
    except ValueError:
        return HEARTBEAT_TIMEOUT_SECONDS


def run_state(run: RunDir) -> dict[str, Any]:
    """The run's status as a person should see it: a run whose trainer is gone is never shown as running.

    With the launcher's record (job.json) a dead trainer is noticed at once; for runs started elsewhere (the CLI)
    after the heartbeat timeout. A vanished trainer whose run was asked to stop reads 'stopped', else 'failed';
    either way the best model saved so far stays usable. A live trainer that has gone silent is flagged stalled.
    """
    reap()
    try:
        status = run.effective_status()
    except (ValueError, OSError) as err:  # status.json damaged or unreadable
        return {"state": "failed", "error": f"The run's status file cannot be read ({err})."}
    if status.get("state") not in ACTIVE_STATES:
        return status
    if status.get("waiting") is True:  # in the queue: no trainer to watch, only its place in line
        entry = status.get("queue_entry")
        if isinstance(entry, str) and Path(entry).is_file():
            return status
        status = run.effective_status()  # dispatch may have started it just now
        if status.get("waiting") is True:
            return {**status, "state": "failed", "error": "The run left the training queue without being started "
                                                          "(the queue was cleared); start it again."}
    job = _read_json_quietly(run.file(JOB))
    age = time.time() - float(status.get("heartbeat") or 0)
    if job.get("pid"):
        gone = not process_alive(job["pid"], job.get("pid_start"))
    else:
        gone = age > heartbeat_timeout() and not process_alive(status.get("pid"))
    if gone:
        status = run.effective_status()  # the trainer may have written its final state just now
        if status.get("state") in ACTIVE_STATES:
            return _ended(run, status)
    elif age > heartbeat_timeout():
        status["stalled"] = (f"No heartbeat from the trainer for {age:.0f} s although its process is alive; it may "
                             "be stuck. Stop it, or wait.")
    return status


def _ended(run: RunDir, status: dict[str, Any]) -> dict[str, Any]:
    """The state of a run whose trainer vanished without writing a final state."""
    kept = " The best model saved so far is kept and can be evaluated and used." if run.has_model() else ""
    if run.stop_requested():
        return {**status, "state": "stopped", "message": "The trainer ended after a stop request." + kept}
    return {**status, "state": "failed",
            "error": status.get("error") or ("The training process ended without reporting a result (killed, "
                                             "out of memory, or the server restarted)." + kept
                                             + " The end of its log:\n" + log_tail(run, 15))}


def active_run(models_dir: Path) -> RunDir | None:
    """The run that is queued or training now in this models folder, if any."""
    for run in list_runs(models_dir):
        if run_state(run).get("state") in ACTIVE_STATES:
            return run
    return None


def stop(run: RunDir) -> None:
    """Ask the trainer to stop at its next batch, keeping the best model so far; a run still waiting in the queue
    leaves it at once."""
    if run_state(run).get("state") in FINAL_STATES:
        return
    if leave_queue(run):
        return
    run.request_stop()


def log_tail(run: RunDir, lines: int = 30) -> str:
    """The last lines of the trainer's log, for showing why a run failed."""
    try:
        text = run.file(LOG).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log was written)"
    return redact_paths("\n".join(text.rstrip().splitlines()[-lines:]))


def redact_paths(text: str) -> str:
    """A log for a visitor's eyes: the server's folders (the app, its workspace, the Python installation) named
    by role instead of by path, so a traceback tells what failed without telling where the server keeps things."""
    import sysconfig

    from core.base.workspace import workspace_dir

    roots = {str(REPO_ROOT): "<app>", str(workspace_dir()): "<workspace>",
             sysconfig.get_paths()["purelib"]: "<python>", sys.prefix: "<python>", sys.base_prefix: "<python>"}
    for root, name in sorted(roots.items(), key=lambda item: -len(item[0])):  # the longest (innermost) first
        text = text.replace(root, name)
    return text


def progress(status: dict[str, Any], config: dict[str, Any] | None = None) -> tuple[float, str]:
    """A 0..1 fraction for the progress bar and a one-line caption (step, phase, count, rate, ETA)."""
    state = status.get("state", "queued")
    if state in FINAL_STATES:
        return 1.0, {"succeeded": "Finished", "stopped": "Stopped", "failed": "Failed"}[state]
    if state == "queued" or not status.get("phase"):
        # Starting Python and TensorFlow, then checking the dataset, takes seconds to tens of seconds before the
        # first phase reports: the bar creeps through the first STARTING_SHARE meanwhile (a percent every ~8 s;
        # the bar shows whole percents), so a watcher sees that something is going on.
        waited = max(0.0, time.time() - float(status.get("created") or status.get("heartbeat") or time.time()))
        message = status.get("message") or "Starting the trainer"
        return min(STARTING_SHARE, 0.0012 * waited), f"{message} · {core_progress.format_seconds(waited)}"
    return STARTING_SHARE + (1 - STARTING_SHARE) * float(status.get("fraction") or 0.0), core_progress.caption(status)


format_seconds = core_progress.format_seconds


# ----------------------------------------------------------------------------------------- one view of a run
@dataclass(frozen=True)
class ModelVerdict:
    """Whether a run's saved model may be offered by default, and why (not)."""

    usable: bool
    reason: str
    accuracy: float | None = None
    baseline: float | None = None


def majority_baseline(evaluation: dict[str, Any]) -> tuple[float, str]:
    """Accuracy of always answering the evaluated split's most common class, and that class."""
    matrix = evaluation.get("confusion_matrix") or []
    classes = evaluation.get("classes") or []
    supports = [sum(row) for row in matrix]
    total = sum(supports)
    if not total:
        return 0.0, ""
    best = max(range(len(supports)), key=supports.__getitem__)
    return supports[best] / total, (classes[best] if best < len(classes) else str(best))


def model_verdict(run: RunDir) -> ModelVerdict:
    """A model is offered by default only if it was evaluated and beats always answering the majority class."""
    if not run.has_model():
        return ModelVerdict(False, "No model was saved: the run ended before its head was trained.")
    try:
        evaluation = run.read_evaluation()
    except (ValueError, OSError) as err:  # core.base.runs.RunDamaged names the run and what is wrong with its report
        return ModelVerdict(False, str(err))
    if not evaluation or "accuracy" not in evaluation:
        return ModelVerdict(False, "Its best model is kept but was not evaluated (the run ended first); evaluate "
                                   "it on the Evaluate page to use it by default.")
    accuracy = float(evaluation["accuracy"])
    baseline, majority = majority_baseline(evaluation)
    if accuracy <= baseline:
        return ModelVerdict(False, f"Its model scores {accuracy:.1%} on the {evaluation.get('split')} split, no "
                                   f"better than always answering '{majority}' ({baseline:.1%}).",
                            accuracy, baseline)
    return ModelVerdict(True, f"{accuracy:.1%} on the {evaluation.get('split')} split (always answering the "
                              f"commonest class: {baseline:.1%}).", accuracy, baseline)


@dataclass(frozen=True)
class RunView:
    """Everything a page shows about a run's state, from one reading of its folder.

    state: queued | running | stopping (a stop was asked, the trainer has not ended yet) | stopped | failed |
    succeeded. The Train page, the sidebar, Compare and Classify all read this, so they agree at every refresh.
    """

    run_id: str
    state: str
    fraction: float
    caption: str
    status: dict[str, Any]
    model: ModelVerdict
    error: str | None = None
    stalled: str | None = None
    has_model: bool = False
    queue: QueuePlace | None = None  # a run waiting for the training slot: its place in line

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running", "stopping")

    @property
    def label(self) -> str:
        """The state in a word or two, as the sidebar shows it ("waiting for the slot" for a queued run in line)."""
        return "waiting for the slot" if self.queue is not None else self.state

    @property
    def headline(self) -> str:
        """One sentence for the run as a whole."""
        if self.state == "queued" and self.queue is not None:
            return self.queue.describe() + "."
        if self.state == "queued":
            return "Starting the trainer…"
        if self.state == "running":
            return f"Training: {self.caption}"
        if self.state == "stopping":
            kept = "keeps the best model saved so far" if self.has_model else \
                "no model has been trained yet, so none will be kept"
            return f"Stopping: the trainer ends within seconds; it {kept}."
        if self.state == "failed":
            return f"The run failed: {self.error or 'no reason was recorded.'}"
        where = self.status.get("stopped_in")
        label = core_progress.LABELS.get(where or "", where or "")
        if self.state == "stopped":
            prefix = f"Stopped during '{label}'." if label else "Stopped."
            return f"{prefix} {self.model.reason if not self.model.usable else 'Its model: ' + self.model.reason}"
        return f"Training finished. {'Its model: ' + self.model.reason if self.model.usable else self.model.reason}"


def run_view(run: RunDir) -> RunView:
    """The run's state as every page shows it (see RunView)."""
    status = run_state(run)
    queue = None
    entry = status.get("queue_entry")
    if status.get("waiting") is True and isinstance(entry, str):
        lock_dir = Path(entry).parent.parent
        with contextlib.suppress(StudioError, OSError):
            dispatch(lock_dir)  # whoever looks moves the queue (a trainer that died cannot hand the slot on)
        status = run_state(run)
        queue = queue_place(run, lock_dir) if status.get("waiting") is True else None
    state = status.get("state", "queued")
    if state in ACTIVE_STATES and run.stop_requested():
        state = "stopping"
    try:
        config = run.read_config()
    except ValueError:  # a damaged config.json (core.base.runs.RunDamaged) must not hide the run's state
        config = {}
    fraction, caption = progress({**status, "state": "running" if state == "stopping" else state}, config)
    if queue is not None:
        fraction, caption = 0.0, queue.describe()
    verdict = model_verdict(run) if state not in ACTIVE_STATES and state != "stopping" else \
        ModelVerdict(False, "The run is still training.")
    return RunView(run.run_id, state, fraction, caption, status, verdict,
                   error=status.get("error") if state == "failed" else None, stalled=status.get("stalled"),
                   has_model=run.has_model(), queue=queue)
