"""The cleaning loop's memory: relabel or exclude a photo without touching the dataset's files.

Every change is one entry in an overrides file kept beside the dataset (`<folder>.overrides.json`, or in the
app's workspace for a dataset it does not own, such as the shared sample). The original photos and folders are
never moved, so an entry can be undone at any time; the next scan applies the entries (`apply_overrides`), and a
run records the ones it trained with (`summary`, saved as the run's overrides.json).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from core import StudioError
from core.data.datasets import OVERRIDES_SUFFIX, Dataset, Sample, class_counts
from core.base.runs import write_json_atomic

SUFFIX = OVERRIDES_SUFFIX
FORMAT_VERSION = 1
ACTIONS = ("relabel", "exclude")
SOURCES = ("health", "mistakes", "data", "cli")
# Stored notes are shown in tables; a pasted essay is cut, not refused.
NOTE_CHARS = 200


@dataclass(frozen=True)
class Override:
    """One photo's correction: a new class for it, or leave it out of training and evaluation."""

    path: str                  # relative to the dataset root, with / separators (as Sample.path)
    action: str                # "relabel" | "exclude"
    was: str                   # the class its folder gives it
    label: str | None = None   # the class it is moved to (relabel only)
    source: str = "data"       # where it was made: the health list, the mistakes gallery, the Data page, the CLI
    at: float = 0.0            # when (seconds since the epoch)
    note: str = ""

    def describe(self) -> str:
        return f"{self.was} → {self.label}" if self.action == "relabel" else f"{self.was}, excluded"


@dataclass
class Applied:
    """What applying an overrides file did to one scan: the entries used, and those that no longer fit."""

    file: str | None
    relabelled: list[Override] = field(default_factory=list)
    excluded: list[Override] = field(default_factory=list)
    stale: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}: kept in the file, not applied

    @property
    def count(self) -> int:
        return len(self.relabelled) + len(self.excluded)


def file_beside(root: Path | str) -> Path:
    """The overrides file of a dataset: `<parent>/<name>.overrides.json` beside the folder that holds the classes
    (or train/ test/). Outside that folder, so no scan lists it; scans, fingerprints and the descent through
    wrapper folders skip such files (core.data.datasets.is_ignored_name)."""
    root = Path(root)
    return root.parent / f"{root.name}{SUFFIX}"


def file_in_store(root: Path | str, store: Path | str) -> Path:
    """An overrides file kept in `store` for a dataset this workspace must not write beside (the shared sample, a
    folder given by path): named after the folder, with a short hash of its location so two folders of the same
    name never share one."""
    resolved = str(Path(root).resolve())
    tag = hashlib.blake2b(resolved.encode("utf-8"), digest_size=4).hexdigest()
    return Path(store) / f"{Path(root).name}-{tag}{SUFFIX}"


def read_overrides(file: Path | str | None) -> dict[str, Override]:
    """The entries of an overrides file by photo path (none when the file does not exist); a damaged file is a
    StudioError naming it, so nothing is silently trained without the user's corrections."""
    if file is None or not Path(file).is_file():
        return {}
    file = Path(file)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StudioError(f"{file}: the overrides file cannot be read ({err}). Fix it or delete it; the dataset's "
                          "own photos are untouched.") from err
    entries = data.get("overrides") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise StudioError(f"{file}: not an overrides file (no 'overrides' list). Fix it or delete it.")
    found: dict[str, Override] = {}
    for number, entry in enumerate(entries, 1):
        override = _parsed(entry)
        if override is None:
            raise StudioError(f"{file}: entry {number} is not a relabel or exclude entry with a path and a class.")
        found[override.path] = override
    return found


def _parsed(entry: Any) -> Override | None:
    if not isinstance(entry, dict):
        return None
    path, action, was, label = entry.get("path"), entry.get("action"), entry.get("was"), entry.get("label")
    if not isinstance(path, str) or not path or action not in ACTIONS or not isinstance(was, str):
        return None
    if action == "relabel" and not isinstance(label, str):
        return None
    at = entry.get("at", 0.0)
    return Override(path=path, action=action, was=was, label=label if action == "relabel" else None,
                    source=str(entry.get("source", "data"))[:20],
                    at=float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else 0.0,
                    note=str(entry.get("note", ""))[:NOTE_CHARS])


def write_overrides(file: Path | str, overrides: dict[str, Override], dataset_root: Path | str) -> None:
    """Save all entries at once (atomically: a reader never sees half a file); no entries removes the file."""
    file = Path(file)
    if not overrides:
        file.unlink(missing_ok=True)
        return
    file.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(overrides.values(), key=lambda o: (o.at, o.path))
    write_json_atomic(file, {"format": FORMAT_VERSION, "dataset": str(Path(dataset_root).resolve()),
                             "overrides": [asdict(o) for o in ordered]})


def relabel(file: Path | str, dataset: Dataset, path: str, new_class: str, source: str = "data",
            note: str = "") -> Override:
    """Give one photo another class (of the dataset's classes); relabelling it back to its folder's class
    undoes the entry instead."""
    sample = _sample(dataset, path)
    if new_class not in dataset.classes:
        raise StudioError(f"{path}: '{new_class}' is not one of the dataset's classes ({', '.join(dataset.classes)}).")
    was = _folder_class(dataset, sample)
    entries = read_overrides(file)
    if new_class == was:
        entries.pop(path, None)
        write_overrides(file, entries, dataset.root)
        return Override(path=path, action="relabel", was=was, label=was, source=source, at=time.time())
    entry = Override(path=path, action="relabel", was=was, label=new_class, source=_source(source), at=time.time(),
                     note=note[:NOTE_CHARS])
    entries[path] = entry
    write_overrides(file, entries, dataset.root)
    return entry


