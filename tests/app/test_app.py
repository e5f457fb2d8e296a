"""The app through its entry point with Streamlit's AppTest: every page, with heavy core calls replaced by fast ones."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.training import jobs
from core.network.device import DeviceInfo
from core.base.runs import RunDir

REPO = Path(__file__).resolve().parents[2]
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
    """A picked folder's files: relative names that start with the picked folder."""
    return [(f"my-flowers/{name}/{i}.png", png_bytes(100 * c + i), "image/png")
            for c, name in enumerate(classes) for i in range(per_class)]


def folder_archive(files: list[tuple[str, bytes]]) -> bytes:
    """What the Data page's folder picker sends: the picked files stored in one .zip, with a manifest of them."""
    from core.data.upload_manifest import MANIFEST_NAME, PickedFile, manifest_json

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files:
            archive.writestr(name, data)
        archive.writestr(MANIFEST_NAME, manifest_json([PickedFile(n, len(d)) for n, d in files],
                                                      files[0][0].split("/")[0]))
    return buffer.getvalue()


def pick_folder(at: AppTest, files: list[tuple[str, bytes, str]] | None = None) -> AppTest:
    """Pick a folder on the Data page as the folder picker hands it over: one archive in its hidden uploader."""
    files = folder_files() if files is None else files
    uploader = next(u for u in at.file_uploader if str(u.key).startswith("folder_archive_"))
    archive = folder_archive([(name, data) for name, data, _ in files])
    return uploader.set_value((f"{files[0][0].split('/')[0]}.zip", archive, "application/zip")).run()


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

    Per-session workspaces (the default) are tested in tests/app/test_hardening.py.
    """
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("STUDIO_SHARED_WORKSPACE", "1")
    monkeypatch.setenv("STUDIO_DEMO_DIR", str(tmp_path / "demo"))  # empty unless a test puts a bundle there
    monkeypatch.setattr("core.network.device.detect_device", lambda: DeviceInfo("tensorflow", "cpu", "CPU only", 1))
    monkeypatch.setattr("core.data.samples.is_online", lambda *a, **k: False)
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
    assert f"Training on CPU ({os.cpu_count()} cores): no GPU found — see README" in _sidebar_texts(at)
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
    monkeypatch.setattr("core.data.samples.flowers_mini_candidates", lambda: [workspace / "nowhere" / "flowers-mini"])
    at = app()
    assert any("was not found" in w.value and "flowers-mini" in w.value for w in at.warning)


def test_folder_upload_becomes_the_current_dataset(workspace: Path) -> None:
    at = app()
    pick_folder(at)
    no_exceptions(at)
    assert [m.value for m in at.metric][:2] == ["3", "12"]
    assert "All 12 picked files arrived: 12 received, 0 skipped, 0 unreadable, 0 missing." in texts(at)
    assert not [u for u in at.file_uploader if u.key == "folder_archive_0"]  # a fresh uploader for the next one
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
    at.file_uploader(key="zip_upload").set_value(("flowers.zip", buffer.getvalue(), "application/zip")).run()
    no_exceptions(at)
    assert [m.value for m in at.metric][:2] == ["3", "9"]


def test_untrainable_data_blocks_the_train_page(workspace: Path) -> None:
    at = app()
    pick_folder(at, folder_files(classes=["only"]))
    assert any("at least 2 classes" in e.value for e in at.error)
    at.switch_page("pages/train.py").run()
    no_exceptions(at)
    assert any("cannot be trained on" in e.value for e in at.error)
    assert not [b for b in at.button if b.label == "Start training"]


def test_a_refused_folder_says_why_and_the_picker_is_ready_again(workspace: Path) -> None:
    at = app()
    clash = [("my-flowers/daisy", b"a file named like a class folder", "application/octet-stream")]
    pick_folder(at, folder_files() + clash)
    no_exceptions(at)
    assert any("both a file and a folder named 'my-flowers/daisy'" in e.value for e in at.error)
    assert not list((workspace / "datasets").glob("my-flowers-*"))
    assert [u.key for u in at.file_uploader if str(u.key).startswith("folder_archive_")] == ["folder_archive_1"]
    pick_folder(at)  # the next pick goes through
    assert "All 12 picked files arrived" in texts(at)


def test_augment_presets_custom_switches_and_json(workspace: Path) -> None:
    at = app()
    pick_folder(at)
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

    monkeypatch.setattr("core.training.jobs.start_training", fake_start)
    at = app()
    pick_folder(at)
    at.switch_page("pages/train.py").run()
    no_exceptions(at)
    next(b for b in at.button if b.label == "Start training").click().run()
    no_exceptions(at)
    config = launched["config"]
    assert (config.backbone, config.image_size, config.finetune_epochs) == ("efficientnet_lite0", 288, 0)
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
    pick_folder(at)
    at.switch_page("pages/train.py").run()
    assert "Run run-busy" in texts(at)  # a second tab finds the active run without ?run=
    start = next(b for b in at.button if b.label == "Start training")
    assert start.disabled and "run-busy is training" in texts(at)  # Start is off while this workspace trains
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
    """Stands in for core.serving.predict.Classifier: fixed answers, no model."""

    classes = CLASSES
    image_size = 96
    model = None

    def heatmap(self, image, class_index):  # as core.serving.predict.Classifier does, through the (faked) CAM
        from core.results import cam

        return cam.heatmap_for(self.model, image, class_index, self.image_size)

    def classify_arrays(self, images, top_k=5):
        return [[{"class": "roses", "probability": 0.7}, {"class": "daisy", "probability": 0.2},
                 {"class": "tulips", "probability": 0.1}][:top_k] for _ in images]


def test_classify_uploads_table_csv_and_bad_files(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_run(workspace / "runs", "run-a")
    monkeypatch.setattr("pages._loaders.load_classifier", lambda run: FakeClassifier())
    monkeypatch.setattr("core.results.cam.heatmap_for", lambda model, image, index, size: image)
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


# ----------------------------------------------------------------------------------------- serve profile
class FakeRunner:
    """Stands in for LiteRT: 'roses' for every image, and records what it was fed."""

    def __init__(self, path, threads=None):
        self.fed: list = []

    def __call__(self, images):
        self.fed.append(images)
        return np.tile(np.array([[0.2, 0.7, 0.1]], dtype=np.float32), (len(images), 1))


def make_bundle(demo_dir: Path, name: str = "run-demo-tflite") -> Path:
    """A demo bundle folder as make_demo_bundle writes it, with a model file only FakeRunner can "run"."""
    folder = demo_dir / name
    run = make_run(demo_dir / "source-runs", "run-demo")
    (folder / "mistakes").mkdir(parents=True)
    for file in ("classes.json", "config.json", "metrics.jsonl"):
        (folder / file).write_bytes(run.file(file).read_bytes())
    evaluation = run.read_evaluation()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "mistakes" / "00.jpg")
    evaluation.update(root=".", mistakes=[{**evaluation["mistakes"][0], "path": "mistakes/00.jpg"}])
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    parity = {"tflite": {"format": "tflite", "bytes": 13_500_000, "images": 12, "agreement": 1.0,
                         "keras_accuracy": 10 / 12, "export_accuracy": 10 / 12,
                         "max_abs_probability_difference": 4e-6, "passed": True}}
    (folder / "parity.json").write_text(json.dumps(parity))
    (folder / "model_float32.tflite").write_bytes(b"not really a model")
    (folder / "manifest.json").write_text(json.dumps({
        "bundle_version": 1, "run_id": "run-demo", "backbone": "efficientnet_lite0", "image_size": 96,
        "format": "tflite", "model_file": "model_float32.tflite", "tta": False}))
    shutil.rmtree(demo_dir / "source-runs")
    return folder


@pytest.fixture
def serve_profile(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The serve profile as requirements.txt installs it: TensorFlow, Keras and albumentations "missing"."""
    monkeypatch.setattr("core.serving.profile.missing_train_packages", lambda: ["tensorflow", "keras", "albumentations"])
    monkeypatch.setattr("core.serving.bundle.open_runner", lambda path, threads=None: FakeRunner(path))
    monkeypatch.setattr("core.network.device.detect_device", lambda: pytest.fail("the serve profile probed the ML backend"))
    return workspace.parent / "demo"


