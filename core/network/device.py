"""What the training process will run on: backend, accelerator, precision and XLA choices."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass


@dataclass
class DeviceInfo:
    backend: str
    accelerator: str  # "gpu" or "cpu"
    name: str         # e.g. "NVIDIA H100 80GB HBM3" or "CPU only"
    count: int
    compute_capability: tuple[int, int] | None = None
    memory_mb: int | None = None  # per accelerator, when known (nvidia-smi, or JAX's memory stats)

    def to_dict(self) -> dict:
        return asdict(self)


def keras_backend() -> str:
    """The Keras backend that will be used, without importing Keras."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


SIMULATE_GPU_ENV = "STUDIO_SIMULATE_GPU"
SIMULATED_CAPABILITY = (9, 0)  # an H100's: bfloat16, the policy a current GPU gets


def simulated_gpu(backend: str) -> DeviceInfo | None:
    """The test switch for the GPU path: STUDIO_SIMULATE_GPU=MEMORY_MB makes this process take every decision a
    GPU of that memory gets (mixed bfloat16, XLA, the batch and learning-rate rules, loader workers, Best by
    default, the compile note) while computing on the CPU, so the configuration a GPU runs is tested end to end
    without one. With STUDIO_CPU_DEVICES=N it is N such devices. Not for real training: slower than the CPU path."""
    value = os.environ.get(SIMULATE_GPU_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) <= 0:
        from core import StudioError

        raise StudioError(f"{SIMULATE_GPU_ENV}={value!r} must be the simulated GPU's memory in MB, e.g. 2000.")
    count = max(1, int(os.environ.get("STUDIO_CPU_DEVICES", "1") or 1))
    return DeviceInfo(backend, "gpu", "simulated GPU (computing on the CPU)", count, SIMULATED_CAPABILITY,
                      int(value))


def detect_device() -> DeviceInfo:
    """Ask the active Keras backend which accelerators it sees (imports the backend)."""
    import keras

    backend = keras.backend.backend()
    simulated = simulated_gpu(backend)
    if simulated is not None:
        return simulated
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if gpus:
            return DeviceInfo(backend, "gpu", getattr(gpus[0], "device_kind", "GPU"), len(gpus),
                              _jax_capability(gpus[0]), _jax_memory_mb(gpus[0]))
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            reported = gpu_memory_from_nvidia_smi()
            return DeviceInfo(backend, "gpu", details.get("device_name", "GPU"), len(gpus),
                              details.get("compute_capability"), reported[0]["memory_mb"] if reported else None)
    return DeviceInfo(backend, "cpu", "CPU only", 1)


def _jax_memory_mb(device) -> int | None:
    try:
        return int(device.memory_stats()["bytes_limit"]) // 1024**2
    except (AttributeError, KeyError, TypeError, RuntimeError):
        return None


def _jax_capability(device) -> tuple[int, int] | None:
    value = getattr(device, "compute_capability", None)
    try:
        major, minor = str(value).split(".")[:2]
        return int(major), int(minor)
    except (ValueError, AttributeError):
        return None


def precision_policy(setting: str, device: DeviceInfo) -> str:
    """float32 on CPU (bfloat16 if asked for); on GPU bfloat16 where the hardware has it (Ampere+, no loss
    scaling), else float16."""
    use_mixed = setting == "on" or (setting == "auto" and device.accelerator == "gpu")
    if not use_mixed:
        return "float32"
    if device.accelerator != "gpu":  # asked for on a CPU: bfloat16, which CPUs compute natively; float16 they emulate
        return "mixed_bfloat16"
    capability = device.compute_capability or (0, 0)
    return "mixed_bfloat16" if tuple(capability) >= (8, 0) else "mixed_float16"


# Fine-tuning memory per image at 224 px (activations kept for the backward pass; EfficientNet-B0-sized, top stages
# and head trainable): about 40 MB in float32 and 22 MB under mixed precision, from the commonly quoted B0 batch of
# 256 at 224 px fitting a 16 GB GPU with AMP and 128 without. It grows with the pixels and with the backbone's
# activations per pixel (core.base.backbones.Backbone.activation_ratio); 60% of the device's memory is budgeted,
# leaving room for weights, optimizer state, XLA's workspace and fragmentation.
MB_PER_IMAGE_224 = {"float32": 40.0, "mixed_float16": 22.0, "mixed_bfloat16": 22.0}
CPU_BATCH = 32
GPU_BATCH_WITHOUT_MEMORY = 64
MIN_BATCH, MAX_BATCH = 16, 512
# Steps an epoch should have at least: a 750-photo set in batches of 512 would take 2 steps per epoch, too few
# for fine-tuning to move (and for early stopping to mean anything), so small sets get smaller batches on a GPU.
MIN_STEPS_PER_EPOCH = 16


