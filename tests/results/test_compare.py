"""`compare RUN_A RUN_B` (issue 20): intervals and tests against cases with known answers, refusals that name both
runs, and one real pair of tiny runs compared through the command line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from core import StudioError
from core.base.runs import RunDir
from core.results import compare
from core.results.compare import compare_runs, mcnemar, paired_bootstrap
from core.results.metrics import evaluation_report
from conftest import flower_files, run_cli

CLASSES = ["daisy", "roses", "tulips", "sunflowers"]


def fake_run(models: Path, name: str, true, predicted, classes=CLASSES, paths=None, split: str = "val",
             **config) -> RunDir:
    """A finished run folder written directly: config, classes, an evaluation.json whose predictions are `predicted`
    for photos of classes `true`, and two epoch lines."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    run = RunDir.create(models, name)
    run.write_config({"data": "/data/flowers", "backbone": "efficientnet_lite0", "weights": "imagenet", "seed": 42,
                      "image_size": None, "resolved": {"image_size": 288, "finetune_epochs": 0}, **config})
    run.write_classes(list(classes))
    probs = np.full((len(true), len(classes)), 0.1 / (len(classes) - 1))
    probs[np.arange(len(true)), predicted] = 0.9
    paths = paths if paths is not None else [f"val/{classes[t]}/{i:04d}.jpg" for i, t in enumerate(true)]
    report = evaluation_report(probs, true, classes, paths, split)
    report["root"] = "/data/flowers"
    run.write_evaluation(report)
    for epoch in (1, 2):
        run.log_metrics({"kind": "epoch", "phase": "head", "epoch": epoch, "loss": 1.0 / epoch, "val_accuracy": 0.5})
    return run


def outcomes(true: np.ndarray, right: np.ndarray, classes: int = len(CLASSES)) -> np.ndarray:
    """Predictions that are right where `right` is, else the next class."""
    return np.where(right, true, (true + 1) % classes)


def labels_for(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, len(CLASSES), n)


def test_identical_runs_differ_by_nothing(tmp_path: Path):
    true = labels_for(160)
    right = np.random.default_rng(1).random(160) < 0.75
    a = fake_run(tmp_path, "run-a", true, outcomes(true, right))
    b = fake_run(tmp_path, "run-b", true, outcomes(true, right))
    result = compare_runs(a, b, seed=3)
    accuracy = result["accuracy"]
    assert accuracy["a"] == accuracy["b"] == pytest.approx(right.mean())
    assert accuracy["difference"] == 0.0
    low, high = accuracy["ci95"]
    assert low <= 0.0 <= high and high - low < 1e-12  # paired: every replicate scores both on the same photos
    assert result["macro_f1"]["difference"] == 0.0 and result["macro_f1"]["ci95"] == [0.0, 0.0]
    assert result["mcnemar"] == {"a_only_right": 0, "b_only_right": 0, "discordant": 0, "p_value": 1.0,
                                 "method": "no discordant photos"}
    assert result["significant"] is False
    assert "no real difference on these 160 photos" in result["verdict"]
    assert result["photos"] == 160 and result["source"] == "validation split"
    assert all(row["difference"] == 0.0 for row in result["per_class"])


def test_a_large_gap_is_found_with_an_interval_near_it(tmp_path: Path):
    """A right on 90% of 400 photos, B on 60% (every photo B gets right, A does too): B - A = -30 points."""
    true = labels_for(400)
    a_right = np.arange(400) < 360
    b_right = np.arange(400) < 240
    a = fake_run(tmp_path, "run-a", true, outcomes(true, a_right))
    b = fake_run(tmp_path, "run-b", true, outcomes(true, b_right), backbone="baseline_cnn", weights=None)
    result = compare_runs(a, b)
    accuracy = result["accuracy"]
    assert accuracy["difference"] == pytest.approx(-0.30)
    low, high = accuracy["ci95"]
    assert -0.36 < low < -0.30 < high < -0.24  # excludes 0, around the true gap (binomial SE ~2.3 points)
    assert result["mcnemar"]["a_only_right"] == 120 and result["mcnemar"]["b_only_right"] == 0
    assert result["mcnemar"]["p_value"] < 1e-20
    assert result["significant"] is True
    assert result["verdict"].startswith("Baseline CNN from scratch: 60.0%, EfficientNet-Lite0 transfer: 90.0%: "
                                        "\u221230.0 points (95% CI \u2212")  # a negative interval in words:
    assert " to \u2212" in result["verdict"]  # "−34.7 to −25.5", not "-34.7–-25.5"
    assert "not chance" in result["verdict"]
    assert result["macro_f1"]["ci95"][1] < 0
    # The runs, what differs between them, and their curves to overlay.
    assert result["runs"]["a"]["id"] == "run-a" and result["runs"]["b"]["backbone"] == "baseline_cnn"
    assert result["differences"]["backbone"] == {"a": "efficientnet_lite0", "b": "baseline_cnn"}
    assert result["runs"]["b"]["settings"]["weights"] is None and result["runs"]["b"]["from_scratch"] is True
    assert [r["epoch"] for r in result["curves"]["a"]] == [1, 2] and len(result["curves"]["b"]) == 2
    # The other way round: the sign and the interval flip.
    flipped = compare_runs(b, a)
    assert flipped["accuracy"]["difference"] == pytest.approx(0.30)
    assert flipped["accuracy"]["ci95"][0] > 0.24 and "+30.0 points" in flipped["verdict"]


