"""Issue 16.3 in core: ECE and reliability bins, per-photo predictions and cell look-up, the "unknown" threshold
(rule, where its held-out photos come from, what the trainer saves), named evaluations beside evaluation.json,
test folders with a class the run does not know, and Classify saying "unknown"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import flower_files, write_png
from core import StudioError
from core.results.evaluate import held_out_for_threshold
from core.results.metrics import (ECE_BINS, bin_index, cell_photos, evaluation_report, expected_calibration_error,
                          reliability_bins, unknown_threshold)
from core.serving.predict import result_rows, unknown_reason
from core.base.runs import RunDamaged, RunDir, calibration_problem, evaluation_problem

CLASSES = ["daisy", "roses", "tulips"]


# ------------------------------------------------------------------------------------------------ ECE
def test_ece_of_a_constructed_case_is_the_weighted_gap():
    # 10 photos at 95% confidence, 7 right (gap 0.25); 10 at 55%, 6 right (gap 0.05): ECE = 0.5*0.25 + 0.5*0.05.
    confidence = np.array([0.95] * 10 + [0.55] * 10)
    correct = np.array([1] * 7 + [0] * 3 + [1] * 6 + [0] * 4, bool)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.15)
    table = reliability_bins(confidence, correct)
    assert table["bins"] == ECE_BINS == len(table["counts"]) == 15
    assert table["counts"][14] == 10 and table["counts"][8] == 10 and sum(table["counts"]) == 20
    assert table["accuracy"][14] == pytest.approx(0.7) and table["confidence"][8] == pytest.approx(0.55)
    assert table["accuracy"][0] is None and table["confidence"][0] is None  # empty bins have no mean


def test_bins_are_equal_width_and_closed_on_the_right():
    assert bin_index(np.array([0.0, 1 / 15, 0.0667, 0.5, 14 / 15, 0.94, 1.0])).tolist() == [0, 0, 1, 7, 13, 14, 14]


def test_a_calibrated_model_has_no_ece_and_an_overconfident_one_does():
    rng = np.random.default_rng(0)
    confidence = np.repeat(np.linspace(0.4, 1.0, 13), 400)
    correct = rng.random(len(confidence)) < confidence  # right exactly as often as it says, up to noise
    assert expected_calibration_error(confidence, correct) < 0.03
    assert expected_calibration_error(np.full(100, 0.99), np.arange(100) < 60) == pytest.approx(0.39)


# ------------------------------------------------------------------------------------------------ predictions
def report_of(matrix: list[list[int]]) -> dict:
    probs, labels, paths = [], [], []
    for true, row in enumerate(matrix):
        for predicted, count in enumerate(row):
            for k in range(count):
                p = np.full(3, 0.1)
                p[predicted] = 0.6 + 0.1 * k
                probs.append(p / p.sum())
                labels.append(true)
                paths.append(f"{CLASSES[true]}/{predicted}-{k}.png")
    return evaluation_report(np.array(probs), np.array(labels), CLASSES, paths, "test")


def test_every_photo_is_kept_and_a_cell_lists_its_photos():
    report = report_of([[3, 2, 0], [1, 4, 0], [0, 1, 3]])
    table = report["predictions"]
    assert len(table["paths"]) == len(table["true"]) == len(table["predicted"]) == report["images"] == 14
    assert evaluation_problem(report) is None
    wrong = cell_photos(report, 0, 1)
    assert [p["path"] for p in wrong] == ["daisy/1-1.png", "daisy/1-0.png"]  # mistakes: most confident first
    right = cell_photos(report, 1, 1)
    assert len(right) == 4 and [p["confidence"] for p in right] == sorted(p["confidence"] for p in right)
    assert all(p["true"] == p["predicted"] == "roses" for p in right)
    assert cell_photos(report, 2, 0) == []
    for row in range(3):
        for column in range(3):
            assert len(cell_photos(report, row, column)) == report["confusion_matrix"][row][column]
    old = {k: v for k, v in report.items() if k != "predictions"}
    assert cell_photos(old, 0, 1) is None  # a report from before 16.3 lists none


def test_macro_f1_counts_only_classes_with_photos():
    report = report_of([[3, 1, 0], [0, 0, 0], [0, 0, 2]])  # no roses photo: its F1 is left out of the mean
    f1 = {row["class"]: row["f1"] for row in report["per_class"]}
    assert report["macro_f1"] == pytest.approx((f1["daisy"] + f1["tulips"]) / 2)


@pytest.mark.parametrize("change, problem", [
    (lambda r: r["predictions"]["true"].__setitem__(0, 3), "class index outside 0..2"),
    (lambda r: r["predictions"]["paths"].__setitem__(0, "../../etc/passwd"), "points outside"),
    (lambda r: r["predictions"]["confidence"].pop(), "of one length"),
    (lambda r: r.__setitem__("ece", 1.5), "'ece' is"),
    (lambda r: r["reliability"]["accuracy"].pop(), "no accuracy per bin"),
])
def test_damaged_new_fields_are_named(change, problem):
    report = report_of([[2, 1, 0], [0, 2, 0], [0, 0, 2]])
    change(report)
    assert problem in evaluation_problem(report)


# ------------------------------------------------------------------------------------------------ "unknown"
def test_the_threshold_keeps_95_percent_of_the_correct_held_out_predictions():
    right = np.linspace(0.50, 0.975, 20)  # 20 right answers, 0.500 .. 0.975
    wrong = np.array([0.40, 0.45, 0.52, 0.90])
    chosen = unknown_threshold(np.concatenate([right, wrong]), np.array([True] * 20 + [False] * 4))
    assert chosen["threshold"] == pytest.approx(right[1])  # 1 of 20 right answers (5%) falls below it
    assert chosen["kept_correct"] == pytest.approx(0.95) and chosen["correct"] == 20 and chosen["photos"] == 24
    assert chosen["flagged_wrong"] == pytest.approx(0.75)  # 0.40, 0.45, 0.52 become unknown; 0.90 does not
    assert chosen["accepted_accuracy"] == pytest.approx(19 / 20)
    assert unknown_threshold(np.array([0.9, 0.8]), np.array([False, False])) is None
    few = unknown_threshold(np.array([0.6, 0.7, 0.8]), np.array([True, True, True]))
    assert few["threshold"] == pytest.approx(0.6)  # 5% of 3 is no whole photo: every right answer kept


def test_the_held_out_photos_are_never_the_scored_split_when_another_choice_exists():
    both = {"val": ["v"], "test": ["t"]}
    assert held_out_for_threshold(both, "test", out_of_fold=True) == "validation"
    assert held_out_for_threshold({"val": [], "test": ["t"]}, "test", out_of_fold=True) == "out_of_fold"
    assert held_out_for_threshold({"val": ["v"], "test": []}, "val", out_of_fold=True) == "out_of_fold"
    assert held_out_for_threshold({"val": ["v"], "test": []}, "val", out_of_fold=False) == "validation"
    assert held_out_for_threshold({"val": [], "test": ["t"]}, "test", out_of_fold=False) is None


def test_classify_rows_read_unknown_below_the_threshold_and_keep_the_best_guess():
    results = [[{"class": "roses", "probability": 0.55}, {"class": "daisy", "probability": 0.45}],
               [{"class": "daisy", "probability": 0.9}, {"class": "roses", "probability": 0.1}]]
    rows = result_rows(["a.png", "b.png"], results, threshold=0.6)
    assert [r["predicted"] for r in rows] == ["unknown", "daisy"] and rows[0]["top_k"].startswith("roses 0.550")
    assert [r["predicted"] for r in result_rows(["a.png", "b.png"], results)] == ["roses", "daisy"]
    assert unknown_reason({"threshold": 0.62, "source": "validation"}) == \
        "below the 62% confidence threshold chosen on validation photos"
    assert calibration_problem({"threshold": 1.2, "source": "validation", "photos": 3}).startswith("'threshold'")


# ------------------------------------------------------------------------------------------------ evaluate_run
def fake_run(models: Path, root: Path) -> RunDir:
    run = RunDir.create(models, "run-x")
    run.write_config({"data": str(root), "image_size": 96, "resolved": {"image_size": 96}})
    run.write_classes(CLASSES)
    samples = {"train": [[f"{c}/{i}.png", k] for k, c in enumerate(CLASSES) for i in range(2)],
               "val": [[f"{c}/v{i}.png", k] for k, c in enumerate(CLASSES) for i in range(2)],
               "test": [[f"{c}/t{i}.png", k] for k, c in enumerate(CLASSES) for i in range(2)]}
    for seed, (path, _) in enumerate(samples["train"] + samples["val"] + samples["test"]):
        write_png(root / path, seed=seed)
    run.write_split({"root": str(root), "classes": CLASSES, **samples})
    run.file("model.keras").write_bytes(b"fake")
    return run


@pytest.fixture
def no_model(monkeypatch):
    """evaluate_run for real (scan, cache, report, files) but with a model that answers 'daisy' for everything."""
    monkeypatch.setattr("core.results.evaluate.load_run_model", lambda run: object())

    def daisy_for_all(model, images, batch_size=32, tta=False, on_batch=None):
        return np.tile([0.8, 0.1, 0.1], (len(images), 1))

    monkeypatch.setattr("core.results.evaluate.score_images", daisy_for_all)


def test_named_evaluations_never_overwrite_the_runs_own(tmp_path, no_model, capsys):
    from core.cli import main
    from core.results.evaluate import evaluate_run

    run = fake_run(tmp_path / "models", tmp_path / "data")
    own = evaluate_run(run)
    assert own["split"] == "test" and "name" not in own
    written = run.file("evaluation.json").read_bytes()
    other = tmp_path / "field-photos"
    for i in range(2):
        write_png(other / "roses" / f"{i}.png", seed=50 + i)
    named = evaluate_run(run, data=other)
    assert named["name"] == "field-photos" and named["dataset"] == "field-photos" and named["split"] == "data"
    assert named["classes"] == CLASSES and named["confusion_matrix"][1] == [2, 0, 0]
    train = evaluate_run(run, split="train")  # a split the run is not scored on is named too
    assert train["name"] == "train-split"
    assert run.file("evaluation.json").read_bytes() == written
    assert sorted(run.named_evaluations()) == ["field-photos", "train-split"]
    assert run.read_named_evaluation("field-photos")["images"] == 2
    assert run.read_named_evaluation("../evaluation") is None  # names are file stems, never paths
    # The CLI keeps printing the JSON of what it evaluated.
    capsys.readouterr()
    assert main(["--models-dir", str(tmp_path / "models"), "evaluate", "run-x", "--data", str(other)]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "field-photos"
    assert run.file("evaluation.json").read_bytes() == written
    run.file("evaluations/field-photos.json").write_text('{"classes": "x"}')
    with pytest.raises(RunDamaged, match="evaluations/field-photos.json is damaged"):
        run.read_named_evaluation("field-photos")


def test_an_older_run_gets_its_threshold_from_its_validation_split(tmp_path, no_model):
    from core.results.evaluate import calibrate_run

    run = fake_run(tmp_path / "models", tmp_path / "data")
    assert run.read_calibration() is None  # trained before thresholds: Classify works without one
    calibration = calibrate_run(run)
    assert calibration == run.read_calibration()
    assert calibration["source"] == "validation" and calibration["photos"] == 6 and calibration["correct"] == 2
    assert calibration["threshold"] == pytest.approx(0.8) and calibration["flagged_wrong"] == 0.0


def test_a_test_folder_with_an_unknown_class_is_refused_naming_it(tmp_path, no_model):
    from core.results.evaluate import evaluate_run

    run = fake_run(tmp_path / "models", tmp_path / "data")
    other = tmp_path / "with-cats"
    write_png(other / "daisy" / "0.png", seed=1)
    write_png(other / "cats" / "0.png", seed=2)
    with pytest.raises(StudioError) as refused:
        evaluate_run(run, data=other)
    assert "'cats'" in str(refused.value) and "not trained on" in str(refused.value)
    assert "daisy, roses, tulips" in str(refused.value) and str(tmp_path) not in str(refused.value)
    assert run.named_evaluations() == []


# ------------------------------------------------------------------------------------------------ the trainer
@pytest.fixture(scope="module")
def split_folders(tmp_path_factory, flowers_dir) -> Path:
    """3 classes as train/ (6 each), val/ (3 each) and test/ (3 each) folders of real photos."""
    root = tmp_path_factory.mktemp("folders") / "flowers"
    for cls in CLASSES:
        photos = flower_files(flowers_dir, cls, 12)
        for split, chosen in (("train", photos[:6]), ("val", photos[6:9]), ("test", photos[9:12])):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for photo in chosen:
                shutil.copy(photo, root / split / cls / photo.name)
    return root


def test_the_trainer_chooses_the_threshold_on_held_out_photos_and_keeps_every_prediction(tmp_path, split_folders):
    from core.base.config import TrainConfig
    from core.training.train import run_training

    # No val/ folder: the head is cross-validated, so the out-of-fold predictions of the training photos choose it.
    no_val = tmp_path / "no-val"
    shutil.copytree(split_folders / "train", no_val / "train")
    shutil.copytree(split_folders / "test", no_val / "test")
    run = run_training(TrainConfig(data=str(no_val), image_size=64), models_dir=tmp_path / "a")
    calibration = run.read_calibration()
    assert calibration["source"] == "out_of_fold" and calibration["photos"] == 18  # every training photo
    assert 0 < calibration["threshold"] <= 1 and calibration_problem(calibration) is None
    evaluation = run.read_evaluation()
    assert evaluation["split"] == "test" and len(evaluation["predictions"]["paths"]) == evaluation["images"] == 9
    assert 0 <= evaluation["ece"] <= 1 and sum(evaluation["reliability"]["counts"]) == 9
    # A val/ folder: scored after the test split, it chooses the threshold (the test photos never do).
    run = run_training(TrainConfig(data=str(split_folders), image_size=64), models_dir=tmp_path / "b")
    calibration = run.read_calibration()
    assert calibration["source"] == "validation" and calibration["photos"] == 9
    assert run.read_evaluation()["split"] == "test"
    phase = next(m for m in run.read_metrics() if m.get("kind") == "phase" and m["phase"] == "evaluate")
    assert phase["done"] == 18  # 9 test + 9 validation photos
    # `python -m core predict` flags a photo below the threshold, keeping its best guess.
    from core.serving.predict import Classifier

    [result] = Classifier(run).classify_files([sorted((split_folders / "test" / "roses").iterdir())[0]])
    assert result["unknown"] == (result["confidence"] < calibration["threshold"])


# ------------------------------------------------------------------------------------------------ Classify
def test_classify_says_unknown_below_the_runs_threshold_with_a_switch_to_turn_it_off(tmp_path, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from core.network.device import DeviceInfo
    from test_app import APP, FakeClassifier, make_run, png_bytes

    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("STUDIO_SHARED_WORKSPACE", "1")
    monkeypatch.setattr("core.network.device.detect_device", lambda: DeviceInfo("tensorflow", "cpu", "CPU only", 1))
    monkeypatch.setattr("pages._loaders.load_classifier", lambda run: FakeClassifier())  # roses at 70%
    monkeypatch.setattr("core.results.cam.heatmap_for", lambda model, image, index, size: image)
    st.cache_data.clear()
    st.cache_resource.clear()
    run = make_run(tmp_path / "ws" / "runs", "run-a")
    run.write_calibration({"threshold": 0.8, "source": "validation", "photos": 40, "keep": 0.95,
                           "kept_correct": 0.95, "flagged_wrong": 0.6})
    at = AppTest.from_file(APP, default_timeout=30).run()
    at.switch_page("pages/classify.py").run()
    at.file_uploader(key="photos").set_value([("a.png", png_bytes(1), "image/png")]).run()
    assert not at.exception, [e.value for e in at.exception]
    said = "\n".join(m.value for m in at.markdown)
    assert "unknown (below the 80% confidence threshold chosen on validation photos); best guess roses (70.0%)" \
        in said
    assert list(at.dataframe[0].value["predicted"]) == ["unknown"]
    at.toggle(key="use_unknown").set_value(False).run()
    assert list(at.dataframe[0].value["predicted"]) == ["roses"]
    assert "**a.png**: roses (70.0%)" in "\n".join(m.value for m in at.markdown)
    run.file("calibration.json").unlink()  # a run without a threshold classifies as before, with no switch
    at.run()
    assert not at.exception and not [t for t in at.toggle if t.key == "use_unknown"]