def choose_batch_size(device: DeviceInfo, image_size: int, policy: str, activation_ratio: float = 1.0,
                      train_images: int | None = None, replicas: int = 1) -> int:
    """Images per device per step when the config leaves it on auto: 32 on a CPU (throughput barely changes
    with batch size there); on a GPU the largest power of two, 16..512, whose activations fit 60% of its memory
    (activation_ratio: the backbone's activations per pixel against B0's), and no larger than leaves an epoch of
    `train_images` over `replicas` devices MIN_STEPS_PER_EPOCH steps."""
    if device.accelerator != "gpu":
        return CPU_BATCH
    if not device.memory_mb:
        fits = GPU_BATCH_WITHOUT_MEMORY
    else:
        per_image = MB_PER_IMAGE_224.get(policy, MB_PER_IMAGE_224["float32"]) * (image_size / 224) ** 2 \
            * max(activation_ratio, 0.1)
        fits = int(0.6 * device.memory_mb / per_image)
    if train_images:
        fits = min(fits, train_images // (MIN_STEPS_PER_EPOCH * max(replicas, 1)))
    batch = MIN_BATCH
    while batch * 2 <= min(fits, MAX_BATCH):
        batch *= 2
    return batch


# The batch the learning rates of the recipe were chosen at (on a CPU, issue 28's Best and the defaults).
REFERENCE_BATCH = 32


def learning_rate_scale(global_batch: int, optimizer: str) -> float:
    """How much a learning rate chosen at REFERENCE_BATCH grows when the global batch grows: linearly for SGD
    (Goyal et al. 2017, "Accurate, large minibatch SGD"), by the square root for Adam (Malladi et al. 2022, "On the
    SDEs and scaling rules for adaptive gradient algorithms"; linear scaling overshoots with adaptive steps). Never
    below 1: a smaller batch keeps the chosen rate. The trainer warms the scaled rate up over the first epoch."""
    ratio = max(global_batch / REFERENCE_BATCH, 1.0)
    return ratio if optimizer == "sgd" else ratio ** 0.5


def loader_workers(device: DeviceInfo) -> int:
    """Batches prepared ahead in parallel: on a GPU enough that it never waits for augmentation; on a CPU one
    (each batch already augments on every core, and the model needs the cores too)."""
    return max(2, min(8, os.cpu_count() or 2)) if device.accelerator == "gpu" else 1


def use_xla(setting: str, device: DeviceInfo, strategy: str = "single") -> bool:
    """XLA pays off on GPU; on CPU it mostly adds compile time, so it is off there unless asked for. Under
    TensorFlow's MirroredStrategy it stays off even when asked for: Keras turns it off there itself on "auto"
    (keras-team/keras#18716, #19005), and forced on, the first step fails: "Trying to access resource
    conv2d/kernel/replica_1 ... located in device CPU:1 from device CPU:0" (XLA's known issue with variables on
    another device; measured on 2 logical CPU devices, TensorFlow 2.21, docs/benchmarks.md). JAX's data parallelism
    compiles with XLA in any case."""
    if strategy == "mirrored":
        return False
    return setting == "on" or (setting == "auto" and device.accelerator == "gpu")


def xla_note(setting: str, device: DeviceInfo, strategy: str) -> str:
    """Why XLA is off when it would otherwise be on (for the run's record and the log); empty when it is not."""
    if strategy == "mirrored" and use_xla(setting, device):
        return ("XLA off: TensorFlow's MirroredStrategy over several devices trains without it (Keras turns it off "
                "there, keras-team/keras#18716); KERAS_BACKEND=jax compiles several devices with XLA.")
    return ""


# ----------------------------------------------------------------------------------------- doctor
def gpu_memory_from_nvidia_smi() -> list[dict]:
    """[{'name', 'memory_mb'}] per GPU as the driver reports it (empty without nvidia-smi)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in result.stdout.splitlines() if result.returncode == 0 else []:
        name, _, memory = line.rpartition(",")
        try:
            rows.append({"name": name.strip(), "memory_mb": int(float(memory))})
        except ValueError:
            continue
    return rows


def accelerator_hint() -> str:
    """"gpu" when the driver lists a GPU, else "cpu", without importing or initialising the backend: the command
    line picks its default preset with it before training starts, and JAX refuses to join a cluster of several
    processes once any call has initialised its backend (jax.distributed.initialize)."""
    return "gpu" if os.environ.get(SIMULATE_GPU_ENV, "").strip() or gpu_memory_from_nvidia_smi() else "cpu"


def cpu_summary() -> dict:
    """Cores and memory of this machine (Linux /proc; cores only elsewhere)."""
    memory_mb = None
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {"kind": "cpu", "name": f"CPU ({os.cpu_count()} cores)", "cores": os.cpu_count(), "memory_mb": memory_mb}


def device_line(device: DeviceInfo | dict, policy: str, xla: bool) -> str:
    """The sidebar's one line: 'Training on NVIDIA H200 · bfloat16 · XLA' or 'Training on CPU (2 cores): no GPU
    found — see README'."""
    info = device.to_dict() if isinstance(device, DeviceInfo) else device
    if info.get("accelerator") != "gpu":
        return f"Training on CPU ({os.cpu_count()} cores): no GPU found — see README"
    count = int(info.get("count") or 1)
    name = f"{count} x {info.get('name')}" if count > 1 else str(info.get("name"))
    precision = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16", "float32": "float32"}.get(policy, policy)
    return " · ".join([f"Training on {name}", precision] + (["XLA"] if xla else []))


def smoke_test(seconds: float = 2.0) -> dict:
    """A few seconds of 3x3 convolutions on a 224 px batch: where they ran and how fast (GFLOP/s)."""
    import time

    import keras
    import numpy as np

    batch, size, channels, filters = 8, 224, 32, 64
    x = keras.ops.convert_to_tensor(np.random.default_rng(0).random((batch, size, size, channels), np.float32))
    kernel = keras.ops.convert_to_tensor(np.random.default_rng(1).random((3, 3, channels, filters), np.float32))
    out = keras.ops.conv(x, kernel, padding="same")  # the first call pays set-up and compilation
    keras.ops.convert_to_numpy(out[0, 0, 0])
    flops = 2 * batch * size * size * 9 * channels * filters
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = keras.ops.conv(x, kernel, padding="same")
        keras.ops.convert_to_numpy(out[0, 0, 0])  # wait for the device
        runs += 1
    elapsed = time.perf_counter() - start
    return {"op": f"conv 3x3, {batch}x{size}x{size}x{channels} -> {filters} channels, float32",
            "ran_on": _placement(out), "runs": runs, "seconds": round(elapsed, 2),
            "gflops_per_s": round(flops * runs / elapsed / 1e9, 1)}


def _placement(tensor) -> str:
    """Where a backend tensor lives: '/job:localhost/.../device:GPU:0', 'cuda:0', 'TFRT_CPU_0'…"""
    device = getattr(tensor, "device", None)
    if callable(device):
        device = device()
    if device is None and hasattr(tensor, "devices"):
        device = ", ".join(str(d) for d in tensor.devices())
    return str(device or "unknown")


def doctor(smoke_seconds: float = 2.0) -> dict:
    """What training would run on here, as JSON: backend, devices, precision policy, XLA, versions, a smoke test."""
    import platform

    import keras
    import numpy as np

    info = detect_device()
    policy = precision_policy("auto", info)
    xla = use_xla("auto", info)
    if info.accelerator == "gpu":
        reported = gpu_memory_from_nvidia_smi()
        devices = [{"kind": "gpu", "name": info.name, "memory_mb": (reported[i]["memory_mb"] if i < len(reported)
                                                                     else None),
                    "compute_capability": info.compute_capability} for i in range(info.count)]
    else:
        devices = [cpu_summary()]
    versions = {"python": platform.python_version(), "keras": keras.__version__, "numpy": np.__version__}
    if info.backend == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
        versions["cuda_build"] = str(tf.sysconfig.get_build_info().get("cuda_version", "none"))
    elif info.backend == "jax":
        import jax

        versions["jax"] = jax.__version__
    return {"backend": info.backend, "devices": devices, "mixed_precision": policy, "xla": "on" if xla else "off",
            "summary": device_line(info, policy, xla), "versions": versions,
            "gpus_seen_by_driver": gpu_memory_from_nvidia_smi(), "smoke_test": smoke_test(smoke_seconds)}
