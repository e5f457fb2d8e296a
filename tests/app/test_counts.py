"""Counts that agree (issue 12, point 5): mistakes shown as "N of M" with M from the confusion matrix, and the
Data page's split sentence right for every folder layout, plain or zipped."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import write_png
from core.data.datasets import describe_split, scan, split_samples
from core.network.device import DeviceInfo
from core.data.ingest import ingest_zip
from core.results.metrics import error_count, evaluation_report, mistake_count
from core.base.runs import RunDir

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["daisy", "roses"]
FLAT = ("The images are in class folders with no train/ or val/ folder, so 25% of each class is picked at random "
        "(seeded) for validation and the rest is trained on.")
CARVED = ("The dataset has a train/ folder but no val/ folder with images, so 25% of each class in train/ is picked "
          "at random (seeded) for validation and the rest is trained on.")
TRAIN_TEST = ("The dataset has train/ and test/ folders but no val/ folder. The default recipe learns from every image "
              "in train/, choosing its regularisation by 5-fold cross-validation, and is scored on test/. Fine-tuning "
              "and epoch training need a validation split: for them 25% of each class in train/ is picked at random "
              "(seeded) for it.")

# layout name -> (images per class in each folder, None for flat), the sentence, val share used, test set made
LAYOUTS = {
    "flat": (None, FLAT, True, False),
    "train": ({"train": 4}, CARVED, True, False),
    "train+val": ({"train": 4, "val": 2}, "The dataset's own train/ and val/ folders are used as they are.",
                  False, False),
    "train+val+test": ({"train": 4, "val": 2, "test": 2},
                       "The dataset's own train/, val/ and test/ folders are used as they are.", False, True),
    "train+test": ({"train": 4, "test": 2}, TRAIN_TEST, True, True),
}


def layout_files(splits: dict[str, int] | None, top: str = "") -> dict[str, bytes]:
    """Relative name -> PNG bytes for a tiny dataset: class folders, or class folders inside split folders."""
    groups = {"": 4} if splits is None else {f"{name}/": n for name, n in splits.items()}
    files, seed = {}, 0
    for prefix, n in groups.items():
        for cls in CLASSES:
            for i in range(n):
                seed += 1
                files[f"{top}{prefix}{cls}/{i}.png"] = png(seed)
    return files


def png(seed: int) -> bytes:
    """A small random PNG like write_png's, as bytes to put in a zip."""
    import cv2

    ok, data = cv2.imencode(".png", np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


def make_folder(root: Path, splits: dict[str, int] | None) -> Path:
    seed = 0
    for prefix in [""] if splits is None else list(splits):
        for cls in CLASSES:
            for i in range(4 if splits is None else splits[prefix]):
                seed += 1
                write_png(root / prefix / cls / f"{i}.png", seed=seed)
    return root


def make_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("__MACOSX/._junk", b"junk")
    return buffer.getvalue()


def check_against_split(dataset, expected: tuple, val_fraction: float = 0.25) -> None:
    """The sentence, and what split_samples really does: the val share matters iff the sentence says it does."""
    _, sentence, uses_val, has_test = expected
    described = describe_split(dataset, val_fraction, 0.0)
    assert described.sentence == sentence
    assert described.uses_val_fraction is uses_val
    quarter, half = split_samples(dataset, 0.25, 0.0), split_samples(dataset, 0.5, 0.0)
    assert (len(quarter["val"]) != len(half["val"])) is uses_val
    assert bool(quarter["test"]) is has_test and quarter["val"] and quarter["train"]


# ----------------------------------------------------------------------------------------- split sentence
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_split_sentence_for_each_folder_layout(tmp_path: Path, layout: str) -> None:
    check_against_split(scan(make_folder(tmp_path / "data", LAYOUTS[layout][0])), LAYOUTS[layout])


@pytest.mark.parametrize("wrapped", [True, False], ids=["zip-with-top-folder", "zip-without"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_split_sentence_for_each_zip_layout(tmp_path: Path, layout: str, wrapped: bool) -> None:
    archive = make_zip(layout_files(LAYOUTS[layout][0], top="flowers/" if wrapped else ""))
    folder = ingest_zip(archive, "flowers.zip", destination=tmp_path / "datasets")
    dataset = scan(folder)
    assert (dataset.root.name == "flowers") is wrapped  # resolve_root went through the zip's top folder
    check_against_split(dataset, LAYOUTS[layout])


def test_split_sentence_names_the_folders_as_spelled(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"Training": 4, "valid": 2})
    assert describe_split(scan(root)).sentence == "The dataset's own Training/ and valid/ folders are used as they are."


def test_a_val_folder_without_images_is_carved_like_none(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"train": 4})
    (root / "val" / "daisy").mkdir(parents=True)
    (root / "val" / "daisy" / "notes.txt").write_text("not an image")
    dataset = scan(root)
    assert dataset.report.layout == "split_folders"
    check_against_split(dataset, LAYOUTS["train"])


def test_split_sentence_says_where_the_shares_go(tmp_path: Path) -> None:
    flat = scan(make_folder(tmp_path / "flat", None))
    assert describe_split(flat, 0.2, 0.1).sentence == (
        "The images are in class folders with no train/ or val/ folder, so 20% of each class is picked at random "
        "(seeded) for validation, 10% for the final test, and the rest is trained on.")
    assert describe_split(flat, 0.2, 0.1).uses_test_fraction
    assert "nothing is held out for validation" in describe_split(flat, 0.0).sentence
    train_only = scan(make_folder(tmp_path / "train-only", {"train": 4}))
    # split_samples carves 20% when asked for none, and gives no test set from train/: the sentence says both.
    described = describe_split(train_only, 0.0, 0.2)
    assert "so 20% of each class in train/" in described.sentence and not described.uses_test_fraction
    assert described.sentence.endswith("No test set is made: the test share applies only to class folders "
                                       "without train/.")
    assert not split_samples(train_only, 0.0, 0.2)["test"]
    assert "so 12.5% of each class is picked" in describe_split(flat, 0.125).sentence


# ----------------------------------------------------------------------------------------- mistake counts
def test_evaluation_report_counts_every_error_beyond_the_listed_mistakes() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    probs = rng.dirichlet(np.ones(3), size=len(labels))
    report = evaluation_report(probs, labels, ["a", "b", "c"], [f"p{i}" for i in range(len(labels))], "val")
    wrong = int(np.sum(probs.argmax(axis=1) != labels))
    assert wrong > 24 and len(report["mistakes"]) == 24
    assert report["mistakes_total"] == wrong == error_count(report["confusion_matrix"])
    assert mistake_count(report) == wrong
    json.dumps(report)  # a plain int, so evaluation.json can be written


def test_mistake_count_of_an_older_report_comes_from_its_confusion_matrix() -> None:
    old = {"confusion_matrix": [[20, 3, 1], [5, 10, 0], [0, 43, 0]], "mistakes": [{"path": "x"}] * 24}
    assert mistake_count(old) == 52
    assert mistake_count({"confusion_matrix": [[4, 0], [0, 4]]}) == 0
    assert mistake_count({}) == 0 and error_count([]) == 0


# ----------------------------------------------------------------------------------------- the pages
@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty shared workspace, an empty demo folder, a fast fake device and fresh Streamlit caches."""
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("STUDIO_SHARED_WORKSPACE", "1")
    monkeypatch.setenv("STUDIO_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setattr("core.network.device.detect_device", lambda: DeviceInfo("tensorflow", "cpu", "CPU only", 1))
    monkeypatch.setattr("core.data.samples.is_online", lambda *a, **k: False)
    monkeypatch.setattr("core.serving.bundle.open_runner", lambda path, threads=None: lambda images: None)  # no LiteRT
    st.cache_data.clear()
    st.cache_resource.clear()
    return tmp_path / "ws"


def evaluation_json(errors: int, listed: int, root: Path, with_total: bool = True) -> dict:
    """An evaluation.json whose confusion matrix holds `errors` errors, `listed` of them in `mistakes`."""
    matrix = [[30, errors], [0, 30]]
    report = {"split": "val", "images": 60 + errors, "classes": CLASSES, "accuracy": 60 / (60 + errors),
              "top_k": 1, "top_k_accuracy": 60 / (60 + errors), "macro_auc": 0.9, "confusion_matrix": matrix,
              "per_class": [{"class": c, "precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 30} for c in CLASSES],
              "most_confused": [{"true": "daisy", "predicted": "roses", "count": errors}] if errors else [],
              "mistakes": [{"path": f"daisy/{i}.png", "true": "daisy", "predicted": "roses", "confidence": 0.9,
                            "true_probability": 0.1} for i in range(listed)], "root": str(root)}
    if with_total:
        report["mistakes_total"] = errors
    return report


def make_run(runs_dir: Path, evaluation: dict) -> RunDir:
    run = RunDir.create(runs_dir, "run-a")
    run.write_config({"data": "/nowhere", "backbone": "efficientnet_lite0", "image_size": 96,
                      "resolved": {"image_size": 96}})
    run.write_classes(CLASSES)
    run.set_status("succeeded", pid=999_999, phase="done")
    run.file("model.keras").write_bytes(b"fake")
    run.write_evaluation(evaluation)
    return run


def evaluate_page() -> AppTest:
    """Evaluate with run-a chosen (as "Evaluate this run" does): with 52 errors it is no better than always
    answering the commonest class, so it would not be preselected on its own."""
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=30)
    at.query_params["run"] = "run-a"
    at.run()
    at.switch_page("pages/evaluate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def markdown(at: AppTest) -> str:
    """What the page says in markdown, captions and alerts, joined."""
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "info", "warning", "error")
                     for e in getattr(at, kind))


@pytest.mark.parametrize("with_total", [True, False], ids=["new-report", "report-before-mistakes_total"])
def test_evaluate_shows_listed_mistakes_of_all_errors(workspace: Path, with_total: bool) -> None:
    make_run(workspace / "runs", evaluation_json(52, 24, workspace / "gone", with_total))
    text = markdown(evaluate_page())
    assert "Most confident mistakes: 24 of 52 shown" in text and "no longer at" in text
    assert "not offered by default" in text and "no better than always answering 'daisy'" in text
    assert "in all" not in text


def test_evaluate_counts_the_pictures_it_shows(workspace: Path) -> None:
    root = workspace.parent / "data"
    for i in range(24):
        write_png(root / "daisy" / f"{i}.png", seed=i)
    make_run(workspace / "runs", evaluation_json(52, 24, root))
    at = evaluate_page()
    assert "Most confident mistakes: 18 of 52 shown" in markdown(at)  # three rows of six pictures
    assert len(at.get("image")) == 18


def test_evaluate_says_when_there_is_no_mistake(workspace: Path) -> None:
    make_run(workspace / "runs", evaluation_json(0, 0, workspace / "gone", with_total=False))
    text = markdown(evaluate_page())
    assert "No mistakes on this split." in text and " of 0" not in text


def test_a_demo_bundle_reads_the_same_way(workspace: Path) -> None:
    folder = workspace.parent / "demo" / "run-demo-tflite"
    (folder / "mistakes").mkdir(parents=True)
    evaluation = evaluation_json(52, 24, Path("."), with_total=False)  # a bundle made before mistakes_total
    for i, mistake in enumerate(evaluation["mistakes"][:2]):  # only two thumbnails: the rest show no picture
        write_png(folder / "mistakes" / f"{i:02d}.jpg", seed=i)
        mistake.update(path=f"mistakes/{i:02d}.jpg", original_path=mistake["path"])
    for name, value in {"evaluation.json": evaluation, "classes.json": CLASSES, "config.json": {},
                        "manifest.json": {"bundle_version": 1, "run_id": "run-demo", "backbone": "efficientnet_lite0",
                                          "image_size": 96, "format": "tflite", "model_file": "model.tflite"}}.items():
        (folder / name).write_text(json.dumps(value))
    (folder / "metrics.jsonl").write_text("")
    (folder / "model.tflite").write_bytes(b"not really a model")
    text = markdown(evaluate_page())
    assert "Demo bundle of run run-demo" in text
    assert "Most confident mistakes: 2 of 52 shown" in text


def test_data_page_says_val_is_carved_from_a_zipped_train_folder(workspace: Path) -> None:
    archive = make_zip(layout_files({"train": 4}, top="flowers/"))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=30).run()
    zip_uploader = at.file_uploader(key="zip_upload")
    zip_uploader.set_value(("flowers.zip", archive, "application/zip")).run()
    assert not at.exception, [e.value for e in at.exception]
    text = markdown(at)
    assert "The dataset has a train/ folder but no val/ folder with images, so 20% of each class" in text
    assert "own train/val folders" not in text
    share = at.slider(key="val_fraction")
    assert not share.disabled
    share.set_value(0.5).run()
    assert "so 50% of each class in train/" in markdown(at)
    table = at.dataframe[0].value
    assert list(table["val"]) == [2, 2] and list(table["train"]) == [2, 2]


def test_data_page_keeps_the_share_off_when_val_is_given(workspace: Path) -> None:
    archive = make_zip(layout_files({"train": 4, "val": 2}, top="flowers/"))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=30).run()
    zip_uploader = at.file_uploader(key="zip_upload")
    zip_uploader.set_value(("flowers.zip", archive, "application/zip")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "The dataset's own train/ and val/ folders are used as they are." in markdown(at)
    assert at.slider(key="val_fraction").disabled
