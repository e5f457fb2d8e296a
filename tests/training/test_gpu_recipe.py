"""The GPU recipe, run on the CPU with faked device info (issue 13.3): bfloat16 where the GPU has it, a batch size
from the device's memory, parallel batch preparation, and fine-tuning after the exact head fit by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.base.config import GPU_FINETUNE_EPOCHS, TrainConfig
from core.base.backbones import activation_ratio
from core.network.device import DeviceInfo, choose_batch_size


@pytest.mark.parametrize("capability, policy", [((9, 0), "mixed_bfloat16")])
def test_a_gpu_run_fine_tunes_in_mixed_precision_with_a_batch_from_its_memory(
        tmp_path: Path, small_dataset: Path, monkeypatch: pytest.MonkeyPatch, capability, policy) -> None:
    import keras

    from core.training.train import run_training

    fake = DeviceInfo("tensorflow", "gpu", "NVIDIA H200", 1, capability, memory_mb=2_000)
    monkeypatch.setattr("core.network.device.detect_device", lambda: fake)
    previous = keras.config.dtype_policy()
    try:
        # XLA off: compiling on the CPU would only cost time here; its choice is tested in test_progress.
        run = run_training(TrainConfig(data=str(small_dataset), image_size=64, xla="off", augmentation="light"),
                           models_dir=tmp_path / "models")
    finally:
        keras.config.set_dtype_policy(previous)
    resolved = run.read_config()["resolved"]
    assert resolved["precision"] == policy and resolved["xla"] is False
    assert resolved["finetune_epochs"] == GPU_FINETUNE_EPOCHS  # the GPU default fine-tunes
    # memory alone would allow 512 a step; 18 photos leave the smallest batch, so an epoch still takes steps
    assert choose_batch_size(fake, 64, policy) == 512
    assert resolved["parallel"]["per_device_batch"] == choose_batch_size(
        fake, 64, policy, activation_ratio("efficientnet_lite0"), resolved["counts"]["train"]) == 16
    assert resolved["parallel"]["loader_workers"] >= 2
    phases = [m["phase"] for m in run.read_metrics() if m["kind"] == "phase"]
    assert phases == ["prepare", "decode", "features", "head_fit", "finetune", "save", "evaluate"]
    epochs = [m for m in run.read_metrics() if m["kind"] == "epoch" and m["phase"] == "finetune"]
    assert 1 <= len(epochs) <= GPU_FINETUNE_EPOCHS and all(m["loss"] == m["loss"] for m in epochs)  # no NaN
    assert run.read_status()["state"] == "succeeded" and run.read_evaluation()["accuracy"] > 0