def test_serve_profile_training_pages_say_they_need_the_train_profile(serve_profile: Path) -> None:
    at = app()
    no_exceptions(at)
    assert at.title[0].value == "Evaluate"  # a serve deployment opens where there is something to see
    assert "serve profile" in "\n".join(m.value for m in at.sidebar.markdown)
    assert "No demo bundle found" in texts(at) and str(serve_profile) in texts(at)
    for page in ("pages/data.py", "pages/augment.py", "pages/train.py"):
        at.switch_page(page).run()
        no_exceptions(at)
        message = " ".join(i.value for i in at.info)
        assert "needs the train profile" in message and "requirements-train.txt" in message, page
        assert not at.file_uploader and not [b for b in at.button if b.label == "Start training"]


def test_serve_profile_evaluates_and_classifies_a_demo_bundle(serve_profile: Path) -> None:
    make_bundle(serve_profile)
    at = app()
    no_exceptions(at)
    assert [m.value for m in at.metric][0] == "83.3%"
    assert "Demo bundle of run run-demo" in texts(at)
    assert "How the bundled model agrees" in texts(at)
    assert at.query_params["demo"] in (["run-demo-tflite"], "run-demo-tflite")
    assert at.get("imgs") or at.get("image")  # the mistake's thumbnail from inside the bundle
    at.switch_page("pages/classify.py").run()
    no_exceptions(at)
    assert not [t for t in at.toggle if t.key == "heatmaps"] and "Heatmaps need" in texts(at)
    at.file_uploader(key="photos").set_value([("a.png", png_bytes(1, size=50), "image/png"),
                                              ("b.png", png_bytes(2, size=30), "image/png")]).run()
    no_exceptions(at)
    table = at.dataframe[0].value
    assert list(table["file"]) == ["a.png", "b.png"] and list(table["predicted"]) == ["roses", "roses"]
    assert "Classified 2 photo(s)" in texts(at)


