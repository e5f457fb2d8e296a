"""Data-parallel training on CPU: 2 virtual devices train like 1, with the per-device batch the docs promise."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli
from core.runs import RunDir

SETTINGS = ["--image-size", "64", "--head-epochs", "4", "--finetune-epochs", "1", "--batch-size", "16"]


def _train(models: Path, flowers: Path, devices: int) -> RunDir:
    result = run_cli("--models-dir", str(models), "train", "--data", str(flowers), *SETTINGS,
                     env={"STUDIO_CPU_DEVICES": str(devices), "KERAS_BACKEND": "tensorflow"})
    assert result.returncode == 0, result.stderr[-3000:]
    return RunDir(Path(result.stdout.strip().splitlines()[-1]))


def test_two_cpu_devices_match_one(tmp_path, flowers_dir):
    one = _train(tmp_path / "one", flowers_dir, 1)
    two = _train(tmp_path / "two", flowers_dir, 2)
    single = one.read_config()["resolved"]["parallel"]
    mirrored = two.read_config()["resolved"]["parallel"]
    assert single["replicas"] == 1 and single["kind"] == "single"
    assert mirrored["kind"] == "mirrored" and mirrored["replicas"] == 2
    # batch_size is per device: 2 devices x 16 = a global batch of 32, and the learning rate doubles with it
    assert mirrored["per_device_batch"] == 16 and mirrored["global_batch"] == 32
    assert mirrored["learning_rate_scale"] == 2.0
    steps = {m["steps"] for m in two.read_metrics() if m["kind"] == "step" and m["phase"] == "finetune"}
    assert steps == {10}  # 320 training images / 32 per global step
    accuracy_one, accuracy_two = one.read_evaluation()["accuracy"], two.read_evaluation()["accuracy"]
    assert accuracy_one > 0.5 and accuracy_two > 0.5
    assert abs(accuracy_one - accuracy_two) <= 0.15  # same accuracy within the noise of 80 validation images
