"""End to end through `python -m core`: train, evaluate, predict, inspect, and every bad input named in issue 2."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import ACCURACY_BARS, REPO, flower_files, require, run_cli
from core.cli import EXIT_BAD_INPUT, main
from core.base.runs import RunDir

TINY = ["--image-size", "96", "--head-epochs", "1", "--finetune-epochs", "1", "--batch-size", "32"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, flowers_dir) -> Path:
    """One real run: Lite0 with ImageNet weights, 1 epoch per phase, on flowers-mini at 96 px."""
    models = tmp_path_factory.mktemp("models")
    result = run_cli("--models-dir", str(models), "train", "--data", str(flowers_dir),
                     "--backbone", "efficientnet_lite0", "--preset", "best", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    # the preset is named with what it does and the time expected before the run starts (issue 28.3)
    assert "Preset best: Fits the same classifier, then fine-tunes" in result.stderr and "Expected on this CPU: at most " in result.stderr
    run_path = Path(result.stdout.strip().splitlines()[-1])
    assert run_path.parent == models
    return run_path


def test_train_writes_every_artifact(trained_run: Path, flowers_dir: Path):
    run = RunDir(trained_run)
    for name in ("config.json", "status.json", "metrics.jsonl", "classes.json", "split.json", "model.keras",
                 "evaluation.json", "estimate.json"):
        assert run.file(name).is_file(), name
    assert run.read_status()["state"] == "succeeded"
    assert run.read_classes() == sorted(p.name for p in (flowers_dir / "train").iterdir())
    config = run.read_config()
    assert config["backbone"] == "efficientnet_lite0" and config["resolved"]["image_size"] == 96
    assert config["preset"] == "best" and config["finetune_epochs"] == 1  # a flag given wins over the preset
    assert config["augmentation"][0]["name"] == "HorizontalFlip"  # the preset is saved expanded
    assert config["versions"]["keras"].startswith("3.")
    kinds = {(m["kind"], m["phase"]) for m in run.read_metrics()}
    assert {("epoch", "head"), ("epoch", "finetune"), ("step", "finetune")} <= kinds
    epoch = next(m for m in run.read_metrics() if m["kind"] == "epoch" and m["phase"] == "finetune")
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s"} <= set(epoch)


def test_evaluation_is_consistent_with_the_split(trained_run: Path):
    run = RunDir(trained_run)
    evaluation = run.read_evaluation()
    split = run.read_split()
    matrix = np.array(evaluation["confusion_matrix"])
    assert matrix.shape == (5, 5) and matrix.sum() == len(split["val"]) == 80
    assert matrix.sum(axis=1).tolist() == [row["support"] for row in evaluation["per_class"]] == [16] * 5
    assert evaluation["accuracy"] == pytest.approx(np.trace(matrix) / 80)
    # pretrained features: even one epoch per phase at 96 px is far above chance (20%); the bar is measured
    assert evaluation["accuracy"] >= ACCURACY_BARS["tiny_96"]
    assert 0.5 < evaluation["macro_auc"] <= 1.0
    for mistake in evaluation["mistakes"]:
        assert (Path(split["root"]) / mistake["path"]).is_file() and mistake["true"] != mistake["predicted"]


def test_evaluate_cli_reproduces_the_stored_evaluation(trained_run: Path):
    stored = RunDir(trained_run).read_evaluation()
    result = run_cli("evaluate", str(trained_run))
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout)
    assert printed["confusion_matrix"] == stored["confusion_matrix"]
    assert printed["accuracy"] == pytest.approx(stored["accuracy"])


def test_predict_cli_top_k_per_image(trained_run: Path, flowers_dir: Path):
    images = [str(p) for p in flower_files(flowers_dir, "sunflowers", 2, split="val")]
    result = run_cli("predict", str(trained_run), *images, "--top-k", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert [r["path"] for r in out] == images
    for row in out:
        assert len(row["top_k"]) == 3 and row["predicted"] in RunDir(trained_run).read_classes()
        probs = [c["probability"] for c in row["top_k"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_predict_corrupt_jpeg_is_named_and_fails(trained_run: Path, tmp_path: Path, flowers_dir: Path):
    good = flower_files(flowers_dir, "roses", 1, split="val")[0]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[:300])
    result = run_cli("predict", str(trained_run), str(good), str(corrupt))
    assert result.returncode == EXIT_BAD_INPUT
    out = json.loads(result.stdout)
    assert "top_k" in out[0] and "corrupt.jpg" in out[1]["error"]


def test_inspect_prints_json_and_exit_code(flowers_dir: Path, tmp_path: Path):
    ok = run_cli("inspect", str(flowers_dir))
    assert ok.returncode == 0 and json.loads(ok.stdout)["trainable"] is True
    one_class = tmp_path / "one"
    (one_class / "daisy").mkdir(parents=True)
    for f in flower_files(flowers_dir, "daisy", 2):
        shutil.copy(f, one_class / "daisy")
    bad = run_cli("inspect", str(one_class))
    assert bad.returncode == 2 and "at least 2 classes" in bad.stderr
    assert json.loads(bad.stdout)["trainable"] is False


def _bad_dataset(kind: str, tmp_path: Path, flowers: Path) -> Path:
    root = tmp_path / kind
    for cls in ("daisy", "roses"):
        (root / cls).mkdir(parents=True)
        for f in flower_files(flowers, cls, 3):
            shutil.copy(f, root / cls)
    if kind == "one_class":
        shutil.rmtree(root / "roses")
    elif kind == "empty_class":
        (root / "tulips").mkdir()
    elif kind == "all_corrupt_class":  # a corrupt JPEG and a text file named .jpg are all the class has
        (root / "tulips").mkdir()
        (root / "tulips" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
        (root / "tulips" / "notes.jpg").write_text("just text")
    return root


@pytest.mark.parametrize("case, args, message", [
    ("one_class", [], "at least 2 classes"),
    ("empty_class", [], "Class 'tulips' has no usable image"),
    ("all_corrupt_class", [], "Class 'tulips' has no usable image"),
    ("missing_path", [], "no such folder"),
    ("ok", ["--augmentation", '[{"name": "Rotate", "params": {"limt": 3}}]'], "unknown parameter 'limt'"),
    ("ok", ["--augmentation", "heavy"], "Unknown augmentation preset 'heavy'"),
    ("ok", ["--backbone", "efficientnet_b9"], "Unknown backbone 'efficientnet_b9'"),
    ("ok", ["--batch-size", "0"], "batch_size must be at least 1"),
])
def test_bad_input_is_one_clear_line_and_leaves_no_run(case, args, message, tmp_path, flowers_dir, capsys):
    # In-process (same code path as `python -m core`), so eight cases don't pay eight TensorFlow imports.
    data = tmp_path / "does_not_exist" if case == "missing_path" else _bad_dataset(case, tmp_path, flowers_dir)
    models = tmp_path / "models"
    code = main(["--models-dir", str(models), "train", "--data", str(data), *TINY, *args])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not models.exists() or not any(models.iterdir())


def test_bad_config_file_key_suggests_the_right_one(tmp_path, flowers_dir, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data": str(flowers_dir), "batchsize": 8}))
    assert main(["train", "--config", str(config)]) == EXIT_BAD_INPUT
    assert "did you mean 'batch_size'" in capsys.readouterr().err


def test_a_stop_before_any_head_is_trained_saves_no_model_and_says_so(tmp_path, flowers_dir):
    """A stop file present from the start: the trainer ends after its first phase, saves no untrained model (it
    once left a 9%-accurate one that became Classify's default), evaluates nothing, and its state says why."""
    models = tmp_path / "models"
    run = RunDir(models / "stop-me")
    run.path.mkdir(parents=True)
    run.request_stop()
    result = run_cli("--models-dir", str(models), "train", "--data", str(flowers_dir), "--run-id", "stop-me", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    status = run.read_status()
    assert status["state"] == "stopped" and status["stopped_in"] == "prepare"
    assert not run.has_model() and run.read_evaluation() is None
    # nothing after the first phase ran; its own line is there only when it ended before the ticker's hard stop
    # (HARD_STOP_GRACE), which a loaded machine can miss (CI-like run, 2026-12-07)
    assert [m["phase"] for m in run.read_metrics() if m["kind"] == "phase"] in ([], ["prepare"])
    from core.training import jobs

    view = jobs.run_view(run)
    assert view.state == "stopped" and not view.model.usable and "No model was saved" in view.headline
    shown = run_cli("--models-dir", str(models), "status", "stop-me")
    report = json.loads(shown.stdout)
    assert shown.returncode == 0 and report["state"] == "stopped" and report["usable_model"] is False
    assert report["headline"] == view.headline and "No model was saved" in report["model_note"]


def test_crash_leaves_failed_status_with_the_error(tmp_path, flowers_dir, monkeypatch):
    import core.base.backbones
    from core.base.config import TrainConfig
    from core.training.train import run_training

    def explode(*args, **kwargs):
        raise RuntimeError("simulated out-of-memory in the backbone")

    monkeypatch.setattr(core.base.backbones, "create_backbone", explode)
    config = TrainConfig(data=str(flowers_dir), image_size=64, head_epochs=1, finetune_epochs=0)
    with pytest.raises(RuntimeError):
        run_training(config, models_dir=tmp_path)
    (run_path,) = list(tmp_path.iterdir())
    status = RunDir(run_path).read_status()
    assert status["state"] == "failed" and "simulated out-of-memory" in status["error"]
    assert not RunDir(run_path).has_model()


@pytest.mark.slow
def test_jax_backend_trains_the_same_recipe(tmp_path, flowers_dir):
    require(_importable("jax"), "the jax package (requirements-dev.txt)")
    models = tmp_path / "models"
    result = run_cli("--models-dir", str(models), "train", "--data", str(flowers_dir), *TINY,
                     env={"KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunDir(Path(result.stdout.strip().splitlines()[-1]))
    assert run.read_config()["versions"]["backend"] == "jax"
    assert run.read_status()["state"] == "succeeded"
    assert run.read_evaluation()["accuracy"] >= ACCURACY_BARS["tiny_96"]
    predicted = run_cli("predict", str(run.path), str(flower_files(flowers_dir, "tulips", 1)[0]),
                        env={"KERAS_BACKEND": "jax"})
    assert predicted.returncode == 0, predicted.stderr[-2000:]


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _stop_in(phase: str, models: Path, flowers_dir: Path, extra: list[str]) -> RunDir:
    """Train (each progress report held 1 s), request a stop as soon as the status shows `phase`."""
    import subprocess
    import sys
    import time

    run = RunDir(models / f"stop-in-{phase}")
    run.path.mkdir(parents=True)
    env = {**__import__("os").environ, "STUDIO_TRAIN_THROTTLE": "1.0"}
    child = subprocess.Popen([sys.executable, "-m", "core", "--models-dir", str(models), "train", "--data",
                              str(flowers_dir), "--run-id", run.run_id, *TINY, *extra], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        status = (run.read_status() or {}) if run.file("status.json").is_file() else {}
        if status.get("phase") == phase and status.get("state") == "running":
            run.request_stop()
            break
        time.sleep(0.1)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-2000:]
    return run


@pytest.mark.parametrize("phase", ["features", "finetune", "evaluate"])
def test_a_stop_keeps_only_what_was_trained_and_never_evaluates(phase, tmp_path, flowers_dir):
    """features: no head yet, so no model; fine-tuning: the head's model is kept; evaluation: the model is kept
    and no half-finished evaluation is written. Either way the run is stopped and not offered by default."""
    from core.training import jobs

    run = _stop_in(phase, tmp_path / "models", flowers_dir, ["--head-epochs", "1", "--finetune-epochs", "1"])
    status = run.read_status()
    assert status["state"] == "stopped" and status["stopped_in"] == phase
    assert run.has_model() == (phase != "features")
    assert run.read_evaluation() is None
    epochs = [m for m in run.read_metrics() if m["kind"] == "epoch" and m["phase"] == "finetune"]
    assert not epochs if phase == "finetune" else True  # a cut-short epoch is no point on the curves
    assert not jobs.run_view(run).model.usable


def test_doctor_reports_the_cpu_and_a_real_convolution(tmp_path):
    result = run_cli("doctor", "--seconds", "0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["backend"] == "tensorflow" and report["devices"][0]["kind"] == "cpu"
    assert report["mixed_precision"] == "float32" and report["xla"] == "off"
    assert report["summary"].startswith("Training on CPU (") and "no GPU found" in report["summary"]
    smoke = report["smoke_test"]
    assert "CPU" in smoke["ran_on"] and smoke["runs"] >= 1 and smoke["gflops_per_s"] > 0
    assert report["versions"]["tensorflow"] and report["versions"]["keras"]


def test_doctor_warns_when_the_driver_sees_a_gpu_that_training_does_not(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H200, 143771'\n")
    (fake / "nvidia-smi").chmod(0o755)
    import os

    result = run_cli("doctor", "--seconds", "0.2", env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["gpus_seen_by_driver"] == [{"name": "NVIDIA H200", "memory_mb": 143771}]
    assert "trains on the CPU: install the GPU wheels" in result.stderr


def test_every_command_and_option_has_a_help_line():
    """`python -m core --help` reads like a short manual, and no option is left without a word of help."""
    import argparse

    from core.cli import build_parser

    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    listed = {choice.dest for choice in commands._choices_actions}
    assert listed == set(commands.choices)  # every sub-command has its one-line help
    assert all(choice.help for choice in commands._choices_actions)
    silent = [f"{name} {action.option_strings or action.dest}" for name, sub in commands.choices.items()
              for action in sub._actions if not isinstance(action, argparse._HelpAction) and not action.help]
    assert not silent, silent
    manual = parser.format_help()
    for name in commands.choices:
        assert f"\n  {name}" in manual.split("positional arguments")[0] or name in ("doctor", "bench"), name
    assert "exit codes" in manual and "examples:" in manual
    for code in (0, 1, 2, 3):  # the scheme of issue 18, each code with its meaning
        assert re.search(rf"^  {code}  \w", manual, re.M), code
    train_help = commands.choices["train"].format_help()
    assert "default: 0.2" in train_help and "pixels, 32 to 1024" in train_help  # defaults and units from config
    for name, sub in commands.choices.items():  # -q/-v also after the command's name, where people type them
        assert {"-q", "--quiet", "-v", "--verbose"} <= {o for a in sub._actions for o in a.option_strings}, name
    assert "effnet-studio app --port" in build_parser("effnet-studio").format_help()  # examples name the command


def test_quiet_or_verbose_before_or_after_the_command():
    from core.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["-q", "status", "r"]).quiet and parser.parse_args(["status", "r", "-q"]).quiet
    assert not parser.parse_args(["status", "r"]).quiet and parser.parse_args(["status", "r", "--verbose"]).verbose
    assert parser.parse_args(["-v", "status", "r"]).verbose  # the command's own default does not reset it
    with pytest.raises(SystemExit) as both:
        parser.parse_args(["status", "r", "-q", "-v"])
    assert both.value.code == EXIT_BAD_INPUT


def test_the_command_line_imports_no_tensorflow_before_logs_are_quieted():
    """core.terminal.quiet_logs must run before TensorFlow is imported: parsing never imports it."""
    import subprocess
    import sys

    code = ("import sys; from core.cli import build_parser; build_parser().parse_args(['train', '--data', 'x']); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
