"""Run directories: the contract between the trainer process, the UI and the CLI.

Everything about one run lives in `models/<run_id>/` and is written atomically (temp file + rename) or
appended as whole lines, so any reader can rebuild the full state from the folder alone.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from core import StudioError

CONFIG = "config.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
CLASSES = "classes.json"
SPLIT = "split.json"
MODEL = "model.keras"
EVALUATION = "evaluation.json"
OVERRIDES = "overrides.json"  # the cleaning loop's corrections a run trained with (core.data.overrides.summary)
CALIBRATION = "calibration.json"  # the "unknown" threshold for Classify, chosen on held-out photos (core.results.evaluate)
EVALUATIONS = "evaluations"  # named evaluations on other labelled folders: evaluations/<name>.json
STOP_REQUEST = "STOP"

STATES = ("queued", "running", "succeeded", "failed", "stopped")
FINAL_STATES = ("succeeded", "failed", "stopped")
# A trainer writes a heartbeat at least this often; readers call a silent "running" run dead after the timeout.
HEARTBEAT_SECONDS = 5.0
HEARTBEAT_TIMEOUT_SECONDS = 120.0
DAMAGED = "damaged"  # added by readers to a status whose wrong-typed fields were dropped: what was wrong, one line
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RunDamaged(StudioError, ValueError):
    """A run-folder file that does not hold what the run-directory contract says; it concerns that run only.

    A ValueError too, so readers that already treat unparsable JSON as "no such record" keep doing so.
    """

    def __init__(self, run_id: str, name: str, problem: str):
        self.run_id, self.name, self.problem = run_id, name, problem
        super().__init__(f"Run {run_id}: {name} is damaged: {problem}. Other runs are not affected.")


def check_run_id(run_id: str) -> None:
    """Refuse a run id that is not one plain folder name (it is joined to the models folder)."""
    if not RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise StudioError(f"Run id {run_id!r} is not a plain folder name: use letters, digits, '.', '_' and '-' "
                          "(at most 128).")


def default_models_dir() -> Path:
    """Where runs live: $STUDIO_MODELS_DIR, else ./models next to the app."""
    return Path(os.environ.get("STUDIO_MODELS_DIR", Path(__file__).resolve().parents[2] / "models"))


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


# ----------------------------------------------------------------------------------------- checked reading
# Each field a reader of status.json uses, with the type it must have. A field of another type is dropped (and
# the status says so), so one bad value cannot break a page; a heartbeat that is not a finite time is no
# heartbeat, so a dead trainer's run cannot read "running" for ever.
STATUS_NUMBERS = ("heartbeat", "created", "started", "finished", "fraction", "eta_seconds", "phase_eta_seconds",
                  "done", "total", "rate", "epoch", "phase_epoch", "phase_epochs", "step", "steps", "images_per_s",
                  "phase_index", "phase_count")
STATUS_TEXTS = ("error", "message", "phase", "phase_label", "unit", "stopped_in", "traceback")
# metrics.jsonl lines: these must be numbers (NaN and infinity allowed: a diverged loss is a fact worth drawing).
METRIC_NUMBERS = ("time", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "l2", "images_per_s", "seconds",
                  "step", "done", "images")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    from core.base.config import shown_value

    return shown_value(value)


def clean_status(status: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The status with every wrong-typed field dropped, and one phrase per dropped field."""
    clean, problems = dict(status), []

    def drop(key: str, expected: str) -> None:
        problems.append(f"'{key}' is {_shown(clean.pop(key))}, not {expected}")

    for key in STATUS_NUMBERS:
        if key in clean and clean[key] is not None and not _finite(clean[key]):
            drop(key, "a time in seconds" if key in ("heartbeat", "created", "started", "finished") else "a number")
    for key in STATUS_TEXTS:
        if key in clean and clean[key] is not None and not isinstance(clean[key], str):
            drop(key, "text")
    if "pid" in clean and clean["pid"] is not None and not (_whole(clean["pid"]) and clean["pid"] > 0):
        drop("pid", "a process id")
    phases = clean.get("phases")
    if phases is not None and not (isinstance(phases, list) and all(isinstance(p, dict) for p in phases)):
        drop("phases", "a list of phases")
    return clean, problems