def test_scores_match_the_evaluations_and_classes_in_another_order(tmp_path: Path):
    """Macro-F1 and recall per class are those of each run's evaluation.json, whatever order B lists its classes and
    photos in."""
    true = labels_for(200, seed=5)
    rng = np.random.default_rng(6)
    pred_a, pred_b = outcomes(true, rng.random(200) < 0.8), outcomes(true, rng.random(200) < 0.6)
    a = fake_run(tmp_path, "run-a", true, pred_a)
    order = [2, 0, 3, 1]  # B's classes.json lists the same classes in another order; its photos come reversed
    renamed = [CLASSES[i] for i in order]
    index = {name: i for i, name in enumerate(renamed)}
    paths = [f"val/{CLASSES[t]}/{i:04d}.jpg" for i, t in enumerate(true)]
    b = fake_run(tmp_path, "run-b", [index[CLASSES[t]] for t in true][::-1],
                 [index[CLASSES[p]] for p in pred_b][::-1], classes=renamed, paths=paths[::-1])
    result = compare_runs(a, b)
    evaluations = a.read_evaluation(), b.read_evaluation()
    assert result["macro_f1"]["a"] == pytest.approx(evaluations[0]["macro_f1"])
    assert result["macro_f1"]["b"] == pytest.approx(evaluations[1]["macro_f1"])
    assert result["accuracy"]["b"] == pytest.approx(evaluations[1]["accuracy"])
    recall_b = {row["class"]: row["recall"] for row in evaluations[1]["per_class"]}
    for row in result["per_class"]:
        assert row["recall_b"] == pytest.approx(recall_b[row["class"]])
        assert row["difference"] == pytest.approx(row["recall_b"] - row["recall_a"])
    assert sum(row["photos"] for row in result["per_class"]) == 200


def test_the_interval_covers_a_known_difference_about_95_percent_of_the_time():
    """Simulated photos where A is right with probability 0.70 and B with 0.80 (correlated, as two models on the
    same photos are): the interval of B - A should hold the true +10 points in about 95% of the samples."""
    rng = np.random.default_rng(2026)
    trials, photos, covered = 300, 200, 0
    for trial in range(trials):
        u = rng.random(photos)
        v = np.where(rng.random(photos) < 0.7, u, rng.random(photos))  # uniform too: B's marginal stays exact
        true = rng.integers(0, 4, photos)
        a, b = outcomes(true, u < 0.70), outcomes(true, v < 0.80)
        low, high = compare.interval(paired_bootstrap(true, a, b, 4, replicates=400, seed=trial)["accuracy"])
        covered += low <= 0.10 <= high
    assert 0.90 <= covered / trials <= 0.99, covered / trials


def test_mcnemar_against_hand_computed_cases():
    # 12 discordant photos (exact test): 2 * P(X <= 3), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66 + 220) / 4096.
    a = np.array([True] * 3 + [False] * 9 + [True] * 20)
    b = np.array([False] * 3 + [True] * 9 + [True] * 20)
    exact = mcnemar(a, b)
    assert (exact["a_only_right"], exact["b_only_right"]) == (3, 9)
    assert exact["p_value"] == pytest.approx(2 * 299 / 4096) and exact["method"].startswith("exact")
    # 35 discordant (chi-square): (|10 - 25| - 1)^2 / 35 = 5.6, P(chi2_1 > 5.6) = 0.01796 (tables: 5.02 -> 0.025,
    # 6.63 -> 0.01).
    a = np.array([True] * 10 + [False] * 25 + [False] * 5)
    b = np.array([False] * 10 + [True] * 25 + [False] * 5)
    chi = mcnemar(a, b)
    assert chi["statistic"] == pytest.approx(5.6) and chi["p_value"] == pytest.approx(0.017960, abs=1e-5)
    assert mcnemar(b, a)["p_value"] == pytest.approx(chi["p_value"])  # two-sided
    # The switch: 24 discordant photos are tested exactly, 25 with the chi-square.
    assert mcnemar(np.arange(24) < 12, np.arange(24) >= 12)["method"].startswith("exact")
    assert mcnemar(np.arange(25) < 12, np.arange(25) >= 12)["method"].startswith("chi")
    assert math.isclose(mcnemar(np.arange(24) < 12, np.arange(24) >= 12)["p_value"], 1.0)


