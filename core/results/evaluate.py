"""Evaluate a run's saved best model: on its own held-out split (evaluation.json), or on another labelled folder
(a named evaluation beside it, evaluations/<name>.json); and choose the "unknown" threshold Classify uses."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core import StudioError
from core.results.metrics import evaluation_report, unknown_threshold
from core.base.runs import MODEL, RunDir, evaluation_name

# progress(stage, done, total): "decoding" then "scoring", for a page's progress bar.
Progress = Callable[[str, int, int], None]


def load_run_model(run: RunDir):
    """Load model.keras with Keras safe mode (no arbitrary code from the file)."""
    import keras

    from core.network.distribute import share_gpu_memory

    if not run.has_model():
        raise StudioError(f"Run {run.run_id} has no {MODEL} yet; wait for its first validated epoch.")
    share_gpu_memory()
    return keras.saving.load_model(run.file(MODEL), compile=False, safe_mode=True)


def run_image_size(run: RunDir) -> int:
    config = run.read_config()
    return int(config.get("resolved", {}).get("image_size") or config.get("image_size") or 224)


def score_images(model, images, batch_size: int = 32, tta: bool = False,
                 on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Class probabilities (N, C) for decoded images (an array or an on-disk ImageCache), a batch at a time."""
    from core.network.model import predict_in_batches

    return predict_in_batches(model, images, batch_size, tta=tta, on_batch=on_batch)