def evaluation_problem(evaluation: Any) -> str | None:
    """Why an evaluation report cannot be shown (its shape or a value), or None when it can.

    Its classes, confusion matrix and accuracy must be there (a model's verdict rests on them); every other
    field is checked when present, so the Evaluate page can rely on its type."""
    if not isinstance(evaluation, dict):
        return "not a JSON object"
    classes = evaluation.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "'classes' is not a list of class names"
    n = len(classes)
    matrix = evaluation.get("confusion_matrix")
    if not (isinstance(matrix, list) and len(matrix) == n and all(
            isinstance(row, list) and len(row) == n and all(_whole(v) and v >= 0 for v in row) for row in matrix)):
        return f"'confusion_matrix' is not {n} rows of {n} counts"
    for key in ("accuracy", "top_k_accuracy", "macro_auc"):
        value = evaluation.get(key)
        if (key == "accuracy" or value is not None) and not (_finite(value) and 0 <= value <= 1):
            return f"'{key}' is {_shown(value)}, not a share from 0 to 1"
    for key, low in (("top_k", 1), ("images", 0), ("mistakes_total", 0)):
        if key in evaluation and not (_whole(evaluation[key]) and evaluation[key] >= low):
            return f"'{key}' is {_shown(evaluation[key])}, not a whole number of at least {low}"
    for key in ("split", "root", "dataset"):
        if evaluation.get(key) is not None and not isinstance(evaluation[key], str):
            return f"'{key}' is {_shown(evaluation[key])}, not a name"
    for key in ("macro_f1", "ece"):  # added with issue 16.3; older reports lack them
        value = evaluation.get(key)
        if value is not None and not (_finite(value) and 0 <= value <= 1):
            return f"'{key}' is {_shown(value)}, not a share from 0 to 1"
    return _rows_problem(evaluation) or _reliability_problem(evaluation.get("reliability")) \
        or _predictions_problem(evaluation.get("predictions"), n)


def _reliability_problem(table: Any) -> str | None:
    """The reliability diagram's bins: counts, and a mean confidence and accuracy (or null) per bin."""
    if table is None:
        return None
    if not isinstance(table, dict):
        return "'reliability' is not an object"
    counts = table.get("counts")
    if not (isinstance(counts, list) and counts and all(_whole(c) and c >= 0 for c in counts)):
        return "'reliability' has no list of photo counts per bin"
    for key in ("confidence", "accuracy"):
        values = table.get(key)
        if not (isinstance(values, list) and len(values) == len(counts)
                and all(v is None or (_finite(v) and 0 <= v <= 1) for v in values)):
            return f"'reliability' has no {key} per bin"
    return None


def _predictions_problem(table: Any, num_classes: int) -> str | None:
    """Every scored photo's path, true and predicted class index and confidence, as equally long columns."""
    if table is None:
        return None
    if not isinstance(table, dict):
        return "'predictions' is not an object"
    columns = [table.get(key) for key in ("paths", "true", "predicted", "confidence")]
    if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns}) != 1:
        return "'predictions' does not hold paths, true, predicted and confidence columns of one length"
    paths, true, predicted, confidence = columns
    if not all(_whole(v) and 0 <= v < num_classes for v in true + predicted):
        return f"'predictions' holds a class index outside 0..{num_classes - 1}"
    if not all(_finite(v) and 0 <= v <= 1 for v in confidence):
        return "'predictions' holds a confidence that is not a share from 0 to 1"
    for path in paths:
        if not isinstance(path, str) or PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
            return f"a prediction's path {_shown(path)} points outside the evaluated folder"
    return None


def calibration_problem(calibration: Any) -> str | None:
    """Why calibration.json cannot be used (None when it can): a threshold from 0 to 1 and where it came from."""
    if not isinstance(calibration, dict):
        return "not a JSON object"
    threshold = calibration.get("threshold")
    if not (_finite(threshold) and 0 <= threshold <= 1):
        return f"'threshold' is {_shown(threshold)}, not a confidence from 0 to 1"
    if calibration.get("source") not in ("validation", "out_of_fold"):
        return f"'source' is {_shown(calibration.get('source'))}, not validation or out_of_fold"
    for key in ("keep", "kept_correct", "flagged_wrong", "accepted_accuracy", "held_out_accuracy"):
        value = calibration.get(key)
        if value is not None and not (_finite(value) and 0 <= value <= 1):
            return f"'{key}' is {_shown(value)}, not a share from 0 to 1"
    if not (_whole(calibration.get("photos")) and calibration["photos"] > 0):
        return f"'photos' is {_shown(calibration.get('photos'))}, not a number of photos"
    return None


