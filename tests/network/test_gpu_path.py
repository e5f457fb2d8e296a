"""The GPU path as a GPU user gets it (issue 29), computed on the CPU.

STUDIO_SIMULATE_GPU=MEMORY_MB makes a process take every decision a GPU of that memory gets (mixed bfloat16, XLA by
the strategy's rule, the batch and learning-rate rules, loader workers, Best by default, the compile note), and
STUDIO_CPU_DEVICES=2 gives it two devices, so TensorFlow trains under MirroredStrategy with synchronized BatchNorm
as it would on two GPUs. What a GPU adds on top (CUDA kernels, real memory) waits for `make gpu-check` on one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REPO, run_cli
from core import StudioError
from core.base.runs import RunDir
from core.network.device import (MAX_BATCH, REFERENCE_BATCH, DeviceInfo, accelerator_hint,
                                 choose_batch_size, learning_rate_scale, simulated_gpu, use_xla, xla_note)

GPU_ENV = {"STUDIO_SIMULATE_GPU": "2000", "STUDIO_CPU_DEVICES": "2", "KERAS_BACKEND": "tensorflow"}


def test_the_shipped_gpu_configuration_trains_reloads_evaluates_and_exports_on_two_cpu_devices(tmp_path, flowers_dir):
    """Every default a GPU gets, end to end: Best preset (the GPU default), mixed bfloat16, MirroredStrategy over 2
    devices with the head's BatchNorm synchronized, XLA off under it (it fails at the first step there), the
    learning rate grown with the global batch and warmed up, fine-tuning on augmented photos, the best checkpoint,
    then the saved model reloaded in another process, evaluated to the same accuracy, and exported with parity."""
    models = tmp_path / "models"
    every_step = tmp_path / "steps.json"
    every_step.write_text(json.dumps({"log_every_steps": 1}))  # a step line per step: the warm-up is visible
    trained = run_cli("--models-dir", str(models), "train", "--data", str(flowers_dir), "--image-size", "64",
                      "--batch-size", "32", "--finetune-epochs", "2", "--config", str(every_step), env=GPU_ENV,
                      timeout=1500)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Preset best:" in trained.stderr and "simulated GPU" in trained.stderr, trained.stderr[-2000:]
    run = RunDir(Path(trained.stdout.strip().splitlines()[-1]))
    config = run.read_config()
    resolved = config["resolved"]
    assert config["preset"] == "best" and resolved["finetune_epochs"] == 2
    assert resolved["device"]["accelerator"] == "gpu" and resolved["precision"] == "mixed_bfloat16"
    assert resolved["xla"] is False and "MirroredStrategy" in resolved["xla_note"]
    parallel = resolved["parallel"]
    assert parallel["kind"] == "mirrored" and parallel["replicas"] == 2 and parallel["loader_workers"] >= 2
    assert parallel["per_device_batch"] == 32 and parallel["global_batch"] == 64
    assert parallel["learning_rate_scale"] == pytest.approx(math.sqrt(64 / REFERENCE_BATCH))
    assert config["augmentation"], "fine-tuning on a GPU augments on the fly"

    metrics = run.read_metrics()
    phases = [m["phase"] for m in metrics if m["kind"] == "phase"]
    assert phases == ["prepare", "decode", "features", "head_fit", "finetune", "save", "evaluate"]
    assert any(m["kind"] == "head_on_validation" for m in metrics), "the head entered the best-checkpoint race"
    # the warm-up: the first epoch's steps climb from the unscaled rate to the scaled one, which epoch 2 starts at
    steps = [m for m in metrics if m["kind"] == "step" and m["phase"] == "finetune" and m["phase_epoch"] == 1]
    target = config["finetune_lr"] * parallel["learning_rate_scale"]
    assert steps and steps[0]["lr"] < steps[-1]["lr"] <= target * (1 + 1e-6), [s["lr"] for s in steps]
    assert steps[0]["lr"] == pytest.approx(config["finetune_lr"], rel=0.3)
    epochs = [m for m in metrics if m["kind"] == "epoch" and m["phase"] == "finetune"]
    assert epochs and epochs[0]["lr"] == pytest.approx(target, rel=1e-5)
    assert all(np.isfinite(m["loss"]) for m in epochs)
    evaluation = run.read_evaluation()
    assert run.read_status()["state"] == "succeeded" and evaluation["accuracy"] > 0.4

    # reloaded in a new process, on the photos the run was scored on (flowers-mini's val/ folder)
    evaluated = run_cli("--models-dir", str(models), "evaluate", str(run.path), "--data", str(flowers_dir / "val"),
                        env=GPU_ENV, timeout=900)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(evaluation["accuracy"], abs=1 / 80 + 1e-9)
    exported = run_cli("--models-dir", str(models), "export", str(run.path), "--format", "tflite",
                       "--data", str(flowers_dir), env=GPU_ENV, timeout=900)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert json.loads(exported.stdout)["failed"] == []


def test_one_simulated_gpu_trains_with_xla_as_a_single_gpu_would(tmp_path, small_dataset):
    """One GPU gets XLA (jit_compile) on top of bfloat16; the fine-tuning step compiled by XLA trains, saves and is
    evaluated."""
    trained = run_cli("--models-dir", str(tmp_path / "models"), "train", "--data", str(small_dataset), "--image-size",
                      "64", "--finetune-epochs", "1", env={**GPU_ENV, "STUDIO_CPU_DEVICES": "1"}, timeout=1200)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = RunDir(Path(trained.stdout.strip().splitlines()[-1]))
    resolved = run.read_config()["resolved"]
    assert resolved["xla"] is True and resolved["xla_note"] == "" and resolved["precision"] == "mixed_bfloat16"
    assert resolved["parallel"]["kind"] == "single"
    assert any(m["kind"] == "epoch" and m["phase"] == "finetune" for m in run.read_metrics())
    assert run.read_status()["state"] == "succeeded" and run.read_evaluation()["accuracy"] >= 0


def test_xla_stays_off_under_mirrored_strategy_and_says_why() -> None:
    gpu = DeviceInfo("tensorflow", "gpu", "H100", 2, (9, 0), 80_000)
    assert use_xla("auto", gpu) and use_xla("on", gpu, "single") and use_xla("auto", gpu, "jax_data_parallel")
    assert not use_xla("auto", gpu, "mirrored") and not use_xla("on", gpu, "mirrored")
    assert "keras-team/keras#18716" in xla_note("auto", gpu, "mirrored")
    assert xla_note("auto", gpu, "single") == "" and xla_note("off", gpu, "mirrored") == ""


def test_the_gpu_batch_counts_the_backbone_and_leaves_every_epoch_enough_steps() -> None:
    h100 = DeviceInfo("tensorflow", "gpu", "H100", 1, (9, 0), 80_000)
    small = DeviceInfo("tensorflow", "gpu", "T4", 1, (7, 5), 15_000)
    assert choose_batch_size(h100, 224, "mixed_bfloat16") == MAX_BATCH
    # 300 px in float32 on a 15 GB card: B0 72 MB an image (125 fit: 64), B4 177 MB (50: 32), B7 414 MB (21: 16)
    assert choose_batch_size(small, 300, "float32", activation_ratio=1.0) == 64
    assert choose_batch_size(small, 300, "float32", activation_ratio=2.47) == 32
    assert choose_batch_size(small, 300, "float32", activation_ratio=5.77) == 16
    # 600 training photos: 600 // 16 steps = 37 -> 32 a step; over 2 devices 16 each; 50,000 photos: memory decides
    assert choose_batch_size(h100, 224, "mixed_bfloat16", train_images=600) == 32
    assert choose_batch_size(h100, 224, "mixed_bfloat16", train_images=600, replicas=2) == 16
    assert choose_batch_size(h100, 224, "mixed_bfloat16", train_images=50_000) == MAX_BATCH
    assert choose_batch_size(DeviceInfo("tensorflow", "cpu", "CPU", 1), 288, "float32", 5.0, 10) == 32


def test_learning_rates_grow_with_the_global_batch_by_the_optimizers_rule() -> None:
    assert learning_rate_scale(32, "adam") == learning_rate_scale(16, "adam") == learning_rate_scale(8, "sgd") == 1.0
    assert learning_rate_scale(512, "adam") == pytest.approx(4.0)
    assert learning_rate_scale(512, "sgd") == pytest.approx(16.0)


def test_warm_up_climbs_to_the_scaled_rate_over_the_first_epoch_only() -> None:
    import keras

    from core.training.train import WarmUp

    seen: list[float] = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(np.asarray(self.model.optimizer.learning_rate)))

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(4e-3), "mse")
    x, y = np.zeros((40, 3), "float32"), np.zeros((40, 2), "float32")
    model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[WarmUp(0.25), Record()])
    assert seen[:4] == pytest.approx([1e-3, 1.75e-3, 2.5e-3, 3.25e-3])  # 4 steps: 1/4 of the rate, rising
    assert seen[4:] == pytest.approx([4e-3] * 4)


def test_the_first_epoch_says_it_is_compiling_where_steps_compile() -> None:
    from core.training.train import COMPILING, RunLogger

    reports: list[dict] = []
    tracker = SimpleNamespace(advance=lambda done, force=False, **fields: reports.append(fields) or True)
    for slow in (True, False):
        trainer = SimpleNamespace(compiles_slowly=slow, global_epoch=0, tracker=tracker)
        logger = RunLogger(trainer, "finetune", 2, 32, 320, 80)
        logger.set_params({"steps": 10})
        logger.on_epoch_begin(0)
        logger.on_epoch_begin(1)
    assert [r["message"] for r in reports] == [COMPILING, "", "", ""]


def test_the_simulated_gpu_switch_is_checked_and_picks_the_gpu_preset(monkeypatch) -> None:
    monkeypatch.delenv("STUDIO_SIMULATE_GPU", raising=False)
    assert simulated_gpu("tensorflow") is None
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi
    assert accelerator_hint() == "cpu"
    monkeypatch.setenv("STUDIO_SIMULATE_GPU", "2000")
    monkeypatch.setenv("STUDIO_CPU_DEVICES", "2")
    assert simulated_gpu("jax") == DeviceInfo("jax", "gpu", "simulated GPU (computing on the CPU)", 2, (9, 0), 2000)
    assert accelerator_hint() == "gpu"
    monkeypatch.setenv("STUDIO_SIMULATE_GPU", "lots")
    with pytest.raises(StudioError, match="STUDIO_SIMULATE_GPU='lots' must be the simulated GPU's memory in MB"):
        simulated_gpu("tensorflow")


def test_every_gpu_found_gets_memory_growth_and_an_initialised_one_is_skipped() -> None:
    from core.network.distribute import allow_memory_growth

    calls: list[tuple[str, bool]] = []

    def set_memory_growth(gpu, enabled):
        if gpu.name.endswith(":1"):
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        calls.append((gpu.name, enabled))

    gpus = [SimpleNamespace(name=f"/physical_device:GPU:{i}") for i in range(3)]
    fake_tf = SimpleNamespace(config=SimpleNamespace(
        list_physical_devices=lambda kind: gpus if kind == "GPU" else [],
        experimental=SimpleNamespace(set_memory_growth=set_memory_growth)))
    assert allow_memory_growth(fake_tf) == ["/physical_device:GPU:0", "/physical_device:GPU:2"]
    assert calls == [("/physical_device:GPU:0", True), ("/physical_device:GPU:2", True)]


def test_every_process_that_imports_core_shares_the_gpu_and_keeps_its_kernel_caches(tmp_path) -> None:
    """Set before any backend is imported, so the server, the trainer and the health check all get them; a value
    the user set wins."""
    probe = ("import core, os, json; print(json.dumps({k: os.environ.get(k) for k in ('TF_FORCE_GPU_ALLOW_GROWTH', "
             "'XLA_PYTHON_CLIENT_PREALLOCATE', 'CUDA_CACHE_PATH', 'CUDA_CACHE_MAXSIZE', 'JAX_COMPILATION_CACHE_DIR')}))")
    names = ("TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE", "CUDA_CACHE_PATH", "CUDA_CACHE_MAXSIZE",
             "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")
    env = {k: v for k, v in os.environ.items() if k not in names}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")

    def probed(extra: dict[str, str]) -> dict[str, str]:
        out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env={**env, **extra}, capture_output=True,
                             text=True, timeout=120, check=True).stdout
        return json.loads(out)

    found = probed({})
    assert found["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" and found["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert found["CUDA_CACHE_PATH"] == str(tmp_path / "cache" / "efficientnet-studio" / "cuda-kernels")
    assert found["CUDA_CACHE_MAXSIZE"] == str(4 * 1024**3)
    assert found["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "cache" / "efficientnet-studio" / "jax-programs")
    assert probed({"TF_FORCE_GPU_ALLOW_GROWTH": "false", "CUDA_CACHE_PATH": "/x"})["CUDA_CACHE_PATH"] == "/x"
    assert probed({"TF_FORCE_GPU_ALLOW_GROWTH": "false"})["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"


def test_the_activation_table_matches_the_networks() -> None:
    from core.base.backbones import ACTIVATIONS_VS_B0
    from core.network.model import activation_elements

    b0 = activation_elements("efficientnet_b0")
    for name in ("efficientnet_lite0", "efficientnet_b1"):
        assert activation_elements(name) / b0 == pytest.approx(ACTIVATIONS_VS_B0[name], abs=0.01), name
