"""Datasets: scan a labelled folder, report what is usable, and split it reproducibly."""

from __future__ import annotations

import hashlib
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core import StudioError
from core.data.images import ImageError, decode_image, is_image_name

SPLIT_NAMES = ("train", "val", "test")
# Folder names people use for the validation split, mapped to ours.
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX", ".ipynb_checkpoints"}
# The cleaning loop's file beside a dataset folder (core.data.overrides): never a photo, a class or a wrapper folder's
# sibling that stops the descent into it.
OVERRIDES_SUFFIX = ".overrides.json"


def is_ignored_name(name: str) -> bool:
    """System files, hidden entries and overrides files: never part of a dataset."""
    return name in IGNORED_NAMES or name.startswith(".") or name.endswith(OVERRIDES_SUFFIX)


@dataclass
class Sample:
    """One usable image: path relative to the dataset root, class index, and the split folder it came from."""

    path: str
    label: int
    split: str | None = None


@dataclass
class DatasetReport:
    """What `inspect` finds: classes, counts, problems, and whether it can be trained on."""

    root: str
    layout: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    usable_images: int
    unreadable: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    small_classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def trainable(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trainable": self.trainable}


@dataclass
class Dataset:
    """A scanned dataset: the report plus the usable samples in a stable order."""

    root: Path
    report: DatasetReport
    samples: list[Sample]
    # The samples as the folders give them, when core.data.overrides changed `samples` (relabelled or excluded photos).
    unoverridden: list[Sample] | None = None

    @property
    def classes(self) -> list[str]:
        return self.report.classes


def resolve_root(path: Path | str) -> Path:
    """The folder that holds the classes (or train/val/test): descends through single wrapper folders."""
    root = Path(path).expanduser()
    if not root.exists():
        raise StudioError(f"{root}: no such folder. Give a folder with one sub-folder per class.")
    if not root.is_dir():
        raise StudioError(f"{root} is a file, not a folder. Give a folder with one sub-folder per class.")
    for _ in range(3):  # e.g. an unzipped "flowers/flowers/<classes>" wrapper
        entries = [e for e in root.iterdir() if not is_ignored_name(e.name)]
        if len(entries) == 1 and entries[0].is_dir() and not _has_images(root) \
                and not _is_split_folder_set(entries) and any(p.is_dir() for p in entries[0].iterdir()):
            root = entries[0]
        else:
            break
    return root


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and is_image_name(p.name) for p in folder.iterdir())


def _is_split_folder_set(entries: list[Path]) -> bool:
    names = {e.name.lower() for e in entries if e.is_dir()}
    return "train" in names or "training" in names


def _list_files(folder: Path, relative_to: Path) -> list[Path]:
    """All files below `folder` (class folders may nest sub-folders), sorted, hidden and system files skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_NAMES and not d.startswith("."))
        for name in sorted(filenames):
            if is_ignored_name(name):  # system, hidden (the .studio-complete marker) and overrides files
                continue
            found.append((Path(dirpath) / name).relative_to(relative_to))
    return found


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and p.name not in IGNORED_NAMES and not p.name.startswith("."))


def scan(path: Path | str, check_images: bool = True, workers: int | None = None) -> Dataset:
    """Scan a class-folder or train/val/test dataset, decoding every image once to find damaged ones."""
    root = resolve_root(path)
    top_folders = _class_folders(root)
    split_folders = {SPLIT_ALIASES[p.name.lower()]: p for p in top_folders if p.name.lower() in SPLIT_ALIASES}
    layout = "split_folders" if "train" in split_folders else "class_folders"
    skipped: list[dict[str, str]] = []

    candidates: list[tuple[str, str, str | None]] = []  # (relative path, class name, split)
    if layout == "split_folders":
        for other in top_folders:
            if other.name.lower() not in SPLIT_ALIASES:
                skipped.append({"path": other.name + "/", "reason": "folder beside train/ is not a split; ignored"})
        groups = [(split, folder) for split, folder in split_folders.items()]
    else:
        groups = [(None, root)]
    class_names: set[str] = set()
    for split, group_root in groups:
        for name in _list_files(group_root, group_root):
            if len(name.parts) == 1:
                skipped.append({"path": _rel(group_root / name, root), "reason": "file is not inside a class folder"})
        for class_dir in _class_folders(group_root):
            class_names.add(class_dir.name)
            for rel in _list_files(class_dir, root):
                if is_image_name(rel.name):
                    candidates.append((rel.as_posix(), class_dir.name, split))
                else:
                    skipped.append({"path": rel.as_posix(), "reason": "not an image type we read (JPEG, PNG, BMP, WebP)"})

    classes = sorted(class_names)
    unreadable, digests = _check_images(root, [c[0] for c in candidates], check_images, workers)
    bad = {item["path"] for item in unreadable}
    duplicates = _duplicate_groups(digests)
    # Within one class, extra byte-identical copies are left out: they would leak between train and val.
    drop = {path for group in duplicates for path in _same_class_extras(group, candidates)}

    index = {name: i for i, name in enumerate(classes)}
    samples = [Sample(rel, index[cls], split) for rel, cls, split in candidates if rel not in bad and rel not in drop]
    report = _build_report(root, layout, classes, samples, unreadable, skipped, duplicates, drop, candidates)
    return Dataset(root=root, report=report, samples=samples)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _check_images(root: Path, rel_paths: list[str], decode: bool,
                  workers: int | None) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Decode each image (in threads: decoding releases the GIL) and hash its bytes."""

    def check(rel: str) -> tuple[str, str | None, str | None]:
        path = root / rel
        try:
            data = path.read_bytes()
        except OSError as err:
            return rel, None, f"cannot be read ({err.strerror or err})"
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        if decode:
            try:
                decode_image(data, rel, target_size=64)
            except ImageError as err:
                return rel, digest, str(err).split(": ", 1)[-1]
        return rel, digest, None

    unreadable, digests = [], {}
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
        for rel, digest, problem in pool.map(check, rel_paths):
            if problem:
                unreadable.append({"path": rel, "reason": problem})
            elif digest:
                digests[rel] = digest
    return unreadable, digests


