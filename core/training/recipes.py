"""Recipe comparison for `python -m core bench recipe`: the tutorial reference vs our default, same splits.

The reference is the recipe of the common tutorials: frozen base, GAP -> BatchNorm -> Dropout(0.2) -> Dense,
Adam 1e-2, 2 epochs, batch 32, no augmentation. Both train on the same images and are scored on the same
held-out test images, for several seeds.

Each run is a whole `python -m core train` process, timed from its start to its exit as a user sees it (Python and
TensorFlow start-up, model build, decoding, training, evaluation, saving). Its split is laid out as train/ val/
test/ folders of links to the photos, so the trainer reads exactly the benchmark's split through its own
folder rules. Runs alternate reference/default per seed so machine noise hits both alike.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.base.config import TrainConfig
from core.data.datasets import Sample, scan
from core.training.estimate import estimate_against_actual

REFERENCE_OVERRIDES: dict[str, Any] = {
    "head_mode": "images", "head_epochs": 2, "head_lr": 1e-2, "finetune_epochs": 0, "batch_size": 32,
    "augmentation": "none", "label_smoothing": 0.0, "class_weights": False, "tta": False,
    "early_stopping_patience": 100, "reduce_lr_patience": 100, "dropout": 0.2, "multi_level": False,
}


def reference_config(data: str, backbone: str, seed: int) -> TrainConfig:
    """The tutorials' recipe, expressed in our config, at the backbone's native size (as the tutorials use it)."""
    from core.base.backbones import get_backbone

    native = get_backbone(backbone).native_size
    return TrainConfig.from_dict({"data": data, "backbone": backbone, "seed": seed, "image_size": native,
                                  **REFERENCE_OVERRIDES})


def default_config(data: str, backbone: str, seed: int, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """What a newcomer gets without touching a setting (plus `overrides`, to measure a variant)."""
    return TrainConfig.from_dict({"data": data, "backbone": backbone, "seed": seed, **(overrides or {})})


def benchmark_split(data: str, seed: int, resplit: bool = False) -> dict[str, list[Sample]]:
    """Train / test (and val only where the folder has its own) as a user of the folder would have them: its
    test/ folder, else its val/ folder, is the test set; a folder without either gets a stratified 20% test
    share. Validation is not carved here: the trainer does that itself when its recipe needs one (the
    tutorial's epochs do; the default's cross-validated head fit does not), exactly as for a user.

    With `resplit`, every seed instead draws a new stratified train/test split of all those photos with the same
    test share, so mean and spread over seeds cover the luck of the split, not just of the training."""
    dataset = scan(data)
    by_folder: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for sample in dataset.samples:
        by_folder[sample.split or "train"].append(sample)
    if dataset.report.layout != "split_folders":
        return _held_out(by_folder["train"], 0.2, seed)
    if not by_folder["test"] and by_folder["val"]:  # the val/ folder is the held-out set
        by_folder["test"], by_folder["val"] = [Sample(s.path, s.label, "test") for s in by_folder["val"]], []
    if not by_folder["test"]:
        return {**_held_out(by_folder["train"], 0.2, seed), "val": by_folder["val"]}
    if resplit:
        pooled = by_folder["train"] + by_folder["test"]
        share = len(by_folder["test"]) / len(pooled)
        return {**_held_out(pooled, share, seed), "val": by_folder["val"]}
    return by_folder


def _held_out(samples: list[Sample], fraction: float, seed: int) -> dict[str, list[Sample]]:
    """A stratified, seeded test share of `samples`; the rest is for training."""
    rng = random.Random(seed)
    out: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for label in sorted({s.label for s in samples}):
        members = [s for s in samples if s.label == label]
        rng.shuffle(members)
        n_test = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        out["test"] += [Sample(s.path, s.label, "test") for s in members[:n_test]]
        out["train"] += [Sample(s.path, s.label, "train") for s in members[n_test:]]
    return out


def lay_out_split(root: Path, classes: list[str], split: dict[str, list[Sample]], folder: Path) -> Path:
    """`folder/{train,val,test}/<class>/<photo>` as links to the photos, so a trainer process given `folder`
    uses exactly this split (core.data.datasets reads split folders as they are)."""
    for part, samples in split.items():
        for index, sample in enumerate(samples):
            source = (Path(root) / sample.path).resolve()
            target = folder / part / classes[sample.label] / f"{index:06d}-{source.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(source, target)
    return folder


def timed_run(config: TrainConfig, data_folder: Path, models_dir: Path) -> dict[str, Any]:
    """One whole trainer process (`python -m core train`) on a laid-out split; wall time from its start to its
    exit, as a user of the command line sees it."""
    config_file = Path(models_dir) / f"config-{time.time_ns()}.json"
    config_file.write_text(json.dumps({**config.to_dict(), "data": str(data_folder)}))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "core", "--models-dir", str(models_dir), "train", "--config",
                           str(config_file)], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"a benchmark run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    from core.base.runs import RunDir

    run = RunDir(Path(done.stdout.strip().splitlines()[-1]))
    evaluation = run.read_evaluation()
    timing = estimate_against_actual(run)  # what the run expected before it started, against what it took
    return {"test_accuracy": evaluation["accuracy"], "seconds": seconds, "split": evaluation["split"],
            "test_images": evaluation["images"], "run": str(run.path),
            "estimated_seconds": timing[0] if timing else None, "trainer_seconds": timing[1] if timing else None}


def compare_recipes(data: str, seeds: list[int], backbone: str = "efficientnet_lite0",
                    overrides: dict[str, Any] | None = None, resplit: bool = False) -> dict[str, Any]:
    """Reference and default, alternating per seed so machine noise hits both alike."""
    results: dict[str, list[dict[str, Any]]] = {"reference": [], "default": []}
    dataset = scan(data)
    with tempfile.TemporaryDirectory(prefix="studio-bench-") as tmp:
        _warm_up(data, backbone, Path(tmp))
        for seed in seeds:
            split = benchmark_split(data, seed, resplit)
            folder = lay_out_split(dataset.root, dataset.classes, split, Path(tmp) / f"split-{seed}")
            results["reference"].append(timed_run(reference_config(data, backbone, seed), folder, Path(tmp)))
            results["default"].append(timed_run(default_config(data, backbone, seed, overrides), folder, Path(tmp)))
    summary = {name: _summarise(rows) for name, rows in results.items()}
    summary["time_ratio_default_over_reference"] = summary["default"]["mean_seconds"] / \
        summary["reference"]["mean_seconds"]
    return {"data": str(data), "backbone": backbone, "seeds": seeds, "resplit": resplit, "runs": results, **summary,
            "default_settings": {k: v for k, v in default_config(data, backbone, 0, overrides).to_dict().items()
                                 if k not in ("data", "seed")},
            "overrides": overrides or {},
            "reference_settings": REFERENCE_OVERRIDES}


def _warm_up(data: str, backbone: str, models_dir: Path) -> None:
    """Pay one-time costs (weight conversion, library start-up) before anything is timed."""
    from core.base.backbones import create_backbone

    create_backbone(backbone, 64)


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    accuracies = [r["test_accuracy"] for r in rows]
    seconds = [r["seconds"] for r in rows]
    return {"mean_test_accuracy": statistics.fmean(accuracies),
            "std_test_accuracy": statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0,
            "min_test_accuracy": min(accuracies), "max_test_accuracy": max(accuracies),
            "mean_seconds": statistics.fmean(seconds),
            "std_seconds": statistics.pstdev(seconds) if len(seconds) > 1 else 0.0}
