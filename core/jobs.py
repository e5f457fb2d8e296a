"""Training jobs: start the trainer as a child process, watch its run folder, ask it to stop.

The UI never trains in its own process (Streamlit reruns scripts and a reload starts a new session), so a job is
`python -m core --models-dir DIR train --config DIR/ID/config.json --run-id ID` with its output in the run
folder's `train.log`. Everything a page shows comes from the run folder, which any tab or a restarted server can
read. One job at a time per models folder: two trainings would share one GPU (or two CPU cores) and both crawl.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core import StudioError
from core.config import TrainConfig
from core.runs import FINAL_STATES, RunDir, list_runs, new_run_id, read_json, write_json_atomic

LOG = "train.log"
JOB = "job.json"  # the launcher's record: child pid, command line, start time
ACTIVE_STATES = ("queued", "running")
REPO_ROOT = Path(__file__).resolve().parent.parent
# Child processes started by this server process, kept so that finished ones are reaped (no zombies).
_children: dict[int, subprocess.Popen] = {}


def start_training(config: TrainConfig, models_dir: Path, run_name: str = "",
                   python: str | None = None) -> RunDir:
    """Write the config and a queued status into a new run folder, then launch the trainer on it."""
    config.validate()
    busy = active_run(models_dir)
    if busy is not None:
        raise StudioError(f"Run {busy.run_id} is still {run_state(busy)['state']}; stop it or wait for it to "
                          "finish before starting another (one training at a time).")
    run = RunDir.create(models_dir, new_run_id())
    values = config.to_dict()
    if run_name:
        values["run_name"] = run_name
    run.write_config(values)
    run.set_status("queued", message="Starting the trainer", created=time.time())
    command = [python or sys.executable, "-m", "core", "--models-dir", str(Path(models_dir).resolve()),
               "train", "--config", str(run.file("config.json").resolve()), "--run-id", run.run_id]
    with open(run.file(LOG), "ab") as log:
        # A new session: the trainer outlives a Streamlit restart and gets no Ctrl-C meant for the server.
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, env=_child_env())
    _children[child.pid] = child
    write_json_atomic(run.file(JOB), {"pid": child.pid, "command": command, "started": time.time()})
    return run


def _child_env() -> dict[str, str]:
    """The server's environment, with the repository importable and Python output unbuffered (live log)."""
    env = dict(os.environ)
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
    job = read_json(run.file(JOB), {}) or {}
    return int(job["pid"]) if job.get("pid") else None


def process_alive(pid: int | None) -> bool:
    """True while a process with this id exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) said it exists
    return state not in ("Z", "X")


def run_state(run: RunDir) -> dict[str, Any]:
    """The run's status, with a job whose process is gone reported as failed at once (not after a timeout)."""
    reap()
    status = run.effective_status()
    if status.get("state") in ACTIVE_STATES:
        pid = job_pid(run)
        if pid is not None and not process_alive(pid):
            status = run.effective_status()  # the trainer may have written its final state just now
            if status.get("state") in ACTIVE_STATES:
                status["state"] = "failed"
                status["error"] = status.get("error") or (
                    "The training process ended without reporting a result. The end of its log:\n"
                    + log_tail(run, 15))
    return status


def active_run(models_dir: Path) -> RunDir | None:
    """The run that is queued or training now in this models folder, if any."""
    for run in list_runs(models_dir):
        if run_state(run).get("state") in ACTIVE_STATES:
            return run
    return None


def stop(run: RunDir) -> None:
    """Ask the trainer to stop at its next batch, keeping the best model so far."""
    if run_state(run).get("state") in FINAL_STATES:
        return
    run.request_stop()


def log_tail(run: RunDir, lines: int = 30) -> str:
    """The last lines of the trainer's log, for showing why a run failed."""
    try:
        text = run.file(LOG).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log was written)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def progress(status: dict[str, Any], config: dict[str, Any]) -> tuple[float, str]:
    """A 0..1 fraction for the progress bar and a one-line caption (phase, epoch, images/s, ETA)."""
    state, phase = status.get("state", "queued"), status.get("phase") or ""
    if state in FINAL_STATES:
        return 1.0, {"succeeded": "Finished", "stopped": "Stopped; the best model is kept",
                     "failed": "Failed"}[state]
    if state == "queued":
        return 0.0, status.get("message") or "Starting the trainer"
    head, finetune = int(config.get("head_epochs") or 0), int(config.get("finetune_epochs") or 0)
    two_phases = head > 0 and finetune > 0
    if phase in ("head", "finetune"):
        # With two phases the head fills the first half of the bar and fine-tuning the second.
        if phase == "head":
            start, share = 0.0, (0.5 if two_phases else 1.0)
            label = "Phase 1 of 2: training the head" if two_phases else "Training the head"
        else:
            start, share = (0.5, 0.5) if two_phases else (0.0, 1.0)
            label = "Phase 2 of 2: fine-tuning the top layers" if two_phases else "Fine-tuning"
        if status.get("message"):  # e.g. "Computing frozen-base features", before the first epoch
            return start, f"{label}: {status['message']}"
        phase_epochs = int(status.get("phase_epochs") or (head if phase == "head" else finetune) or 1)
        phase_epoch = int(status.get("phase_epoch") or 1)
        step, steps = int(status.get("step") or 0), int(status.get("steps") or 0)
        within = ((phase_epoch - 1) + (step / steps if steps else 0.0)) / max(phase_epochs, 1)
        parts = [label, f"epoch {phase_epoch} of at most {phase_epochs}"]
        if steps:
            parts.append(f"step {step}/{steps}")
        if status.get("images_per_s"):
            parts.append(f"{float(status['images_per_s']):.0f} images/s")
        if status.get("eta_seconds") is not None:
            parts.append(f"about {format_seconds(float(status['eta_seconds']))} left")
        return min(1.0, start + share * within), " · ".join(parts)
    if phase == "evaluating":
        return 0.99, status.get("message") or "Evaluating the best model"
    return 0.0, status.get("message") or "Preparing data"


def format_seconds(seconds: float) -> str:
    """75 -> '1:15'; 3725 -> '1:02:05'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# Measured on a 2-core CPU with flowers-mini (400 photos), Lite0, head features cached: 160 px head-only took
# 63 s end to end at 85% test accuracy; 192 px took 86 s at 84%; adding 3 fine-tune epochs at 160 px took 155 s
# at 81%. So a CPU gets the head-only recipe at 160 px; a GPU gets the full two-phase recipe at native size.
CPU_QUICK_SETTINGS = {"image_size": 160, "finetune_epochs": 0}


def recommended_settings(accelerator: str) -> dict[str, Any]:
    """Training defaults for the UI: quick on a CPU, the full recipe on a GPU."""
    if accelerator == "gpu":
        defaults = TrainConfig()
        return {"image_size": None, "finetune_epochs": defaults.finetune_epochs}
    return dict(CPU_QUICK_SETTINGS)
