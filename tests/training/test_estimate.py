"""The time a run is expected to take, said before Start (issue 28.3): the trainer's plan priced at the rates this
machine measured in earlier runs, kept in the run folder and compared with what the run took."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.base import progress
from core.base.config import TrainConfig
from core.base.runs import RunDir
from core.training.estimate import (ESTIMATE_FILE, OVERHEAD, estimate_against_actual, estimate_run, measured_rates,
                                    planned_counts)
from core.training.plan import training_plan


def finished_run(runs: Path, run_id: str, rates: dict[str, tuple[float, float]], size: int = 288,
                 accelerator: str = "cpu", backbone: str = "efficientnet_lite0", took: float | None = None) -> RunDir:
    """A finished run folder whose metrics say each phase took (seconds, units)."""
    run = RunDir.create(runs, run_id)
    run.write_config({"data": "/nowhere", "backbone": backbone,
                      "resolved": {"image_size": size, "device": {"accelerator": accelerator}}})
    for phase, (seconds, done) in rates.items():
        run.log_metrics({"kind": "phase", "phase": phase, "seconds": seconds, "done": done, "unit": "images"})
    spent = sum(seconds for seconds, _ in rates.values())
    run.set_status("succeeded", started=1000.0, finished=1000.0 + (took if took is not None else spent + 2.0))
    return run


def test_measured_rates_come_from_finished_runs_of_this_backbone_and_device_scaled_by_pixels(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    finished_run(runs, "run-a", {progress.FEATURES: (10.0, 500), progress.DECODE: (1.0, 500)}, size=144)
    finished_run(runs, "run-gpu", {progress.FEATURES: (1.0, 500)}, accelerator="gpu")
    finished_run(runs, "run-b0", {progress.FEATURES: (50.0, 500)}, backbone="efficientnet_b0")
    rates = measured_rates(runs, "efficientnet_lite0", 288, "cpu")
    assert rates[progress.FEATURES] == pytest.approx(10.0 / 500 * 4)  # twice the side: four times the pixels
    assert rates[progress.DECODE] == pytest.approx(1.0 / 500)  # decoding is priced per file, not per pixel
    assert rates[OVERHEAD] == pytest.approx(2.0)
    assert measured_rates(runs, "efficientnet_lite0", 288, "gpu")[progress.FEATURES] == pytest.approx(1.0 / 500)
    assert measured_rates(tmp_path / "none", "efficientnet_lite0", 288, "cpu") == {}


def test_the_estimate_prices_every_phase_of_the_plan_and_fine_tuning_from_the_feature_rate(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    finished_run(runs, "run-a", {progress.PREPARE: (5.0, 1), progress.DECODE: (3.0, 600),
                                 progress.FEATURES: (30.0, 600), progress.HEAD_FIT: (6.0, 6),
                                 progress.SAVE: (1.0, 1), progress.EVALUATE: (6.0, 150)})
    counts = {"train": 600, "val": 150, "test": 0}
    quick = TrainConfig.from_dict({"data": "x"})
    estimate = estimate_run(quick, counts, "cpu", runs)
    plan = training_plan(quick, counts, 0)
    assert list(estimate.phases) == [p.name for p in plan] + [OVERHEAD]
    assert estimate.phases[progress.FEATURES] == pytest.approx(30.0)
    assert not estimate.upper_bound and "rates measured on this machine" in estimate.describe()
    best = TrainConfig.from_dict({"data": "x", "preset": "best", "finetune_epochs": 2})
    tuned = estimate_run(best, counts, "cpu", runs)
    finetune = next(p for p in training_plan(best, counts, 2) if p.name == progress.FINETUNE)
    assert tuned.phases[progress.FINETUNE] == pytest.approx(finetune.total * 30.0 / 600 * finetune.factor, rel=0.01)
    assert tuned.upper_bound and tuned.describe().startswith("at most ")  # early stopping may end it sooner


def test_without_measured_runs_a_cpu_gets_the_priors_and_a_gpu_is_told_it_is_unknown() -> None:
    counts = {"train": 600, "val": 150, "test": 0}
    config = TrainConfig.from_dict({"data": "x"})
    cpu = estimate_run(config, counts, "cpu", None)
    assert cpu.seconds and cpu.seconds > 0 and "typical 2-core CPU rates" in cpu.describe()
    gpu = estimate_run(config, counts, "gpu", None)
    assert gpu.seconds is None and "unknown until a first run" in gpu.describe()


def test_planned_counts_are_the_trainers_split(tmp_path: Path, small_dataset: Path) -> None:
    from core.training.plan import prepare_dataset

    config = TrainConfig.from_dict({"data": str(small_dataset)})
    counts, cross_validated = planned_counts(config, "cpu")
    _, split, _ = prepare_dataset(config)
    assert counts == {part: len(samples) for part, samples in split.items()} and cross_validated


def test_a_trained_run_keeps_its_estimate_and_the_next_estimate_uses_its_rates(tmp_path: Path,
                                                                                small_dataset: Path) -> None:
    """Two real runs: the first is priced at the priors; the second at the first's rates, and that estimate is
    within 2x of what the second took (the issue's bound for an honest ETA)."""
    from core.training.train import run_training

    models = tmp_path / "models"
    config = TrainConfig.from_dict({"data": str(small_dataset), "image_size": 64})
    first = run_training(config, models_dir=models)
    kept = json.loads(first.file(ESTIMATE_FILE).read_text())
    assert kept["seconds"] > 0 and kept["measured"] == []
    second = run_training(config, models_dir=models)
    kept = json.loads(second.file(ESTIMATE_FILE).read_text())
    assert progress.FEATURES in kept["measured"]
    estimated, took = estimate_against_actual(second)
    assert took / 2 <= estimated <= took * 2, (estimated, took)