def exclude(file: Path | str, dataset: Dataset, path: str, source: str = "data", note: str = "") -> Override:
    """Leave one photo out of training and evaluation (its file stays where it is)."""
    sample = _sample(dataset, path)
    entries = read_overrides(file)
    entry = Override(path=path, action="exclude", was=_folder_class(dataset, sample), source=_source(source),
                     at=time.time(), note=note[:NOTE_CHARS])
    entries[path] = entry
    write_overrides(file, entries, dataset.root)
    return entry


def undo(file: Path | str, path: str, dataset_root: Path | str) -> bool:
    """Drop one photo's entry: it is back to its folder's class. False when there was none."""
    entries = read_overrides(file)
    if entries.pop(path, None) is None:
        return False
    write_overrides(file, entries, dataset_root)
    return True


def _source(source: str) -> str:
    return source if source in SOURCES else "data"


def _sample(dataset: Dataset, path: str) -> Sample:
    """The scanned photo at `path` (before any override: the scan as the folders give it)."""
    for sample in dataset.unoverridden or dataset.samples:
        if sample.path == path:
            return sample
    raise StudioError(f"{path}: no such photo in {dataset.root.name} (moved, deleted or unreadable).")


def _folder_class(dataset: Dataset, sample: Sample) -> str:
    """The class a photo's folder gives it: its path's class folder (the scan's label may be an override)."""
    parts = Path(sample.path).parts
    folder = parts[1] if sample.split is not None and len(parts) > 2 else parts[0]
    return folder if folder in dataset.classes else dataset.classes[sample.label]


def apply_overrides(dataset: Dataset, file: Path | str | None) -> tuple[Dataset, Applied]:
    """The dataset as the entries say: relabelled photos under their new class, excluded ones left out. Entries
    for photos no longer in the scan, or for a class that is gone, are kept in the file but not applied."""
    applied = Applied(file=str(file) if file else None)
    entries = read_overrides(file)
    if not entries:
        return dataset, applied
    index = {name: i for i, name in enumerate(dataset.classes)}
    by_path = {s.path: s for s in dataset.samples}
    samples: list[Sample] = []
    for sample in dataset.samples:
        entry = entries.get(sample.path)
        if entry is None:
            samples.append(sample)
        elif entry.action == "exclude":
            applied.excluded.append(entry)
        elif entry.label in index:
            samples.append(replace(sample, label=index[entry.label]))
            applied.relabelled.append(entry)
        else:
            samples.append(sample)
            applied.stale.append({"path": entry.path, "reason": f"class '{entry.label}' is no longer in the dataset"})
    for path in sorted(set(entries) - set(by_path)):
        applied.stale.append({"path": path, "reason": "photo no longer in the dataset (moved, deleted or unreadable)"})
    report = _recounted(dataset, samples, applied)
    # relabel and undo read a photo's folder class from the plain scan, so it is kept beside the cleaned one
    return Dataset(root=dataset.root, report=report, samples=samples, unoverridden=dataset.samples), applied


def _recounted(dataset: Dataset, samples: list[Sample], applied: Applied):
    """The scan report with counts, empty classes and errors as they are after the overrides."""
    report = replace(dataset.report, warnings=list(dataset.report.warnings), errors=list(dataset.report.errors))
    counts = class_counts(dataset.classes, samples)
    report.counts, report.usable_images = counts, len(samples)
    newly_empty = [n for n in dataset.classes if counts[n]["total"] == 0 and n not in report.empty_classes]
    report.empty_classes = report.empty_classes + newly_empty
    for name in newly_empty:
        report.errors.append(f"Class '{name}' has no photo left after the overrides; undo some of them.")
    if len(dataset.classes) - len(report.empty_classes) < 2 <= len(dataset.classes) and newly_empty:
        report.errors.append("Training needs at least 2 classes with photos; undo some overrides.")
    parts = [f"{len(applied.relabelled)} relabelled"] if applied.relabelled else []
    parts += [f"{len(applied.excluded)} excluded"] if applied.excluded else []
    if parts:
        report.warnings.append(f"Your corrections are applied: {' and '.join(parts)} (the files are untouched; "
                               "undo any of them on the Data page).")
    if applied.stale:
        report.warnings.append(f"{len(applied.stale)} correction(s) no longer match a photo or class and are not "
                               "applied.")
    return report


def summary(applied: Applied) -> dict[str, Any]:
    """What a run records of the overrides it trained with (its overrides.json)."""
    return {"file": applied.file, "relabelled": [asdict(o) for o in applied.relabelled],
            "excluded": [asdict(o) for o in applied.excluded], "stale": applied.stale,
            "count": applied.count}


def resolve_file(setting: str | None, root: Path | str) -> Path | None:
    """Which overrides file a run uses: "auto" is the one beside the dataset when it exists, None or "none"
    is no file, anything else is a path (which must exist: a typo must not train without the corrections)."""
    if setting is None or setting.lower() == "none":
        return None
    if setting == "auto":
        beside = file_beside(root)
        return beside if beside.is_file() else None
    path = Path(setting).expanduser()
    if not path.is_file():
        raise StudioError(f"{path}: no such overrides file.")
    return path
