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

    def to_dict(self) -> dict:
        return asdict(self)


def keras_backend() -> str:
    """The Keras backend that will be used, without importing Keras."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def detect_device() -> DeviceInfo:
    """Ask the active Keras backend which accelerators it sees (imports the backend)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if gpus:
            return DeviceInfo(backend, "gpu", getattr(gpus[0], "device_kind", "GPU"), len(gpus),
                              _jax_capability(gpus[0]))
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return DeviceInfo(backend, "gpu", details.get("device_name", "GPU"), len(gpus),
                              details.get("compute_capability"))
    return DeviceInfo(backend, "cpu", "CPU only", 1)


def _jax_capability(device) -> tuple[int, int] | None:
    value = getattr(device, "compute_capability", None)
    try:
        major, minor = str(value).split(".")[:2]
        return int(major), int(minor)
    except (ValueError, AttributeError):
        return None


def precision_policy(setting: str, device: DeviceInfo) -> str:
    """float32 on CPU; on GPU bfloat16 where the hardware has it (Ampere+, no loss scaling), else float16."""
    use_mixed = setting == "on" or (setting == "auto" and device.accelerator == "gpu")
    if not use_mixed:
        return "float32"
    capability = device.compute_capability or (0, 0)
    return "mixed_bfloat16" if tuple(capability) >= (8, 0) else "mixed_float16"


def use_xla(setting: str, device: DeviceInfo) -> bool:
    """XLA pays off on GPU; on CPU it mostly adds compile time, so it is off there unless asked for."""
    return setting == "on" or (setting == "auto" and device.accelerator == "gpu")