def evaluate_images(run: RunDir, images, labels: np.ndarray, paths: list[str], split: str,
                    tta: bool = False, model=None, batch_size: int = 32,
                    on_batch: Callable[[int], None] | None = None, root: Path | str | None = None,
                    name: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score decoded images with the run's best model, a batch at a time, and store the report: evaluation.json,
    or evaluations/<name>.json when `name` is given (another folder, or a split the run is not scored on).
    `on_batch(images done)` follows each batch and may raise to stop: then nothing is written."""
    model = model or load_run_model(run)
    probs = score_images(model, images, batch_size, tta=tta, on_batch=on_batch)
    report = evaluation_report(probs, labels, run.read_classes(), paths, split)
    report["tta"] = bool(tta)
    report["root"] = str(root) if root is not None else run.read_split().get("root")
    report.update(extra or {})
    if name is None:
        run.write_evaluation(report)
    else:
        report["name"] = evaluation_name(name)  # the file stem, recorded in the file too
        run.write_named_evaluation(report["name"], report)
    return report


def check_test_classes(folder_classes: Sequence[str], run_classes: Sequence[str], label: str) -> None:
    """A labelled test folder may hold some of the run's classes, never others: refuse one naming them."""
    unknown = [c for c in folder_classes if c not in run_classes]
    if unknown:
        names = ", ".join(f"'{c}'" for c in unknown)
        raise StudioError(f"{label} has {'a class' if len(unknown) == 1 else f'{len(unknown)} classes'} the run was "
                          f"not trained on: {names}. The run knows {', '.join(run_classes)}; a test folder may hold "
                          "fewer of these classes, but no others: remove or rename "
                          f"{'that folder' if len(unknown) == 1 else 'those folders'} and evaluate again.")


def evaluate_run(run: RunDir, data: Path | str | None = None, split: str | None = None,
                 name: str | None = None, title: str | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Re-evaluate a run on its saved split (test if it has one, else val), or on every image of `data` (a folder
    or a .zip of one, whose classes must be among the run's).

    evaluation.json is the run's own score and is only rewritten by a re-evaluation of that split. Any other
    folder is saved as a named evaluation beside it (evaluations/<name>.json, `name` defaulting to the folder's
    name), and so is a split the run is not scored on (e.g. `train-split`). `title` is the name shown for it
    (e.g. an upload's name without the suffix that makes its folder unique)."""
    from core.data.datasets import scan, split_from_json
    from core.data.imagecache import default_cache_dir, open_or_build

    classes = run.read_classes()
    size = run_image_size(run)
    tta = bool(run.read_config().get("tta", False))
    extra: dict[str, Any] = {}
    if data is not None:
        from core.data.ingest import dataset_folder

        folder = dataset_folder(data)
        dataset = scan(folder)
        check_test_classes(dataset.classes, classes, f"The folder {title or Path(data).name}")
        root = dataset.root
        samples = [(s.path, classes.index(dataset.classes[s.label])) for s in dataset.samples]
        part = "data"
        name = name or Path(data).stem
        extra = {"dataset": title or name, "evaluated": time.time()}
    else:
        root, parts = split_from_json(run.read_split())
        own = "test" if parts["test"] else "val"
        part = split or own
        samples = [(s.path, s.label) for s in parts[part]]
        missing = [p for p, _ in samples if not (root / p).is_file()]
        if missing:
            raise StudioError(f"{root / missing[0]} is missing ({len(missing)} of the run's {part} images): "
                              "pass --data with the dataset's current location.")
        if part != own:
            name = name or f"{part}-split"
            extra = {"dataset": f"{part} split of the run's dataset", "evaluated": time.time()}
        else:
            name = None
    if not samples:
        raise StudioError(f"No images to evaluate in the {part} split." if data is None else
                          f"No readable images in {title or Path(data).name}: it needs one sub-folder of images per "
                          "class.")
    report = (lambda done, total: progress("decoding", done, total)) if progress else None
    images, _ = open_or_build([root / p for p, _ in samples], size, default_cache_dir(run.path.parent),
                              progress=report)
    labels = np.asarray([label for _, label in samples], dtype=np.int64)
    on_batch = (lambda done: progress("scoring", done, len(samples))) if progress else None
    return evaluate_images(run, images, labels, [p for p, _ in samples], part, tta=tta, on_batch=on_batch,
                           root=root, name=name, extra=extra)


# ------------------------------------------------------------------------------------------------ "unknown"
SOURCES = {"validation": "validation photos",
           "out_of_fold": "training photos, each predicted by a cross-validation head that never saw it"}


def choose_unknown_threshold(run: RunDir, confidence: np.ndarray, correct: np.ndarray,
                             source: str) -> dict[str, Any] | None:
    """Choose Classify's "unknown" threshold on held-out predictions (never the test split) and save it as
    calibration.json; None (nothing written) when no held-out prediction was right."""
    chosen = unknown_threshold(confidence, correct)
    if chosen is None:
        return None
    calibration = {**chosen, "source": source, "rule": f"keeps {chosen['keep']:.0%} of the correct held-out "
                                                        "predictions", "chosen": time.time()}
    run.write_calibration(calibration)
    return calibration


def held_out_for_threshold(split: dict[str, Any], evaluated: str, out_of_fold: bool) -> str | None:
    """Which held-out photos choose the threshold: the validation split when the run is scored on test; else the
    out-of-fold predictions of the training photos (a cross-validated head), so that the split the run is scored
    on stays untouched; else the validation split even though it is the one scored (said on the page)."""
    if evaluated != "val" and split.get("val"):
        return "validation"
    if out_of_fold:
        return "out_of_fold"
    return "validation" if split.get("val") else None


def calibrate_run(run: RunDir, progress: Progress | None = None) -> dict[str, Any] | None:
    """Choose the "unknown" threshold of a run trained before thresholds existed, on its validation split (a run
    whose head was cross-validated without one needs retraining: its out-of-fold predictions were not kept)."""
    from core.data.datasets import split_from_json
    from core.data.imagecache import default_cache_dir, open_or_build

    root, parts = split_from_json(run.read_split())
    if not parts["val"]:
        raise StudioError(f"Run {run.run_id} has no validation split to choose an \"unknown\" threshold on; train "
                          "it again (new runs choose one on their held-out photos).")
    samples = [(s.path, s.label) for s in parts["val"]]
    missing = [p for p, _ in samples if not (root / p).is_file()]
    if missing:
        raise StudioError(f"{missing[0]} is missing ({len(missing)} of the run's validation images): the dataset "
                          "has moved or changed since the run was trained.")
    report = (lambda done, total: progress("decoding", done, total)) if progress else None
    images, _ = open_or_build([root / p for p, _ in samples], run_image_size(run),
                              default_cache_dir(run.path.parent), progress=report)
    labels = np.asarray([label for _, label in samples], dtype=np.int64)
    on_batch = (lambda done: progress("scoring", done, len(samples))) if progress else None
    probs = score_images(load_run_model(run), images, tta=bool(run.read_config().get("tta", False)),
                         on_batch=on_batch)
    return choose_unknown_threshold(run, probs.max(axis=1), probs.argmax(axis=1) == labels, "validation")