def evaluation_name(name: str) -> str:
    """A named evaluation's file stem: the dataset's name in letters, digits, '.', '_' and '-' (at most 100)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-._")[:100]
    return stem or "dataset"


def _rows_problem(evaluation: dict[str, Any]) -> str | None:
    """The per-class scores, most-confused pairs and mistakes: lists of records with the right types."""
    tables = {"per_class": ({"class": str}, ("precision", "recall", "f1", "support")),
              "most_confused": ({"true": str, "predicted": str}, ("count",)),
              "mistakes": ({"path": str, "true": str, "predicted": str}, ("confidence",))}
    for key, (texts, numbers) in tables.items():
        rows = evaluation.get(key, [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            return f"'{key}' is not a list of records"
        for row in rows:
            if not all(isinstance(row.get(k), kind) for k, kind in texts.items()) \
                    or not all(_finite(row.get(k)) for k in numbers):
                return f"'{key}' holds a record without {', '.join([*texts, *numbers])} of the right types"
    for mistake in evaluation.get("mistakes", []):
        path = PurePosixPath(mistake["path"])
        if path.is_absolute() or ".." in path.parts:  # pictures are looked up under the report's root only
            return f"a mistake's path {_shown(mistake['path'])} points outside the evaluated folder"
    return None


def _metric_problem(record: Any) -> bool:
    """True when a metrics line is not a record a chart can draw (wrong-typed epoch, phase or value)."""
    if not isinstance(record, dict):
        return True
    if any(record.get(k) is not None and not isinstance(record[k], str) for k in ("kind", "phase")):
        return True
    if any(record.get(k) is not None and not _number(record[k]) for k in METRIC_NUMBERS):
        return True
    epoch = record.get("epoch")
    return epoch is not None and not (_whole(epoch) and epoch >= 0)


@dataclass(frozen=True)
class MetricLines:
    """The readable lines of a run's metrics.jsonl, and how many were skipped (not JSON, or wrong types)."""

    records: list[dict[str, Any]]
    skipped: int = 0
    unreadable: str | None = None  # why the file itself could not be read

    def note(self, run_id: str) -> str | None:
        """One line saying what was left out, or None when nothing was."""
        if self.unreadable:
            return f"Run {run_id}: {METRICS} cannot be read ({self.unreadable}); no curves are shown for it."
        if self.skipped:
            lines = "line" if self.skipped == 1 else "lines"
            return (f"Run {run_id}: {self.skipped:,} {lines} of {METRICS} could not be read (not JSON, or values "
                    "of the wrong type) and were skipped; the curves show the rest.")
        return None


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
            looked = "" if Path(run).is_dir() else f" (looked in {candidate.parent} too; --models-dir points elsewhere, " \
                "e.g. the app's runs under <workspace>/sessions/<session>/runs)"
            raise StudioError(f"No run found at {run}: expected a folder holding {CONFIG}{looked}.")
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
        status = self._status_to_update()
        status.update(fields)
        status["state"] = state
        status["heartbeat"] = time.time()
        status.setdefault("pid", os.getpid())
        write_json_atomic(self.file(STATUS), status)
        return status

    def heartbeat(self, **fields: Any) -> None:
        """Refresh the heartbeat (and progress fields) of a running run."""
        status = self._status_to_update() or {"state": "running"}
        self.set_status(status.get("state", "running"), **fields)

    def _status_to_update(self) -> dict[str, Any]:
        """The status the trainer merges its fields into: a damaged one is replaced, not fatal to the trainer."""
        try:
            status = self.read_status() or {}
        except RunDamaged:
            return {}
        status.pop(DAMAGED, None)
        return status

    def log_metrics(self, record: dict[str, Any]) -> None:
        append_jsonl(self.file(METRICS), {"time": time.time(), **record})

    # --- reading (anyone) -------------------------------------------------------------------
    # Each reader checks what it returns: a file that is not JSON, or not of the contract's shape, raises RunDamaged
    # naming this run and the file (a StudioError, so the CLI prints one line and a page shows one sentence).
    def _load(self, name: str, default: Any) -> Any:
        """A run file's JSON, `default` when the file does not exist (yet)."""
        try:
            text = self.file(name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return default
        except UnicodeDecodeError:
            raise RunDamaged(self.run_id, name, "not UTF-8 text") from None
        except OSError as err:
            raise RunDamaged(self.run_id, name, f"cannot be read: {err.strerror or type(err).__name__}") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise RunDamaged(self.run_id, name, f"not valid JSON: {err.msg} at line {err.lineno}") from None
        except RecursionError:
            raise RunDamaged(self.run_id, name, "nested too deeply") from None

    def read_config(self) -> dict[str, Any]:
        from core.base.config import type_problem

        config = self._load(CONFIG, {})
        if not isinstance(config, dict):
            raise RunDamaged(self.run_id, CONFIG, f"{_shown(config)} instead of a JSON object")
        problem = next((p for key, value in config.items() if (p := type_problem(key, value))), None)
        if problem is None and not isinstance(config.get("resolved", {}), dict):
            problem = "'resolved' is not an object"
        if problem is not None:
            raise RunDamaged(self.run_id, CONFIG, problem)
        return config

    def read_status(self) -> dict[str, Any] | None:
        """status.json with wrong-typed fields dropped (then `damaged` says which); None before the first one."""
        status = self._load(STATUS, None)
        if status is None:
            return None
        if not isinstance(status, dict):
            raise RunDamaged(self.run_id, STATUS, f"{_shown(status)} instead of a JSON object")
        if status.get("state") not in STATES:
            raise RunDamaged(self.run_id, STATUS, f"its state is {_shown(status.get('state'))}, not one of "
                                                  + ", ".join(STATES))
        status, problems = clean_status(status)
        status.pop(DAMAGED, None)  # only a reader says what is damaged
        if problems:
            status[DAMAGED] = (f"Run {self.run_id}: {STATUS} is damaged: {'; '.join(problems)}. "
                               "Those fields are ignored.")
        return status

    def read_classes(self) -> list[str]:
        classes = self._load(CLASSES, [])
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise RunDamaged(self.run_id, CLASSES, f"{_shown(classes)} instead of a list of class names"
                             if not isinstance(classes, list) else "a list holding something other than names")
        return classes

    def read_split(self) -> dict[str, Any]:
        split = self._load(SPLIT, {})
        if not isinstance(split, dict):
            raise RunDamaged(self.run_id, SPLIT, f"{_shown(split)} instead of a JSON object")
        if split.get("root") is not None and not isinstance(split["root"], str):
            raise RunDamaged(self.run_id, SPLIT, "'root' is not a folder name")
        return split

    def read_metric_lines(self) -> MetricLines:
        """Complete lines only (one still being written has no newline yet); a bad line is skipped and counted."""
        try:
            data = self.file(METRICS).read_bytes()
        except FileNotFoundError:
            return MetricLines([])
        except OSError as err:
            return MetricLines([], unreadable=err.strerror or type(err).__name__)
        records, skipped = [], 0
        for line in data.split(b"\n")[:-1]:
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                record = None
            if _metric_problem(record):
                skipped += 1
            else:
                records.append(record)
        return MetricLines(records, skipped)

    def read_metrics(self) -> list[dict[str, Any]]:
        return self.read_metric_lines().records

    def read_evaluation(self) -> dict[str, Any] | None:
        evaluation = self._load(EVALUATION, None)
        if evaluation is None:
            return None
        problem = evaluation_problem(evaluation)
        if problem is not None:
            raise RunDamaged(self.run_id, EVALUATION, problem)
        return evaluation

    def read_calibration(self) -> dict[str, Any] | None:
        """The "unknown" threshold chosen for Classify (None: the run predates it, or had no held-out photos)."""
        calibration = self._load(CALIBRATION, None)
        if calibration is None:
            return None
        problem = calibration_problem(calibration)
        if problem is not None:
            raise RunDamaged(self.run_id, CALIBRATION, problem)
        return calibration

    def write_calibration(self, calibration: dict[str, Any]) -> None:
        write_json_atomic(self.file(CALIBRATION), calibration)

    def named_evaluations(self) -> list[str]:
        """The names (file stems) of the evaluations on other labelled folders, newest first."""
        folder = self.file(EVALUATIONS)
        if not folder.is_dir():
            return []
        found = [p for p in folder.glob("*.json") if RUN_ID.fullmatch(p.stem) and p.is_file()]
        return [p.stem for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]

    def read_named_evaluation(self, name: str) -> dict[str, Any] | None:
        """One named evaluation (checked like evaluation.json), None when there is no such name."""
        if not RUN_ID.fullmatch(name) or name != evaluation_name(name):
            return None
        relative = f"{EVALUATIONS}/{name}.json"
        evaluation = self._load(relative, None)
        if evaluation is None:
            return None
        problem = evaluation_problem(evaluation)
        if problem is not None:
            raise RunDamaged(self.run_id, relative, problem)
        return evaluation

    def write_named_evaluation(self, name: str, evaluation: dict[str, Any]) -> str:
        """Save an evaluation on another folder beside the run's own (never over evaluation.json); returns its
        name."""
        stem = evaluation_name(name)
        self.file(EVALUATIONS).mkdir(exist_ok=True)
        write_json_atomic(self.file(EVALUATIONS) / f"{stem}.json", evaluation)
        return stem

    def read_overrides_used(self) -> dict[str, Any] | None:
        """The corrections this run trained with (None: it used no overrides file, or it predates them)."""
        used = read_json(self.file(OVERRIDES), None)
        return used if isinstance(used, dict) else None

    def has_model(self) -> bool:
        return self.file(MODEL).is_file()

    def display_name(self) -> str:
        """The run's name for lists: its run_name, else its dataset folder's name (plain text, at most 60
        characters); says so when config.json is damaged."""
        from core.base.safetext import shorten

        try:
            config = self.read_config()
        except RunDamaged:
            return f"{CONFIG} damaged"
        return shorten(config.get("run_name") or Path(config.get("data") or "").name)

    def damage(self) -> list[str]:
        """One sentence per file of this run that cannot be read as the contract says (metrics.jsonl aside: its
        bad lines are counted where it is read, see MetricLines.note)."""
        found = []
        for reader in (self.read_status, self.read_config, self.read_classes, self.read_split, self.read_evaluation):
            try:
                value = reader()
            except RunDamaged as err:
                found.append(str(err))
                continue
            if reader == self.read_status and value and value.get(DAMAGED):
                found.append(value[DAMAGED])
        return found

    def effective_status(self, now: float | None = None) -> dict[str, Any]:
        """status.json, with a silent 'running' run reported as failed (its trainer died).

        A damaged status.json reads as failed, with what is wrong as its error. A heartbeat that is missing,
        not a finite time, or far in the future counts as no heartbeat; and since a trainer writes one with every
        status, an active run without one is not being trained, whatever process its pid names now (pids are
        reused: an old pid can belong to any live program).
        """
        try:
            saved = self.read_status()
        except RunDamaged as err:
            return {"state": "failed", "error": str(err), DAMAGED: str(err)}
        if saved is None:
            return {"state": "queued"}
        status = dict(saved)
        now = time.time() if now is None else now
        if status.get("state") not in ("running", "queued"):
            return status
        if status.get("state") == "queued" and status.get("waiting") is True:
            return status  # in the training queue (core.training.jobs): no trainer yet, so no heartbeat to expect
        heartbeat = status.get("heartbeat")
        if heartbeat is not None and heartbeat > now + HEARTBEAT_TIMEOUT_SECONDS:
            status.pop("heartbeat")  # from the future: written by no trainer of this machine's clock
            heartbeat = None
        kept = " The best checkpoint so far is kept." if self.has_model() else ""
        if heartbeat is None:
            status["state"] = "failed"
            status["error"] = ("Its status holds no valid heartbeat, which its trainer writes with every update, so "
                               "no trainer is running it." + kept)
        elif now - heartbeat > HEARTBEAT_TIMEOUT_SECONDS and not _pid_alive(status.get("pid")):
            status["state"] = "failed"
            status["error"] = (f"The trainer stopped responding {now - heartbeat:.0f} s ago (process "
                               f"{status.get('pid')} is gone)." + kept)
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
    except (TypeError, ValueError, OverflowError, ProcessLookupError):
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
    # Only plain names: a run id is shown inside Markdown and put in the address bar, so it must be inert text.
    runs = [RunDir(p) for p in models_dir.iterdir()
            if RUN_ID.fullmatch(p.name) and p.is_dir() and (p / CONFIG).is_file()]
    return sorted(runs, key=lambda r: r.file(CONFIG).stat().st_mtime, reverse=True)