def _duplicate_groups(digests: dict[str, str]) -> list[list[str]]:
    by_digest: dict[str, list[str]] = {}
    for rel, digest in digests.items():
        by_digest.setdefault(digest, []).append(rel)
    return sorted(sorted(paths) for paths in by_digest.values() if len(paths) > 1)


def _same_class_extras(group: list[str], candidates: list[tuple[str, str, str | None]]) -> list[str]:
    """All but the first copy of each class inside one duplicate group."""
    class_of = {rel: cls for rel, cls, _ in candidates}
    seen: set[str] = set()
    extras = []
    for rel in group:
        if class_of[rel] in seen:
            extras.append(rel)
        seen.add(class_of[rel])
    return extras


def class_counts(classes: list[str], samples: list[Sample]) -> dict[str, dict[str, int]]:
    """Photos per class and split folder (a class-folder dataset's all count as train), with their total."""
    counts = {name: {"train": 0, "val": 0, "test": 0, "total": 0} for name in classes}
    for sample in samples:
        row = counts[classes[sample.label]]
        row[sample.split or "train"] += 1
        row["total"] += 1
    return counts


def _build_report(root: Path, layout: str, classes: list[str], samples: list[Sample],
                  unreadable: list[dict[str, str]], skipped: list[dict[str, str]], duplicates: list[list[str]],
                  dropped: set[str], candidates: list[tuple[str, str, str | None]]) -> DatasetReport:
    counts = class_counts(classes, samples)
    report = DatasetReport(root=str(root), layout=layout, classes=classes, counts=counts,
                           usable_images=len(samples), unreadable=unreadable, skipped=skipped,
                           duplicates=duplicates)
    report.empty_classes = [name for name in classes if counts[name]["total"] == 0]
    report.small_classes = [name for name in classes if 0 < counts[name]["total"] < 2]
    class_of = {rel: cls for rel, cls, _ in candidates}
    if not classes:
        report.errors.append(f"{root}: no class folders found. Put each class's images in its own sub-folder.")
    elif len(classes) - len(report.empty_classes) < 2:
        report.errors.append(f"{root}: found {len(classes) - len(report.empty_classes)} class with usable images; "
                             "training needs at least 2 classes.")
    for name in report.empty_classes:
        report.errors.append(f"Class '{name}' has no usable image; add images or remove the folder.")
    for name in report.small_classes:
        report.warnings.append(f"Class '{name}' has only 1 image; it cannot appear in validation.")
    cross = [g for g in duplicates if len({class_of[p] for p in g}) > 1]
    if cross:
        report.warnings.append(f"{len(cross)} image(s) appear in more than one class; check their labels.")
    if dropped:
        report.warnings.append(f"{len(dropped)} duplicate copies inside the same class are left out of training.")
    if unreadable:
        report.warnings.append(f"{len(unreadable)} image(s) are damaged or unreadable and are left out.")
    totals = [counts[n]["total"] for n in classes if counts[n]["total"] > 0]
    if len(totals) >= 2 and max(totals) >= 3 * min(totals):
        report.warnings.append(f"Classes are imbalanced ({min(totals)} to {max(totals)} images); "
                               "class weights are applied during training.")
    return report


def split_samples(dataset: Dataset, val_fraction: float = 0.2, test_fraction: float = 0.0,
                  seed: int = 42) -> dict[str, list[Sample]]:
    """Use the dataset's own split folders if present; otherwise a seeded split stratified by class."""
    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise StudioError(f"val fraction {val_fraction} and test fraction {test_fraction} must be in [0, 1) "
                          "and leave images for training.")
    by_split: dict[str, list[Sample]] = {name: [] for name in SPLIT_NAMES}
    if dataset.report.layout == "split_folders":
        for sample in dataset.samples:
            by_split[sample.split or "train"].append(sample)
        if not by_split["val"]:  # only train/ given: carve validation out of it
            carved = _stratified(by_split["train"], val_fraction or 0.2, 0.0, seed)
            by_split["train"], by_split["val"] = carved["train"], carved["val"]
        return by_split
    return _stratified(dataset.samples, val_fraction, test_fraction, seed)


