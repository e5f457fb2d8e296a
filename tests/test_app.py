"""The app through its entry point with Streamlit's AppTest: every page, with heavy core calls replaced by fast ones."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import jobs
from core.device import DeviceInfo
from core.runs import RunDir

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "streamlit_app.py")
PAGES = ["pages/data.py", "pages/augment.py", "pages/train.py", "pages/evaluate.py", "pages/classify.py"]
CLASSES = ["daisy", "roses", "tulips"]


def png_bytes(seed: int, size: int = 40) -> bytes:
    """A small random RGB PNG (distinct per seed, so no duplicates)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def folder_files(classes=CLASSES, per_class: int = 4) -> list[tuple[str, bytes, str]]:
    """What the directory uploader sends: relative names that start with the picked folder."""
    return [(f"my-flowers/{name}/{i}.png", png_bytes(100 * c + i), "image/png")
            for c, name in enumerate(classes) for i in range(per_class)]


def make_run(runs_dir: Path, run_id: str, state: str = "succeeded", evaluation: bool = True,
             pid: int | None = None) -> RunDir:
    """A run folder as the trainer leaves it (model file faked), for pages that only read run folders."""
    run = RunDir.create(runs_dir, run_id)
    run.write_config({"data": "/nowhere", "backbone": "efficientnet_lite0", "image_size": 96, "head_epochs": 3,
                      "finetune_epochs": 1, "augmentation": [{"name": "HorizontalFlip", "p": 0.5}],
                      "resolved": {"image_size": 96}})
    run.write_classes(CLASSES)
    run.set_status(state, pid=pid or 999_999, phase="head" if state == "running" else "done", epoch=2,
                   phase_epoch=2, phase_epochs=3, step=1, steps=2, images_per_s=50.0, eta_seconds=12,
                   message="", error="Class 'x' has no usable image; add images." if state == "failed" else None)
    for epoch, phase in enumerate(["head", "head", "finetune"][: 2 if state == "running" else 3], start=1):
        run.log_metrics({"kind": "epoch", "phase": phase, "epoch": epoch, "loss": 1.0 / epoch,
                         "accuracy": 0.5 + 0.1 * epoch, "val_loss": 1.2 / epoch, "val_accuracy": 0.4 + 0.1 * epoch,
                         "lr": 1e-3 if phase == "head" else 1e-5})
    if state != "failed":
        run.file("model.keras").write_bytes(b"fake")
    if evaluation and state in ("succeeded", "stopped"):
        matrix = [[3, 1, 0], [0, 4, 0], [1, 0, 3]]
        run.write_evaluation({"split": "val", "images": 12, "classes": CLASSES, "accuracy": 10 / 12, "top_k": 1,
                              "top_k_accuracy": 10 / 12, "macro_auc": 0.9, "confusion_matrix": matrix,
                              "per_class": [{"class": c, "precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 4}
                                            for c in CLASSES],
                              "most_confused": [{"true": "daisy", "predicted": "roses", "count": 1}],
                              "mistakes": [{"path": "daisy/0.png", "true": "daisy", "predicted": "roses",
                                            "confidence": 0.7, "true_probability": 0.2}],
                              "root": str(runs_dir.parent / "gone")})
    return run


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty shared workspace (so tests can look inside it), a fast fake device, and fresh Streamlit caches.

    Per-session workspaces (the default) are tested in tests/test_hardening.py.
    """
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("STUDIO_SHARED_WORKSPACE", "1")
    monkeypatch.setattr("core.device.detect_device", lambda: DeviceInfo("tensorflow", "cpu", "CPU only", 1))
    monkeypatch.setattr("core.samples.is_online", lambda *a, **k: False)
    st.cache_data.clear()
    st.cache_resource.clear()
    return tmp_path / "ws"


def app() -> AppTest:
    """The app, run once from its entry point."""
    return AppTest.from_file(APP, default_timeout=30).run()


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def texts(at: AppTest) -> str:
    """Everything the page says in markdown, captions, alerts and headings, joined."""
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success", "title",
                                  "subheader") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def test_every_page_renders_on_an_empty_workspace(workspace: Path) -> None:
    at = app()
    no_exceptions(at)
    assert "Device:** CPU only" in "\n".join(m.value for m in at.sidebar.markdown)
    for page in PAGES:
        at.switch_page(page).run()
        no_exceptions(at)
    at.switch_page("pages/augment.py").run()
    assert "No dataset yet" in texts(at)
    at.switch_page("pages/evaluate.py").run()
    assert "No trained model yet" in texts(at)
    at.switch_page("pages/classify.py").run()
    assert "No trained model yet" in texts(at)


def test_sample_dataset_shows_the_report(workspace: Path, flowers_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_SAMPLE_DIR", str(flowers_dir))
    at = app()
    next(b for b in at.button if b.label == "Use flowers-mini").click().run()
    no_exceptions(at)
    assert [m.value for m in at.metric][:2] == ["5", "400"]
    assert "Ready to train" in texts(at)
    assert "flowers-mini" in "\n".join(m.value for m in at.sidebar.markdown)


def test_missing_sample_says_where_to_put_it(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("core.samples.flowers_mini_candidates", lambda: [workspace / "nowhere" / "flowers-mini"])
    at = app()
    assert any("was not found" in w.value and "flowers-mini" in w.value for w in at.warning)


def test_folder_upload_becomes_the_current_dataset(workspace: Path) -> None:
    at = app()
    uploader = next(u for u in at.file_uploader if u.accept_directory)
    uploader.set_value(folder_files()).run()
    no_exceptions(at)
    assert [m.value for m in at.metric][:2] == ["3", "12"]
    folders = list((workspace / "datasets").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("my-flowers-")
    assert sorted(p.name for p in (folders[0] / "my-flowers").iterdir()) == CLASSES


def test_zip_upload_becomes_the_current_dataset(workspace: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, _ in folder_files(per_class=3):
            archive.writestr(name, data)
        archive.writestr("__MACOSX/my-flowers/._x.png", b"junk")
    at = app()
    zip_uploader = next(u for u in at.file_uploader if not u.accept_directory and "zip" in u.allowed_type[0])
    zip_uploader.set_value(("flowers.zip", buffer.getvalue(), "application/zip")).run()
    no_exceptions(at)
    assert [m.value for m in at.metric][:2] == ["3", "9"]


def test_untrainable_data_blocks_the_train_page(workspace: Path) -> None:
    at = app()
    next(u for u in at.file_uploader if u.accept_directory).set_value(folder_files(classes=["only"])).run()
    assert any("at least 2 classes" in e.value for e in at.error)
    at.switch_page("pages/train.py").run()
    no_exceptions(at)
    assert any("cannot be trained on" in e.value for e in at.error)
    assert not [b for b in at.button if b.label == "Start training"]


def test_augment_presets_custom_switches_and_json(workspace: Path) -> None:
    at = app()
    next(u for u in at.file_uploader if u.accept_directory).set_value(folder_files()).run()
    at.switch_page("pages/augment.py").run()
    no_exceptions(at)
    assert "Preview" in texts(at) and "Training will use:** HorizontalFlip" in texts(at)
    at.radio(key="aug_mode").set_value("seed").run()
    assert "Rotate p=0.5" in texts(at)
    at.radio(key="aug_mode").set_value("custom").run()
    at.toggle(key="aug_on_VerticalFlip").set_value(True).run()
    no_exceptions(at)
    saved = json.loads((workspace / "state.json").read_text())["augmentation"]
    assert {"name": "VerticalFlip", "p": 0.5} in saved
    at.text_area(key="aug_json").set_value('[{"name": "Rotat", "p": 0.5}]').run()
    next(b for b in at.button if b.label == "Apply JSON").click().run()
    assert any("did you mean 'Rotate'" in e.value for e in at.error)
    next(b for b in at.button if b.label == "Re-draw").click().run()
    assert "Seed 1." in texts(at)


def test_start_launches_a_job_and_shows_it(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launched = {}

    def fake_start(config, models_dir, run_name="", lock_dir=None):
        launched["config"] = config
        return make_run(Path(models_dir), "run-fake-1", state="running", pid=os.getpid())

    monkeypatch.setattr("core.jobs.start_training", fake_start)
    at = app()
    next(u for u in at.file_uploader if u.accept_directory).set_value(folder_files()).run()
    at.switch_page("pages/train.py").run()
    no_exceptions(at)
    next(b for b in at.button if b.label == "Start training").click().run()
    no_exceptions(at)
    config = launched["config"]
    assert (config.backbone, config.image_size, config.finetune_epochs) == ("efficientnet_lite0", 160, 0)
    assert config.augmentation == "light"
    assert at.query_params["run"] in (["run-fake-1"], "run-fake-1")
    assert "Run run-fake-1" in texts(at)
    assert [b for b in at.button if b.label == "Stop"]
    assert len(at.get("plotly_chart")) == 3
    next(b for b in at.button if b.label == "Stop").click().run()
    assert RunDir(workspace / "runs" / "run-fake-1").stop_requested()


def test_second_start_is_refused_while_a_run_trains(workspace: Path) -> None:
    run = make_run(workspace / "runs", "run-busy", state="running", pid=os.getpid())
    (run.file(jobs.JOB)).write_text(json.dumps({"pid": os.getpid()}))
    at = app()
    next(u for u in at.file_uploader if u.accept_directory).set_value(folder_files()).run()
    at.switch_page("pages/train.py").run()
    assert "Run run-busy" in texts(at)  # a second tab finds the active run without ?run=
    next(b for b in at.button if b.label == "Start training").click().run()
    assert any("one training at a time" in e.value for e in at.error)
    assert len(list((workspace / "runs").iterdir())) == 1


def test_a_failed_run_shows_its_error(workspace: Path) -> None:
    make_run(workspace / "runs", "run-bad", state="failed")
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["run"] = "run-bad"
    at.run()
    at.switch_page("pages/train.py").run()
    no_exceptions(at)
    assert any("has no usable image" in e.value for e in at.error)


def test_evaluate_one_run_and_compare(workspace: Path) -> None:
    make_run(workspace / "runs", "run-a")
    time.sleep(0.01)
    make_run(workspace / "runs", "run-b")
    at = app()
    at.switch_page("pages/evaluate.py").run()
    no_exceptions(at)
    assert [m.value for m in at.metric][0] == "83.3%"
    assert len(at.get("plotly_chart")) >= 3  # confusion matrix + two comparison charts
    assert "no longer at" in texts(at)  # the mistakes' images moved: the list is still shown
    at.segmented_control(key="cm_view").set_value("Normalised").run()
    no_exceptions(at)


class FakeClassifier:
    """Stands in for core.predict.Classifier: fixed answers, no model."""

    classes = CLASSES
    image_size = 96
    model = None

    def classify_arrays(self, images, top_k=5):
        return [[{"class": "roses", "probability": 0.7}, {"class": "daisy", "probability": 0.2},
                 {"class": "tulips", "probability": 0.1}][:top_k] for _ in images]


def test_classify_uploads_table_csv_and_bad_files(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_run(workspace / "runs", "run-a")
    monkeypatch.setattr("pages._common.load_classifier", lambda run: FakeClassifier())
    monkeypatch.setattr("core.cam.heatmap_for", lambda model, image, index, size: image)
    at = app()
    at.switch_page("pages/classify.py").run()
    no_exceptions(at)
    at.file_uploader(key="photos").set_value([("a.png", png_bytes(1), "image/png"),
                                              ("broken.jpg", b"not an image", "image/jpeg")]).run()
    no_exceptions(at)
    assert any("broken.jpg" in w.value for w in at.warning)
    table = at.dataframe[0].value
    assert list(table["file"]) == ["a.png"] and list(table["predicted"]) == ["roses"]
    assert at.get("download_button")
    assert "Classified 1 photo(s)" in texts(at)
