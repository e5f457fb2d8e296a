"""The core modules behind the UI: ingest, samples (download without network), jobs, charts, CAM."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core import StudioError
from core.results import charts
from core.training import jobs
from core.data import samples
from core.base.config import TrainConfig
from core.data.ingest import clean_relative_path, ingest_files, ingest_zip
from core.base.runs import RunDir


def test_hostile_upload_names_are_refused_and_clutter_skipped() -> None:
    assert clean_relative_path("flowers/roses/1.jpg").as_posix() == "flowers/roses/1.jpg"
    assert clean_relative_path("__MACOSX/flowers/._1.jpg") is None
    assert clean_relative_path("flowers/.DS_Store") is None
    for bad in ("../evil.jpg", "a/../../evil.jpg", "C:/evil.jpg"):
        with pytest.raises(StudioError, match="outside its folder"):
            clean_relative_path(bad)


def test_ingest_is_idempotent_and_keeps_relative_paths(tmp_path: Path) -> None:
    files = [("set/a/1.png", b"x1"), ("set/b/2.png", b"x2"), ("set/.DS_Store", b"")]
    first = ingest_files(files, destination=tmp_path)
    assert first.name.startswith("set-") and (first / "set" / "a" / "1.png").read_bytes() == b"x1"
    assert not (first / "set" / ".DS_Store").exists()
    assert ingest_files(files, destination=tmp_path) == first
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 1


def test_zip_slip_and_links_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../evil.png", b"x")
    with pytest.raises(StudioError, match="outside its folder"):
        ingest_zip(buffer.getvalue(), "evil.zip", destination=tmp_path)
    link = io.BytesIO()
    with zipfile.ZipFile(link, "w") as archive:
        info = zipfile.ZipInfo("set/a/link.png")
        info.external_attr = (0o120777 << 16)
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(StudioError, match="symbolic link"):
        ingest_zip(link.getvalue(), "link.zip", destination=tmp_path)
    with pytest.raises(StudioError, match="not a valid .zip"):
        ingest_zip(b"nope", "bad.zip", destination=tmp_path)
    assert not any(p.is_dir() and not p.name.startswith(".") for p in tmp_path.iterdir())


def test_download_reports_progress_from_a_file_url(tmp_path: Path) -> None:
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(3 * samples.CHUNK_BYTES + 5))
    seen = []
    target = samples.download(source.as_uri(), tmp_path / "out" / "blob.bin", lambda d, t: seen.append((d, t)))
    assert target.read_bytes() == source.read_bytes()
    assert seen[-1] == (source.stat().st_size, source.stat().st_size) and len(seen) == 4


def test_download_failure_is_a_sentence_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(StudioError, match="Could not download"):
        samples.download((tmp_path / "missing.tgz").as_uri(), tmp_path / "x.tgz")
    assert list(tmp_path.iterdir()) == []


def test_tf_flowers_is_downloaded_once_and_unpacked(tmp_path: Path) -> None:
    archive = tmp_path / "flower_photos.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("daisy/1.jpg", "roses/2.jpg", "LICENSE.txt"):
            data = name.encode()
            info = tarfile.TarInfo(f"flower_photos/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    calls = []

    def opener(url, timeout):
        calls.append(url)
        return open(archive, "rb")

    parent, cache = tmp_path / "datasets", tmp_path / "downloads"
    folder = samples.fetch_tf_flowers(url="https://example.invalid/f.tgz", parent=parent, cache=cache, opener=opener)
    assert (folder / "flower_photos" / "daisy" / "1.jpg").read_bytes() == b"daisy/1.jpg"
    assert samples.fetch_tf_flowers(url="x", parent=parent, cache=cache, opener=opener) == folder
    assert len(calls) == 1


def test_missing_sample_message_names_the_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STUDIO_SAMPLE_DIR", raising=False)
    message = samples.flowers_mini_missing_message()
    assert "shared/data/flowers-mini" in message and "STUDIO_SAMPLE_DIR" in message


def _run(tmp_path: Path, state: str, pid: int) -> RunDir:
    run = RunDir.create(tmp_path, f"run-{state}")
    run.write_config({"data": "x", "head_epochs": 4, "finetune_epochs": 2})
    run.set_status(state, pid=pid)
    (run.file(jobs.JOB)).write_text(json.dumps({"pid": pid}))
    return run


def test_one_job_at_a_time_and_dead_jobs_fail_at_once(tmp_path: Path) -> None:
    busy = _run(tmp_path, "running", os.getpid())
    assert jobs.active_run(tmp_path).run_id == busy.run_id
    with pytest.raises(StudioError, match="one training at a time"):
        jobs.start_training(TrainConfig(data=str(tmp_path)), tmp_path)
    dead = _run(tmp_path / "other", "running", 2**22 + 12345)  # no such process
    state = jobs.run_state(dead)
    assert state["state"] == "failed" and "ended without reporting" in state["error"]


def test_charts_compute_apart_from_drawing() -> None:
    assert charts.normalise_rows(np.array([[2, 2], [0, 0]])).tolist() == [[0.5, 0.5], [0.0, 0.0]]
    epochs = [{"kind": "epoch", "phase": "head", "epoch": 1, "loss": 1, "val_loss": 2, "accuracy": .5,
               "val_accuracy": .4, "lr": 1e-3},
              {"kind": "epoch", "phase": "finetune", "epoch": 2, "loss": .5, "val_loss": 1, "accuracy": .7,
               "val_accuracy": .6, "lr": 1e-5}]
    assert charts.phase_starts(epochs) == [(1, "head"), (2, "finetune")]
    assert charts.best_epoch(epochs)["epoch"] == 2
    assert len(charts.curve_figure(epochs, "loss", "Loss").data) == 2
    assert charts.confusion_figure([[1, 0], [1, 1]], ["a", "b"], normalised=True).data[0].z[1][0] == 0.5


@pytest.mark.parametrize("multi_level", [False, True], ids=["top-only", "stages-4-to-7-and-top"])
def test_cam_means_equal_the_classifier_logits(multi_level: bool) -> None:
    """The head is linear up to softmax, so softmax(mean of each class map) must equal the model's output; with the
    default recipe's pooled stages 4 to 7 too (6 and 7 share the top's grid, 4 and 5 are averaged 2x2 onto it, so
    the map stays exact)."""
    import keras

    from core.base.backbones import create_backbone
    from core.results.cam import class_activation_maps, heatmap_for
    from core.network.model import build_classifier, with_mid_level_features

    keras.utils.set_random_seed(0)
    base = create_backbone("efficientnet_lite0", 64, weights=None)
    if multi_level:
        base = with_mid_level_features(base)
        assert base.output_shape[-1] == 80 + 112 + 192 + 320 + 1280
    model = build_classifier(base, 3)
    bn = model.get_layer("head_bn")  # non-trivial BatchNorm statistics, as after training
    bn.moving_mean.assign(np.random.default_rng(1).normal(size=bn.moving_mean.shape).astype("float32"))
    bn.moving_variance.assign(np.random.default_rng(2).uniform(0.5, 2, bn.moving_variance.shape).astype("float32"))
    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    logits = class_activation_maps(model, image).mean(axis=(1, 2))
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(expected, model.predict(image[None], verbose=0)[0], atol=1e-5)
    assert heatmap_for(model, np.zeros((50, 80, 3), np.uint8), 1, 64).shape == (50, 80, 3)


def test_head_fit_points_draw_their_l2_strength_where_epochs_draw_the_learning_rate():
    from core.results import charts

    epochs = [{"epoch": 1, "phase": "head", "l2": 0.01, "loss": 0.5, "val_loss": 0.6},
              {"epoch": 2, "phase": "head", "l2": 0.1, "loss": 0.6, "val_loss": 0.55},
              {"epoch": 3, "phase": "finetune", "lr": 1e-5, "loss": 0.4, "val_loss": 0.5}]
    fig = charts.learning_rate_figure(epochs)
    traces = {t.name: [v for v in t.y] for t in fig.data}
    assert traces["head fit: L2 strength"][:2] == [0.01, 0.1]
    assert traces["learning rate"][2] == 1e-5
    assert "L2 strength" in fig.layout.title.text
    assert charts.learning_rate_figure(epochs[2:]).layout.title.text == "Learning rate"


def test_top_k_bars_show_class_names_as_text_not_plotly_html():
    from core.results.charts import top_k_figure

    figure = top_k_figure([{"class": "<b>x</b> <a href='http://e.com'>y</a>", "probability": 0.9},
                           {"class": "c" * 80, "probability": 0.1}])
    labels = list(figure.data[0].y)
    assert labels[0].startswith("&lt;b&gt;x&lt;/b&gt;") and "<" not in labels[0]
    assert len(labels[1]) <= 24 and "…" in labels[1] and figure.data[0].hovertext[1] == "c" * 80


def test_head_fit_caption_says_what_the_points_are():
    from core.results import charts

    cv = charts.head_fit_caption([{"l2": 0.3, "cross_validated": True}, {"l2": 0.1, "cross_validated": True}])
    assert "strongest first" in cv and "out of fold" in cv and "refitted on all" in cv
    held = charts.head_fit_caption([{"l2": 0.001, "cross_validated": False}])
    assert "weakest first" in held and "out of fold" not in held