def test_runs_with_other_classes_or_photos_are_refused_naming_both(tmp_path: Path):
    true = labels_for(40)
    a = fake_run(tmp_path, "run-a", true, true)
    other_classes = fake_run(tmp_path, "run-c", true, true, classes=["cats", "dogs", "roses", "tulips"])
    with pytest.raises(StudioError, match="different classes") as err:
        compare_runs(a, other_classes)
    assert "run-a" in str(err.value) and "run-c" in str(err.value) and "only A knows daisy" in str(err.value)
    other_photos = fake_run(tmp_path, "run-d", true, true,
                            paths=[f"test/{CLASSES[t]}/{i:04d}.jpg" for i, t in enumerate(true)], split="test")
    with pytest.raises(StudioError, match="not scored on the same photos") as err:
        compare_runs(a, other_photos)
    assert "run-a" in str(err.value) and "run-d" in str(err.value) and "0 in common" in str(err.value)
    assert "--data" in str(err.value)
    relabelled = fake_run(tmp_path, "run-e", (true + 1) % 4, (true + 1) % 4,
                          paths=[f"val/{CLASSES[t]}/{i:04d}.jpg" for i, t in enumerate(true)])
    with pytest.raises(StudioError, match="different true class"):
        compare_runs(a, relabelled)
    unevaluated = fake_run(tmp_path, "run-f", true, true)
    unevaluated.file("evaluation.json").unlink()
    with pytest.raises(StudioError, match=r"Run B \(run-f\) has no evaluation.json"):
        compare_runs(a, unevaluated)
    with pytest.raises(StudioError, match="the same run"):
        compare_runs(a, RunDir(a.path))


@pytest.fixture
def tiny_flowers(tmp_path: Path, flowers_dir: Path) -> Path:
    """3 classes x (8 train + 4 val) real photos, in train/ and val/ folders."""
    root = tmp_path / "tiny"
    for split, count in (("train", 8), ("val", 4)):
        for cls in ("daisy", "roses", "tulips"):
            (root / split / cls).mkdir(parents=True)
            for f in flower_files(flowers_dir, cls, count, split):
                shutil.copy(f, root / split / cls / f.name)
    return root


def test_compare_through_the_command_line(tmp_path: Path, tiny_flowers: Path, flowers_dir: Path):
    """Two real tiny runs (the baseline CNN, Adam against SGD) compared by `python -m core compare`: exit 0 and the
    JSON a page draws; a run with other classes is refused with exit 2 and a one-line reason."""
    from core.base.config import TrainConfig
    from core.training.train import run_training

    models = tmp_path / "models"
    made = [run_training(TrainConfig.from_dict({"data": str(tiny_flowers), "backbone": "baseline_cnn",
                                                "image_size": 32, "head_epochs": 2, "optimizer": optimizer,
                                                "head_lr": lr}), models_dir=models)
            for optimizer, lr in (("adam", 1e-3), ("sgd", 1e-2))]
    done = run_cli("--models-dir", str(models), "compare", made[0].run_id, made[1].run_id, "--seed", "7")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert {"runs", "photos", "source", "accuracy", "macro_f1", "mcnemar", "per_class", "significant", "verdict",
            "curves"} <= set(result)
    assert result["photos"] == 12 and result["source"] == "validation split"
    assert result["differences"]["optimizer"] == {"a": "adam", "b": "sgd"}
    assert result["runs"]["a"]["label"] == "Baseline CNN from scratch (optimizer adam)"  # alike: a setting tells
    assert result["runs"]["b"]["label"] == "Baseline CNN from scratch (optimizer sgd)"
    assert {"a", "b", "difference", "ci95"} <= set(result["accuracy"])
    assert {"a_only_right", "b_only_right", "p_value"} <= set(result["mcnemar"])
    assert {"class", "recall_a", "recall_b", "difference"} <= set(result["per_class"][0])
    assert len(result["curves"]["a"]) == 2 and result["curves"]["a"][0]["phase"] == "scratch"
    # --data: both models score the folder now (as `evaluate --data`), and the comparison is on those photos.
    on_folder = compare_runs(*made, data=tiny_flowers / "val", replicates=200)
    assert on_folder["source"] == str(tiny_flowers / "val") and on_folder["photos"] == 12
    assert on_folder["accuracy"]["a"] == pytest.approx(result["accuracy"]["a"])  # the same photos as its own split
    assert made[0].read_named_evaluation("val")["images"] == 12
    # those are the runs' validation photos (early stopping chose on them): said, so no one takes it for new photos
    assert on_folder["trained_on"] == {"a": 12, "b": 12} and "not how it does on new photos" in on_folder["warning"]
    again = shutil.copytree(tiny_flowers / "val", tmp_path / "uploaded-again")  # the same photos, another folder
    assert compare_runs(*made, data=again, replicates=100)["trained_on"] == {"a": 12, "b": 12}
    unseen = tmp_path / "unseen"
    for cls in ("daisy", "roses", "tulips"):
        (unseen / cls).mkdir(parents=True)
        for f in flower_files(flowers_dir, cls, 12, "val")[8:]:  # not among the 4 validation photos the runs saw
            shutil.copy(f, unseen / cls / f.name)
    fresh = compare_runs(*made, data=unseen, replicates=100)
    assert fresh["trained_on"] == {"a": 0, "b": 0} and "warning" not in fresh
    other = fake_run(models, "run-other", [0, 1, 2], [0, 1, 2], classes=["cats", "dogs", "owls"])
    refused = run_cli("--models-dir", str(models), "compare", made[0].run_id, other.run_id)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: Cannot compare run A") and "run-other" in refused.stderr
