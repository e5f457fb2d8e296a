"""A visitor's run on a hosted demo is bounded (issue 14.4): backbones, image size and epochs within limits, and a
wall-time limit that stops the run like a Stop click, keeps its best model and still evaluates it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import run_cli
from core import StudioError
from core.base.config import TrainConfig
from core.training.hosting import check_training_limits, limit_problems, training_limits
from core.base.runs import RunDir


@pytest.fixture
def hosted(monkeypatch):
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    for name in ("BACKBONES", "MAX_IMAGE_SIZE", "MAX_HEAD_EPOCHS", "MAX_FINETUNE_EPOCHS", "MAX_MINUTES"):
        monkeypatch.delenv(f"STUDIO_HOSTED_{name}", raising=False)


def test_the_probes_b7_run_is_refused_naming_every_setting_over_its_limit(hosted):
    config = TrainConfig(data="x", backbone="efficientnet_b7", image_size=600, head_epochs=200, finetune_epochs=100)
    with pytest.raises(StudioError) as raised:
        check_training_limits(config)
    message = str(raised.value)
    for part in ("backbone efficientnet_b7 is not offered on this shared demo (choose efficientnet_lite0 or "
                 "efficientnet_b0 or baseline_cnn)", "image_size 600 is over this demo's 300 px", "head_epochs 200 is "
                 "over this demo's 50", "finetune_epochs 100 is over this demo's 5"):
        assert part in message


def test_the_from_scratch_baseline_with_its_defaults_fits_a_hosted_demo(hosted):
    """So a visitor can run the pretrained-vs-from-scratch pair on the demo."""
    assert limit_problems(TrainConfig(data="x", backbone="baseline_cnn"), training_limits()) == []


def test_the_default_recipe_fits_within_the_limits_and_nothing_is_limited_when_not_hosted(hosted, monkeypatch):
    assert limit_problems(TrainConfig(data="x"), training_limits()) == []
    assert limit_problems(TrainConfig(data="x", backbone="efficientnet_b0"), training_limits()) == []
    monkeypatch.delenv("STUDIO_HOSTED")
    assert training_limits() is None
    check_training_limits(TrainConfig(data="x", backbone="efficientnet_b7", image_size=600))


def test_limits_follow_their_environment_variables(hosted, monkeypatch):
    monkeypatch.setenv("STUDIO_HOSTED_BACKBONES", "efficientnet_b0")
    monkeypatch.setenv("STUDIO_HOSTED_MAX_MINUTES", "2.5")
    limits = training_limits()
    assert limits.backbones == ("efficientnet_b0",) and limits.max_minutes == 2.5
    assert "2.5 minutes" in limits.describe()
    monkeypatch.setenv("STUDIO_HOSTED_BACKBONES", "resnet50")
    with pytest.raises(StudioError, match="STUDIO_HOSTED_BACKBONES names resnet50"):
        training_limits()
    monkeypatch.setenv("STUDIO_HOSTED_BACKBONES", "efficientnet_b0")
    monkeypatch.setenv("STUDIO_HOSTED_MAX_IMAGE_SIZE", "big")
    with pytest.raises(StudioError, match=r"STUDIO_HOSTED_MAX_IMAGE_SIZE='big' is not a whole number"):
        training_limits()


def test_the_cli_refuses_an_over_limit_run_and_leaves_no_run_folder(tmp_path, flowers_dir):
    result = run_cli("--models-dir", str(tmp_path), "train", "--data", str(flowers_dir), "--backbone",
                     "efficientnet_b7", env={"STUDIO_HOSTED": "1"}, timeout=300)
    assert result.returncode != 0 and "backbone efficientnet_b7 is not offered" in result.stderr
    assert "Traceback" not in result.stderr
    assert [p for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


@pytest.mark.slow
def test_a_run_past_its_time_limit_stops_keeps_its_best_model_and_is_evaluated(tmp_path, flowers_dir):
    """A one-minute limit: the head is fitted in about 15 s (45 s on a machine three times slower), and 50
    fine-tuning epochs with early stopping switched off take minutes on any CPU."""
    import json

    config = tmp_path / "long.json"
    config.write_text(json.dumps({"early_stopping_patience": 100, "reduce_lr_patience": 100}))
    result = run_cli("--models-dir", str(tmp_path / "runs"), "train", "--data", str(flowers_dir), "--config",
                     str(config), "--image-size", "160", "--finetune-epochs", "50",
                     env={"STUDIO_HOSTED": "1", "STUDIO_HOSTED_MAX_MINUTES": "1",
                          "STUDIO_HOSTED_MAX_FINETUNE_EPOCHS": "50"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunDir(Path(result.stdout.strip().splitlines()[-1]))
    status = run.read_status()
    assert status["state"] == "stopped" and status["stop_reason"] == "time_limit"
    assert status["stopped_in"] == "finetune", status
    assert "1-minute limit" in status["message"] and "kept and evaluated" in status["message"]
    assert (run.path / "model.keras").is_file()
    assert run.read_evaluation()["accuracy"] > 0.5
    finetune_epochs = [m for m in run.read_metrics() if m["kind"] == "epoch" and m["phase"] == "finetune"]
    assert 0 < len(finetune_epochs) < 50  # the limit, not the 50 epochs, ended it (a count, not a clock)


def test_the_deadline_stops_training_but_never_the_final_evaluation(hosted, tmp_path):
    from core.training.train import Trainer

    trainer = Trainer(TrainConfig(data="x"), RunDir.create(tmp_path))
    assert trainer.time_limit == 20 * 60 and not trainer._stop_now()
    trainer.deadline = time.monotonic() - 1
    assert trainer._stop_now() and trainer.time_limited and trainer.stopped
    finishing = Trainer(TrainConfig(data="x"), RunDir.create(tmp_path))
    finishing.final_evaluation, finishing.deadline = True, time.monotonic() - 1
    assert not finishing._stop_now() and not finishing.time_limited and not finishing.stopped


def test_train_page_offers_only_what_a_visitor_may_start_and_queues_behind_another_session(
        tmp_path, monkeypatch):
    """Hosted: the Train page lists the allowed backbones and sizes and says the limits; with another session
    training, Start is not refused: the run waits in the queue and the page says its place."""
    from test_app import app, no_exceptions, pick_folder, texts
    from test_hardening import fake_python, kill_jobs
    from core.training import jobs
    from core.network.device import DeviceInfo
    from core.base.workspace import Workspace
    import streamlit as st

    root = tmp_path / "ws"
    monkeypatch.setenv("STUDIO_WORKSPACE", str(root))
    monkeypatch.delenv("STUDIO_SHARED_WORKSPACE", raising=False)  # refused with STUDIO_HOSTED: each visitor their own
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    monkeypatch.setenv("STUDIO_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setattr("core.network.device.detect_device", lambda: DeviceInfo("tensorflow", "cpu", "CPU only", 1))
    monkeypatch.setattr("core.data.samples.is_online", lambda *a, **k: False)
    st.cache_data.clear()
    st.cache_resource.clear()
    other = Workspace(root / "sessions" / ("b" * 32))
    try:
        busy = jobs.start_training(TrainConfig(data=str(tmp_path)), other.runs_dir(), python=fake_python(tmp_path),
                                   lock_dir=root)
        at = app()
        pick_folder(at)
        at.switch_page("pages/train.py").run()
        no_exceptions(at)
        assert at.selectbox(key="backbone").options == ["EfficientNet-Lite0 (offline weights) · 224 px",
                                                    "EfficientNet-B0 · 224 px",
                                                    "Baseline CNN (from scratch) · 128 px"]
        assert max(int(o) for o in at.select_slider(key="image_size").options) <= 300
        assert "This is a shared demo" in texts(at) and "waits in the queue" in texts(at)
        start = next(b for b in at.button if b.label == "Start training")
        assert not start.disabled
        start.click().run()
        no_exceptions(at)
        bars = [p.proto.text for p in at.get("progress")]
        assert any(b.startswith("Waiting for the training slot: next, starts in about") for b in bars), bars
        assert busy.run_id not in texts(at) + " ".join(bars)
        (queued,) = [p for p in root.glob("sessions/*/runs/*") if p.is_dir() and p.name != busy.run_id]
        assert jobs.run_view(RunDir(queued)).queue.position == 1
        sidebar = [m.value for m in at.sidebar.markdown]
        assert any("**waiting for the slot**" in v for v in sidebar), sidebar  # the sidebar agrees with the page
    finally:
        kill_jobs(root)


def test_a_failed_runs_log_names_the_servers_folders_by_role(tmp_path, monkeypatch):
    import sys
    import sysconfig

    from core.training import jobs

    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    run = RunDir.create(tmp_path / "ws" / "runs")
    site = sysconfig.get_paths()["purelib"]
    run.file(jobs.LOG).write_text(f'  File "{jobs.REPO_ROOT}/core/train.py", line 1\n'
                                  f'  File "{site}/keras/src/x.py", line 2\n'
                                  f"OSError: {tmp_path / 'ws' / 'runs' / 'x.bin'}\n")
    tail = jobs.log_tail(run)
    assert '"<app>/core/train.py"' in tail and '"<python>/keras/src/x.py"' in tail and "<workspace>/runs/x.bin" in tail
    assert str(jobs.REPO_ROOT) not in tail and sys.prefix not in tail and str(tmp_path) not in tail
