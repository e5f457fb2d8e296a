"""Recipe comparison for `python -m core bench recipe`: the tutorial reference vs our default, same splits.

The reference is the recipe of the common tutorials: frozen base, GAP -> BatchNorm -> Dropout(0.2) -> Dense,
Adam 1e-2, 2 epochs, batch 32, no augmentation. Both train on the same images and are scored on the same
held-out test images, for several seeds, and their wall times are measured in the same process.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from core.config import TrainConfig
from core.datasets import Sample, scan, split_samples

REFERENCE_OVERRIDES: dict[str, Any] = {
    "head_mode": "images", "head_epochs": 2, "head_lr": 1e-2, "finetune_epochs": 0, "batch_size": 32,
    "augmentation": "none", "label_smoothing": 0.0, "class_weights": False, "tta": False,
    "early_stopping_patience": 100, "reduce_lr_patience": 100, "dropout": 0.2, "multi_level": False,
}


def reference_config(data: str, backbone: str, seed: int) -> TrainConfig:
    """The tutorials' recipe, expressed in our config, at the backbone's native size (as the tutorials use it)."""
    from core.backbones import get_backbone

    native = get_backbone(backbone).native_size
    return TrainConfig.from_dict({"data": data, "backbone": backbone, "seed": seed, "image_size": native,
                                  **REFERENCE_OVERRIDES})


def default_config(data: str, backbone: str, seed: int, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """What a newcomer gets without touching a setting (plus `overrides`, to measure a variant)."""
    return TrainConfig.from_dict({"data": data, "backbone": backbone, "seed": seed, **(overrides or {})})


def benchmark_split(data: str, seed: int) -> dict[str, list[Sample]]:
    """Train / val / test with a fixed test set: the dataset's test/ folder, else its val/ folder (validation
    is then carved out of train/ with the seed), else a stratified 60/20/20 split."""
    dataset = scan(data)
    by_folder = split_samples(dataset, seed=seed)
    if dataset.report.layout == "split_folders" and not by_folder["test"]:
        has_val_folder = any(s.split == "val" for s in dataset.samples)
        if has_val_folder:
            train_only = [s for s in dataset.samples if s.split == "train"]
            carved = _carve(train_only, 0.2, seed)
            return {"train": carved["train"], "val": carved["val"],
                    "test": [Sample(s.path, s.label, "test") for s in dataset.samples if s.split == "val"]}
    if by_folder["test"]:
        return by_folder
    return split_samples(dataset, val_fraction=0.2, test_fraction=0.2, seed=seed)


def _carve(samples: list[Sample], fraction: float, seed: int) -> dict[str, list[Sample]]:
    rng = random.Random(seed)
    out: dict[str, list[Sample]] = {"train": [], "val": []}
    for label in sorted({s.label for s in samples}):
        members = [s for s in samples if s.label == label]
        rng.shuffle(members)
        n_val = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        out["val"] += [Sample(s.path, s.label, "val") for s in members[:n_val]]
        out["train"] += [Sample(s.path, s.label, "train") for s in members[n_val:]]
    return out


def timed_run(config: TrainConfig, split: dict[str, list[Sample]], models_dir: Path) -> dict[str, Any]:
    """Train one recipe; wall time covers decoding, model building, training and test evaluation."""
    from core.train import run_training

    start = time.perf_counter()
    run = run_training(config, models_dir=models_dir, split=split)
    seconds = time.perf_counter() - start
    evaluation = run.read_evaluation()
    return {"test_accuracy": evaluation["accuracy"], "seconds": seconds, "split": evaluation["split"],
            "test_images": evaluation["images"], "run": str(run.path)}


def compare_recipes(data: str, seeds: list[int], backbone: str = "efficientnet_lite0",
                    overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Reference and default, alternating per seed so machine noise hits both alike."""
    results: dict[str, list[dict[str, Any]]] = {"reference": [], "default": []}
    with tempfile.TemporaryDirectory(prefix="studio-bench-") as tmp:
        _warm_up(data, backbone, Path(tmp))
        for seed in seeds:
            split = benchmark_split(data, seed)
            results["reference"].append(timed_run(reference_config(data, backbone, seed), split, Path(tmp)))
            results["default"].append(timed_run(default_config(data, backbone, seed, overrides), split, Path(tmp)))
    summary = {name: _summarise(rows) for name, rows in results.items()}
    summary["time_ratio_default_over_reference"] = summary["default"]["mean_seconds"] / \
        summary["reference"]["mean_seconds"]
    return {"data": str(data), "backbone": backbone, "seeds": seeds, "runs": results, **summary,
            "default_settings": {k: v for k, v in default_config(data, backbone, 0, overrides).to_dict().items()
                                 if k not in ("data", "seed")},
            "overrides": overrides or {},
            "reference_settings": REFERENCE_OVERRIDES}


def _warm_up(data: str, backbone: str, models_dir: Path) -> None:
    """Pay one-time costs (weight conversion, library start-up) before anything is timed."""
    from core.backbones import create_backbone

    create_backbone(backbone, 64)


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    accuracies = [r["test_accuracy"] for r in rows]
    seconds = [r["seconds"] for r in rows]
    return {"mean_test_accuracy": statistics.fmean(accuracies),
            "std_test_accuracy": statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0,
            "min_test_accuracy": min(accuracies), "max_test_accuracy": max(accuracies),
            "mean_seconds": statistics.fmean(seconds),
            "std_seconds": statistics.pstdev(seconds) if len(seconds) > 1 else 0.0}
