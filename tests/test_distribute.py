"""Data-parallel training on CPU: 2 virtual devices train like 1, with the per-device batch the docs promise.

TensorFlow splits the CPU into logical devices (MirroredStrategy); JAX gets
--xla_force_host_platform_device_count (keras.distribution.DataParallel). Both through STUDIO_CPU_DEVICES.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import require, run_cli
from core.runs import RunDir

SETTINGS = ["--image-size", "64", "--head-epochs", "4", "--finetune-epochs", "1", "--batch-size", "16"]


# JAX compiles the whole step up front on a CPU (slow), so its runs keep to the frozen-base phase in images mode:
# still a data-parallel fit whose gradients are all-reduced across the two devices every step.
JAX_SETTINGS = ["--image-size", "64", "--head-mode", "images", "--head-epochs", "2", "--finetune-epochs", "0",
                "--batch-size", "16"]


def _train(models: Path, flowers: Path, devices: int, backend: str = "tensorflow",
           settings: list[str] = SETTINGS) -> RunDir:
    result = run_cli("--models-dir", str(models), "train", "--data", str(flowers), *settings,
                     env={"STUDIO_CPU_DEVICES": str(devices), "KERAS_BACKEND": backend}, timeout=900)
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


def test_two_jax_cpu_devices_match_one(tmp_path, flowers_dir):
    import importlib.util

    require(importlib.util.find_spec("jax") is not None, "the jax package (requirements-dev.txt)")
    one = _train(tmp_path / "one", flowers_dir, 1, "jax", JAX_SETTINGS)
    two = _train(tmp_path / "two", flowers_dir, 2, "jax", JAX_SETTINGS)
    assert one.read_config()["resolved"]["parallel"]["kind"] == "single"
    parallel = two.read_config()["resolved"]["parallel"]
    assert parallel["kind"] == "jax_data_parallel" and parallel["devices"] == ["cpu:0", "cpu:1"]
    assert parallel["per_device_batch"] == 16 and parallel["global_batch"] == 32
    steps = {m["steps"] for m in two.read_metrics() if m["kind"] == "step"}
    assert steps == {10}  # 320 training images / 32 per global step (one device: 16 per step, 20 steps)
    assert {m["steps"] for m in one.read_metrics() if m["kind"] == "step"} == {20}
    accuracy_one, accuracy_two = one.read_evaluation()["accuracy"], two.read_evaluation()["accuracy"]
    assert accuracy_one > 0.4 and accuracy_two > 0.4  # chance is 0.2; two frozen-base epochs at 64 px
    assert abs(accuracy_one - accuracy_two) <= 0.15


@pytest.mark.parametrize("variable, value", [
    ("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}'),
    ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "a:1234,b:1234"),
])
def test_multi_machine_is_refused_up_front_naming_the_variable(monkeypatch, variable, value):
    """Both frameworks fail deep inside fit() across machines today; the trainer says so before any work."""
    from core import StudioError
    from core.distribute import prepare_devices

    monkeypatch.setenv(variable, value)
    with pytest.raises(StudioError, match=rf"{variable} asks for training across several machines.*Unset {variable}"):
        prepare_devices()