@dataclass(frozen=True)
class SplitDescription:
    """What split_samples will do with a dataset, as one sentence, and which of its shares it reads."""

    sentence: str
    uses_val_fraction: bool   # False when the dataset's own val/ folder is used as it is
    uses_test_fraction: bool  # only class folders without train/ get a test share


def describe_split(dataset: Dataset, val_fraction: float = 0.2, test_fraction: float = 0.0) -> SplitDescription:
    """The split in words, following split_samples case by case so the Data page never says otherwise."""
    # Decided from the samples, as split_samples does: a val/ folder with no usable image is carved like none.
    folders = _split_folder_names(dataset.samples)
    if dataset.report.layout != "split_folders":
        flat = "The images are in class folders with no train/ or val/ folder, so "
        if val_fraction <= 0:
            return SplitDescription(flat + "with a validation share of 0 nothing is held out for validation, "
                                    "and training refuses to start.", uses_val_fraction=True, uses_test_fraction=True)
        test = f", {_percent(test_fraction)} for the final test," if test_fraction > 0 else ""
        return SplitDescription(f"{flat}{_percent(val_fraction)} of each class is picked at random (seeded) for "
                                f"validation{test} and the rest is trained on.",
                                uses_val_fraction=True, uses_test_fraction=True)
    # split_samples never carves a test set out of split folders: a test share given for one is ignored.
    no_test = " No test set is made: the test share applies only to class folders without train/." \
        if test_fraction > 0 and "test" not in folders else ""
    if "val" in folders:
        own = _join([folders[name] for name in SPLIT_NAMES if name in folders])
        return SplitDescription(f"The dataset's own {own} folders are used as they are.{no_test}",
                                uses_val_fraction=False, uses_test_fraction=False)
    test_note = f" Its {folders['test']} folder is kept apart for the final test." if "test" in folders else no_test
    train = folders.get("train", "train/")
    carved = _percent(val_fraction or 0.2)  # split_samples falls back to 20% when asked for none
    if "test" in folders:  # core.training.train.split_for_recipe: only a recipe that needs validation carves it
        return SplitDescription(
            f"The dataset has {train} and {folders['test']} folders but no val/ folder. The default recipe learns "
            f"from every image in {train}, choosing its regularisation by 5-fold cross-validation, and is scored "
            f"on {folders['test']}. Fine-tuning and epoch training need a validation split: for them {carved} of "
            f"each class in {train} is picked at random (seeded) for it.", uses_val_fraction=True,
            uses_test_fraction=False)
    return SplitDescription(f"The dataset has a {train} folder but no val/ folder with images, so {carved} of each "
                            f"class in {train} is picked at random (seeded) for validation and the rest is trained "
                            f"on.{test_note}", uses_val_fraction=True, uses_test_fraction=False)


def _split_folder_names(samples: list[Sample]) -> dict[str, str]:
    """Split -> the folder it came from as spelled on disk ("valid/", "Training/"), for splits with images."""
    names: dict[str, str] = {}
    for sample in samples:
        if sample.split and sample.split not in names:
            names[sample.split] = Path(sample.path).parts[0] + "/"
    return names


def _percent(fraction: float) -> str:
    return f"{round(fraction * 100, 1):g}%"


def _join(words: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _stratified(samples: list[Sample], val_fraction: float, test_fraction: float,
                seed: int) -> dict[str, list[Sample]]:
    rng = random.Random(seed)
    out: dict[str, list[Sample]] = {name: [] for name in SPLIT_NAMES}
    for label in sorted({s.label for s in samples}):
        members = [s for s in samples if s.label == label]
        rng.shuffle(members)
        n = len(members)
        n_val = _share(n, val_fraction)
        n_test = _share(n - n_val, test_fraction / max(1e-9, 1 - val_fraction)) if test_fraction else 0
        if n - n_val - n_test < 1:  # always keep at least one training image per class
            n_test = max(0, n - n_val - 1)
        for i, sample in enumerate(members):
            split = "val" if i < n_val else "test" if i < n_val + n_test else "train"
            out[split].append(Sample(sample.path, sample.label, split))
    return out


def _share(n: int, fraction: float) -> int:
    """round(n * fraction), but at least 1 when there is a second image to spare."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def split_to_json(root: Path, classes: list[str], split: dict[str, list[Sample]], seed: int,
                  source: str) -> dict[str, Any]:
    """The split as saved in a run: root, classes and relative paths with labels."""
    return {"root": str(Path(root).resolve()), "classes": classes, "seed": seed, "source": source,
            **{name: [[s.path, s.label] for s in split[name]] for name in SPLIT_NAMES}}


def split_from_json(data: dict[str, Any], root: Path | None = None) -> tuple[Path, dict[str, list[Sample]]]:
    """Rebuild a saved split, optionally against a moved dataset root."""
    base = Path(root) if root else Path(data["root"])
    return base, {name: [Sample(p, int(label), name) for p, label in data.get(name, [])] for name in SPLIT_NAMES}
