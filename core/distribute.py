"""Data-parallel training over every visible accelerator, with each framework's own machinery.

TensorFlow: `tf.distribute.MirroredStrategy` over one machine's devices. JAX: `keras.distribution.DataParallel`
over `jax.devices()`. Several machines are refused with a message saying why (docs/distributed.md):
TensorFlow's `MultiWorkerMirroredStrategy` breaks Keras 3's `fit` (keras-team/keras#20585, reproduced here with
two workers on one machine); on JAX the cluster joins (gloo on CPU, checked here with two processes) but Keras
then wants each process to feed only its own shard of every batch, which the loader does not do yet.

`batch_size` in a config is per device: the global batch is `batch_size x replicas`, and learning rates are
scaled by the same factor (the linear scaling rule), so one config means the same per-device work anywhere.
`STUDIO_CPU_DEVICES=N` splits the CPU into N devices, so all of this is testable without a GPU.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, ContextManager

from core import StudioError

CPU_DEVICES_ENV = "STUDIO_CPU_DEVICES"
JAX_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "KERAS_DISTRIBUTION_JOB_ADDRESSES")


@dataclass
class Parallelism:
    """How a run is spread: a scope to build and compile the model in, and the number of replicas."""

    scope: Any
    replicas: int
    kind: str  # "single", "mirrored", "jax_data_parallel"
    devices: list[str]

    def context(self) -> ContextManager:
        return self.scope() if callable(self.scope) else contextlib.nullcontext()


MULTI_MACHINE_MESSAGE = (
    "{variable} asks for training across several machines, which this version cannot do yet: on TensorFlow, Keras "
    "3's fit() fails under MultiWorkerMirroredStrategy (keras-team/keras#20585); on JAX, each process would have to "
    "feed only its shard of every batch. Unset {variable} to train on this machine's GPUs (all of them are used); "
    "docs/distributed.md has the details.")


def refuse_multi_machine() -> None:
    """Fail up front, naming the variable, instead of deep inside fit() with a framework error."""
    for variable in ("TF_CONFIG", *JAX_CLUSTER_ENV):
        if os.environ.get(variable):
            raise StudioError(MULTI_MACHINE_MESSAGE.format(variable=variable))


def prepare_devices() -> None:
    """Call before anything touches TensorFlow's runtime: splits the CPU when STUDIO_CPU_DEVICES asks for it."""
    import keras

    refuse_multi_machine()
    if keras.backend.backend() == "tensorflow" and int(os.environ.get(CPU_DEVICES_ENV, "0") or 0) > 1:
        import tensorflow as tf

        _virtual_cpus(tf)


def data_parallel(enabled: bool = True) -> Parallelism:
    """Choose the strategy for the active backend; one device (or `enabled=False`) gives a plain scope."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow(enabled)
    if backend == "jax":
        return _jax(enabled)
    return Parallelism(None, 1, "single", ["default"])


def _tensorflow(enabled: bool) -> Parallelism:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus]
    if not gpus:
        devices = [d.name for d in _virtual_cpus(tf)]
    if not enabled or len(devices) < 2:
        return Parallelism(None, 1, "single", devices[:1] or ["/cpu:0"])
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    return Parallelism(strategy.scope, strategy.num_replicas_in_sync, "mirrored", devices)


def _virtual_cpus(tf) -> list:
    """Split the CPU into STUDIO_CPU_DEVICES logical devices (only possible before TensorFlow initialises)."""
    count = int(os.environ.get(CPU_DEVICES_ENV, "0") or 0)
    cpus = tf.config.list_physical_devices("CPU")
    if count > 1:
        try:
            tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:  # already initialised: keep what exists
            pass
    return tf.config.list_logical_devices("CPU")


def _jax(enabled: bool) -> Parallelism:
    import jax
    import keras

    devices = jax.devices()
    if not enabled or len(devices) < 2:
        return Parallelism(None, 1, "single", [str(devices[0])])
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return Parallelism(None, len(devices), "jax_data_parallel", [str(d) for d in devices])
