"""Evaluate a run's saved best model on its own held-out split (or on another dataset folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from core import StudioError
from core.metrics import evaluation_report
from core.runs import MODEL, RunDir


def load_run_model(run: RunDir):
    """Load model.keras with Keras safe mode (no arbitrary code from the file)."""
    import keras

    if not run.has_model():
        raise StudioError(f"Run {run.run_id} has no {MODEL} yet; wait for its first validated epoch.")
    return keras.saving.load_model(run.file(MODEL), compile=False, safe_mode=True)


def run_image_size(run: RunDir) -> int:
    config = run.read_config()
    return int(config.get("resolved", {}).get("image_size") or config.get("image_size") or 224)


def evaluate_images(run: RunDir, images, labels: np.ndarray, paths: list[str], split: str,
                    tta: bool = False, model=None, batch_size: int = 32,
                    on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Score decoded images (an array or an on-disk ImageCache) with the run's best model, a batch at a time,
    and store evaluation.json. `on_batch(images done)` follows each batch and may raise to stop: then nothing
    is written."""
    from core.model import predict_in_batches

    model = model or load_run_model(run)
    probs = predict_in_batches(model, images, batch_size, tta=tta, on_batch=on_batch)
    report = evaluation_report(probs, labels, run.read_classes(), paths, split)
    report["tta"] = bool(tta)
    report["root"] = run.read_split().get("root")
    run.write_evaluation(report)
    return report


def evaluate_run(run: RunDir, data: Path | str | None = None, split: str | None = None) -> dict[str, Any]:
    """Re-evaluate a run: on its saved split (test if it has one, else val), or on every image of `data`."""
    from core.datasets import scan, split_from_json
    from core.imagecache import default_cache_dir, open_or_build

    classes = run.read_classes()
    size = run_image_size(run)
    tta = bool(run.read_config().get("tta", False))
    if data is not None:
        dataset = scan(data)
        unknown = [c for c in dataset.classes if c not in classes]
        if unknown:
            raise StudioError(f"{data}: classes {unknown} are not among the run's classes {classes}.")
        root = dataset.root
        samples = [(s.path, classes.index(dataset.classes[s.label])) for s in dataset.samples]
        part = "data"
    else:
        root, parts = split_from_json(run.read_split())
        part = split or ("test" if parts["test"] else "val")
        samples = [(s.path, s.label) for s in parts[part]]
        missing = [p for p, _ in samples if not (root / p).is_file()]
        if missing:
            raise StudioError(f"{root / missing[0]} is missing ({len(missing)} of the run's {part} images): "
                              "pass --data with the dataset's current location.")
    if not samples:
        raise StudioError(f"No images to evaluate in the {part} split.")
    images, _ = open_or_build([root / p for p, _ in samples], size, default_cache_dir(run.path.parent))
    labels = np.asarray([label for _, label in samples], dtype=np.int64)
    return evaluate_images(run, images, labels, [p for p, _ in samples], part, tta=tta)
