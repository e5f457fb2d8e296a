"""Run directories: the contract between the trainer process, the UI and the CLI.

Everything about one run lives in `models/<run_id>/` and is written atomically (temp file + rename) or
appended as whole lines, so any reader can rebuild the full state from the folder alone.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from core import StudioError

CONFIG = "config.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
CLASSES = "classes.json"
SPLIT = "split.json"
MODEL = "model.keras"
EVALUATION = "evaluation.json"
STOP_REQUEST = "STOP"

STATES = ("queued", "running", "succeeded", "failed", "stopped")
FINAL_STATES = ("succeeded", "failed", "stopped")
# A trainer writes a heartbeat at least this often; readers call a silent "running" run dead after the timeout.
HEARTBEAT_SECONDS = 5.0
HEARTBEAT_TIMEOUT_SECONDS = 120.0


def default_models_dir() -> Path:
    """Where runs live: $STUDIO_MODELS_DIR, else ./models next to the app."""
    return Path(os.environ.get("STUDIO_MODELS_DIR", Path(__file__).resolve().parent.parent / "models"))


def new_run_id(prefix: str = "run") -> str:
    """A sortable, unique, filesystem-safe run id such as `run-20261122-101500-3fa2`."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{secrets.token_hex(2)}"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so a reader sees either the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give run files the usual permissions
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=False, default=_json_default)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    """Make numpy scalars and paths JSON-serialisable."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file, returning `default` when it does not exist yet."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one whole line; a single write() of a short line is not interleaved with other appends."""
    line = json.dumps(record, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read complete lines only: a line still being written (no trailing newline) is ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.split("\n")[:-1]:
        if line.strip():
            records.append(json.loads(line))
    return records


class RunDir:
    """One run folder; the trainer writes through it, readers read through it."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @classmethod
    def create(cls, models_dir: Path | None = None, run_id: str | None = None) -> "RunDir":
        """Make a new, empty run folder (fails rather than reuse an existing one)."""
        models_dir = Path(models_dir or default_models_dir())
        models_dir.mkdir(parents=True, exist_ok=True)
        path = models_dir / (run_id or new_run_id())
        try:
            path.mkdir()
        except FileExistsError as err:
            raise StudioError(f"Run folder {path} already exists; choose another run id.") from err
        return cls(path)

    @classmethod
    def open(cls, run: Path | str, models_dir: Path | None = None) -> "RunDir":
        """Open an existing run given its folder or its id under the models folder."""
        candidate = Path(run)
        if not candidate.is_dir():
            candidate = Path(models_dir or default_models_dir()) / str(run)
        if not (candidate / CONFIG).is_file():
            raise StudioError(f"No run found at {run}: expected a folder holding {CONFIG}.")
        return cls(candidate)

    @property
    def run_id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    # --- writing (trainer only) -------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        write_json_atomic(self.file(CONFIG), config)

    def write_classes(self, classes: list[str]) -> None:
        write_json_atomic(self.file(CLASSES), classes)

    def write_split(self, split: dict[str, Any]) -> None:
        write_json_atomic(self.file(SPLIT), split)

    def write_evaluation(self, evaluation: dict[str, Any]) -> None:
        write_json_atomic(self.file(EVALUATION), evaluation)

    def set_status(self, state: str, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into status.json with a fresh heartbeat."""
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}")
        status = self.read_status() or {}
        status.update(fields)
        status["state"] = state
        status["heartbeat"] = time.time()
        status.setdefault("pid", os.getpid())
        write_json_atomic(self.file(STATUS), status)
        return status

    def heartbeat(self, **fields: Any) -> None:
        """Refresh the heartbeat (and progress fields) of a running run."""
        status = self.read_status() or {"state": "running"}
        self.set_status(status.get("state", "running"), **fields)

    def log_metrics(self, record: dict[str, Any]) -> None:
        append_jsonl(self.file(METRICS), {"time": time.time(), **record})

    # --- reading (anyone) -------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        return read_json(self.file(CONFIG), {})

    def read_status(self) -> dict[str, Any] | None:
        return read_json(self.file(STATUS))

    def read_classes(self) -> list[str]:
        return read_json(self.file(CLASSES), [])

    def read_split(self) -> dict[str, Any]:
        return read_json(self.file(SPLIT), {})

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.file(METRICS))

    def read_evaluation(self) -> dict[str, Any] | None:
        return read_json(self.file(EVALUATION))

    def has_model(self) -> bool:
        return self.file(MODEL).is_file()

    def effective_status(self, now: float | None = None) -> dict[str, Any]:
        """status.json, with a silent 'running' run reported as failed (its trainer died)."""
        status = dict(self.read_status() or {"state": "queued"})
        if status.get("state") in ("running", "queued") and "heartbeat" in status:
            age = (now or time.time()) - float(status["heartbeat"])
            if age > HEARTBEAT_TIMEOUT_SECONDS and not _pid_alive(status.get("pid")):
                status["state"] = "failed"
                status["error"] = (
                    f"The trainer stopped responding {age:.0f} s ago (process {status.get('pid')} is gone)."
                    + (" The best checkpoint so far is kept." if self.has_model() else "")
                )
        return status

    # --- stop requests ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the trainer to stop at its next batch, keeping the best model."""
        self.file(STOP_REQUEST).write_text("stop requested\n", encoding="utf-8")

    def stop_requested(self) -> bool:
        return self.file(STOP_REQUEST).exists()


def _pid_alive(pid: Any) -> bool:
    """True when a process with this pid exists (and is not a zombie we can see)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(") ")[1].split()[0] != "Z"
        except (IndexError, OSError):
            return True
    return True


def list_runs(models_dir: Path | None = None) -> list[RunDir]:
    """All runs under the models folder, newest first."""
    models_dir = Path(models_dir or default_models_dir())
    if not models_dir.is_dir():
        return []
    runs = [RunDir(p) for p in models_dir.iterdir() if p.is_dir() and (p / CONFIG).is_file()]
    return sorted(runs, key=lambda r: r.file(CONFIG).stat().st_mtime, reverse=True)