def test_bundles_are_listed_beside_runs_in_the_train_profile(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("core.serving.bundle.open_runner", lambda path, threads=None: FakeRunner(path))
    make_run(workspace / "runs", "run-a")
    make_bundle(workspace.parent / "demo")
    at = app()
    at.switch_page("pages/evaluate.py").run()
    no_exceptions(at)
    picker = at.selectbox(key="evaluate_run")
    assert picker.options == ["run-a · nowhere · succeeded", "run-demo-tflite · demo bundle"]
    assert "Export" in texts(at)  # a run can be exported; a bundle is already one
    picker.set_value("demo:run-demo-tflite").run()
    no_exceptions(at)
    assert "Demo bundle of run run-demo" in texts(at) and "Export" not in [s.value for s in at.subheader]


def test_export_button_exports_shows_parity_and_offers_the_bundle(workspace: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(workspace / "runs", "run-a")
    calls = {}

    def fake_export(run_dir, formats, data_root=None, progress=None):
        calls["formats"] = list(formats)
        for fmt in formats:
            progress(f"Exporting {fmt}")
        (run_dir.path / "exports").mkdir(exist_ok=True)
        (run_dir.path / "exports" / "parity.json").write_text(json.dumps(
            {"tflite": {"bytes": 1_000_000, "agreement": 1.0, "keras_accuracy": 0.8, "export_accuracy": 0.8,
                        "images": 12, "passed": True}}))
        return {"formats": {}, "failed": []}

    def fake_bundle(run_dir, fmt=None, out_dir=None, data_root=None):
        calls["bundle"] = fmt
        folder = run_dir.path / "exports" / "bundles" / f"{run_dir.run_id}-{fmt}"
        folder.mkdir(parents=True)
        folder.with_suffix(".zip").write_bytes(b"PK zip")
        return folder

    monkeypatch.setattr("core.serving.export.export_run", fake_export)
    monkeypatch.setattr("core.serving.export.make_demo_bundle", fake_bundle)
    at = app()
    at.switch_page("pages/evaluate.py").run()
    next(b for b in at.button if b.key == "export_run").click().run()
    no_exceptions(at)
    assert calls == {"formats": ["tflite"], "bundle": "tflite"}
    assert "Parity of the exports" in texts(at)
    assert any(b.proto.label.startswith("Download run-a-tflite.zip") for b in at.get("download_button"))
    assert run.path.joinpath("exports", "bundles", "run-a-tflite.zip").is_file()


BLOCKED_IMPORTS_SCRIPT = """
import importlib.abc, json, sys
from streamlit.testing.v1 import AppTest

class Missing(importlib.abc.MetaPathFinder):
    # What a serve install looks like to an import: these packages are simply not there.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "albumentations", "jax"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, Missing())
import core.serving.profile  # noqa: E402  find_spec would raise through Missing; a real serve install just lacks them
core.serving.profile.missing_train_packages = lambda: ["tensorflow", "keras", "albumentations"]
at = AppTest.from_file(sys.argv[1], default_timeout=60).run()
errors = [e.value for e in at.exception]
for page in sys.argv[2:]:
    at.switch_page(page).run()
    errors += [f"{page}: {e.value}" for e in at.exception]
print(json.dumps({"errors": errors, "loaded": sorted({m.split(".")[0] for m in sys.modules} &
                                                     {"tensorflow", "keras", "albumentations", "jax"})}))
"""


def test_no_page_imports_the_train_stack_in_the_serve_profile(tmp_path: Path) -> None:
    """Every page renders with TensorFlow, Keras and albumentations unimportable (a fresh process, so nothing
    imported by other tests hides an import chain); tests/serving/test_serve.py does the same from a real serve venv."""
    env = {**os.environ, "STUDIO_WORKSPACE": str(tmp_path / "ws"),
           "STUDIO_DEMO_DIR": str(tmp_path / "demo")}
    result = subprocess.run([sys.executable, "-c", BLOCKED_IMPORTS_SCRIPT, APP, *PAGES], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"errors": [], "loaded": []}, report


# ------------------------------------------------------------------------------ one state, everywhere (issue 12)
def _sidebar_texts(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in at.sidebar.markdown)


@pytest.mark.parametrize("state", ["succeeded", "failed", "stopped"])
def test_train_page_and_sidebar_agree_after_each_ending(workspace: Path, state: str) -> None:
    run = make_run(workspace / "runs", "run-end", state=state, evaluation=state == "succeeded")
    if state == "stopped":
        run.file("model.keras").unlink()  # stopped before its head was trained
        run.set_status("stopped", stopped_in="features")
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["run"] = "run-end"
    at.run()
    at.switch_page("pages/train.py").run()
    no_exceptions(at)
    view = jobs.run_view(run)
    assert view.state == state
    assert f"(**{state}**)" in _sidebar_texts(at)  # the sidebar reads the same state as the page
    page = texts(at)
    assert "queued" not in page and "is training" not in page
    if state == "succeeded":
        assert any("Training finished" in s.value for s in at.success)
    elif state == "failed":
        assert any("has no usable image" in e.value for e in at.error)
    else:
        assert any("Stopped during 'Computing frozen-base features'" in w.value and "No model was saved" in w.value
                   for w in at.warning)
        assert "no usable model" in _sidebar_texts(at)


def test_classify_never_preselects_a_model_that_is_not_usable(workspace: Path) -> None:
    good = make_run(workspace / "runs", "run-good")
    time.sleep(0.01)
    newer = make_run(workspace / "runs", "run-stopped", state="stopped", evaluation=False)  # kept, not evaluated
    assert jobs.run_view(good).model.usable and not jobs.run_view(newer).model.usable
    at = app()
    at.switch_page("pages/classify.py").run()
    no_exceptions(at)
    picker = at.selectbox(key="classify_run")
    assert picker.value == "run-good"  # the newer run is listed but not the default
    assert "run-stopped" in picker.options[0] or any("run-stopped" in o for o in picker.options)


def test_train_page_shows_the_image_cache_and_clears_it(workspace: Path) -> None:
    at = app()
    pick_folder(at)
    at.switch_page("pages/train.py").run()
    cache = workspace / "runs" / ".cache"  # the shared workspace's runs (see the fixture)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "images-96px-3-abc.u8").write_bytes(b"\0" * 3 * 1024**2)
    at.run()
    assert "Decoded-image cache: 3.0 MB on disk" in texts(at)
    next(b for b in at.button if b.label == "Clear the cache").click().run()
    no_exceptions(at)
    assert not (cache / "images-96px-3-abc.u8").exists()
    assert "Decoded-image cache: 0.0 MB on disk" in texts(at)


def test_a_run_chosen_explicitly_is_shown_even_if_not_usable_and_none_is_preselected_otherwise(
        workspace: Path) -> None:
    make_run(workspace / "runs", "run-stopped", state="stopped", evaluation=False)
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    at.switch_page("pages/classify.py").run()
    no_exceptions(at)
    assert at.selectbox(key="classify_run").value is None  # listed, not offered by default
    assert any("No run has a usable model yet" in i.value for i in at.info)
    # "Evaluate this run" from the Train page: the run in the address bar is honoured
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["run"] = "run-stopped"
    at.run()
    at.switch_page("pages/evaluate.py").run()
    no_exceptions(at)
    assert at.selectbox(key="evaluate_run").value == "run-stopped"
    assert "has no evaluation yet" in texts(at)


@pytest.mark.parametrize("capability, line", [((9, 0), "Training on NVIDIA H200 · bfloat16 · XLA"),
                                              ((7, 5), "Training on 2 x Tesla T4 · float16 · XLA")])
def test_sidebar_says_what_training_runs_on_with_a_faked_gpu(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capability, line) -> None:
    name, count = ("NVIDIA H200", 1) if capability >= (8, 0) else ("Tesla T4", 2)
    monkeypatch.setattr("core.network.device.detect_device",
                        lambda: DeviceInfo("tensorflow", "gpu", name, count, capability))
    at = app()
    no_exceptions(at)
    assert line in _sidebar_texts(at)


def test_a_saved_hostile_augmentation_is_never_run_again(workspace: Path) -> None:
    """A spec saved before the limits (a 12000 px crop once took the whole server) is set back, not previewed."""
    from core.base.workspace import Workspace

    at = app()
    pick_folder(at)
    Workspace.root().save_state(augmentation=[{"name": "RandomResizedCrop", "p": 1,
                                               "params": {"size": [12000, 12000]}}])
    at.switch_page("pages/augment.py").run()
    no_exceptions(at)
    assert any("set back to the light preset" in w.value and "from 8 to 1024" in w.value for w in at.warning)
    assert Workspace.root().load_state()["augmentation"] == "light"


def test_the_train_page_names_the_preset_and_its_expected_time_and_best_sets_its_settings(workspace: Path) -> None:
    """Issue 28.3: Quick is chosen on a CPU, each preset is said in a sentence with the minutes expected for this
    dataset on this device; choosing Best moves the settings it sets (fine-tuning epochs) and Start records it."""
    from core.base.config import PRESET_SUMMARIES, PRESETS

    at = app()
    pick_folder(at)
    at.switch_page("pages/train.py").run()
    no_exceptions(at)
    recipe = at.radio(key="preset")
    assert recipe.value == "quick" and recipe.options == ["Quick", "Best"]
    shown = texts(at)
    assert "**Quick** on this CPU: about " in shown and "typical 2-core CPU rates" in shown
    assert at.number_input(key="finetune_epochs").value == 0
    recipe.set_value("best").run()
    no_exceptions(at)
    assert at.number_input(key="finetune_epochs@best").value == PRESETS["best"]["finetune_epochs"]
    assert "**Best** on this CPU: at most " in texts(at)
    captions = str(at.radio(key="preset").proto)  # each preset's sentence is shown under its name
    assert all(PRESET_SUMMARIES[name].split(":")[0].replace("'", "") in captions.replace("\\'", "")
               for name in PRESETS)


def test_a_gpu_preselects_the_best_preset(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("core.network.device.detect_device",
                        lambda: DeviceInfo("tensorflow", "gpu", "NVIDIA H200", 1, (9, 0)))
    at = app()
    pick_folder(at)
    at.switch_page("pages/train.py").run()
    no_exceptions(at)
    assert at.radio(key="preset").value == "best"
    # no GPU run measured yet: the page says so rather than quoting CPU rates
    assert "**Best** on this GPU: unknown until a first run on this device has been measured" in texts(at)
