"""Data-parallel training over every visible accelerator, with each framework's own machinery.

TensorFlow: `tf.distribute.MirroredStrategy` over one machine's devices. JAX: `keras.distribution.DataParallel`
over `jax.devices()`, which on several machines (processes) means every device of every process.

Several processes (machines) train on JAX only: each process is started with the same command and
`KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES`, `KERAS_DISTRIBUTION_PROCESS_ID` (or JAX's
`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`). Each process feeds only its own slice of every
global batch (`DataParallel(auto_shard_dataset=False)`, `core.data.loader.ImageBatches(shard=...)`), computes features
and predictions for its slice (`sharded_forward`), and gathers the rest from the others, so every process holds
the same features and fits the same head. Process 0 (the chief) writes the run folder. TensorFlow's
`MultiWorkerMirroredStrategy` breaks Keras 3's `fit` (keras-team/keras#20585), so `TF_CONFIG` is refused up front.

`batch_size` in a config is per device: the global batch is `batch_size x replicas`, and learning rates are
scaled by the same factor (the linear scaling rule), so one config means the same per-device work anywhere.
`STUDIO_CPU_DEVICES=N` splits the CPU into N devices, so all of this is testable without a GPU.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import numpy as np

from core import StudioError

CPU_DEVICES_ENV = "STUDIO_CPU_DEVICES"
# (addresses, number of processes, this process's index): Keras' names first, then JAX's own.
CLUSTER_ENV = (("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                "KERAS_DISTRIBUTION_PROCESS_ID"),
               ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))


@dataclass
class Parallelism:
    """How a run is spread: a scope to build and compile the model in, the number of replicas (devices, over
    every process), and which of how many processes this one is."""

    scope: Any
    replicas: int
    kind: str  # "single", "mirrored", "jax_data_parallel"
    devices: list[str]
    process_index: int = 0
    process_count: int = 1
    distribution: Any = None  # the keras.distribution.DataParallel in force (JAX)

    def context(self) -> ContextManager:
        return self.scope() if callable(self.scope) else contextlib.nullcontext()

    @property
    def is_chief(self) -> bool:
        """Process 0 writes the run folder; the others only compute."""
        return self.process_index == 0

    @property
    def multi_process(self) -> bool:
        return self.process_count > 1

    def local_slice(self, global_rows: np.ndarray) -> np.ndarray:
        """This process's contiguous share of a global batch (its length must divide by the process count)."""
        if len(global_rows) % self.process_count:
            raise ValueError(f"a global batch of {len(global_rows)} does not split over {self.process_count} "
                             "processes")
        share = len(global_rows) // self.process_count
        return global_rows[self.process_index * share:(self.process_index + 1) * share]


@dataclass(frozen=True)
class Cluster:
    """The processes of a multi-process (multi-machine) JAX run, from the environment."""

    addresses: str
    num_processes: int
    process_id: int
    variables: tuple[str, str, str]


def cluster_from_env(environ: dict[str, str] | None = None) -> Cluster | None:
    """The cluster the environment describes, or None; a half-set or inconsistent one is refused by name."""
    environ = os.environ if environ is None else environ
    for names in CLUSTER_ENV:
        addresses_name, count_name, index_name = names
        if not environ.get(addresses_name):
            continue
        addresses = environ[addresses_name]
        listed = len(addresses.split(","))
        count_text = environ.get(count_name) or (str(listed) if listed > 1 else "")
        index_text = environ.get(index_name, "")
        if not count_text.strip().isdigit() or not index_text.strip().isdigit():
            raise StudioError(f"{addresses_name} is set, so {count_name} (how many processes) and {index_name} "
                              f"(this one, from 0) must be whole numbers too; got {count_name}={count_text!r}, "
                              f"{index_name}={index_text!r}.")
        count, index = int(count_text), int(index_text)
        if count < 1 or not 0 <= index < count:
            raise StudioError(f"{index_name}={index} must be from 0 to {count_name}-1 ({count - 1}).")
        if listed > 1 and listed != count:
            raise StudioError(f"{addresses_name} lists {listed} addresses but {count_name} is {count}.")
        return Cluster(addresses, count, index, names)
    return None


TF_CONFIG_MESSAGE = (
    "TF_CONFIG asks TensorFlow to train across several machines, which Keras 3 cannot do: its fit() fails under "
    "MultiWorkerMirroredStrategy (keras-team/keras#20585). Unset TF_CONFIG, and train across machines with "
    "KERAS_BACKEND=jax and KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES and "
    "KERAS_DISTRIBUTION_PROCESS_ID instead (docs/distributed.md).")
NEEDS_JAX_MESSAGE = (
    "{variable} asks for training across several processes, which this project does on the JAX backend only; "
    "set KERAS_BACKEND=jax (and install jax) or unset {variable} (docs/distributed.md).")


def refuse_unsupported_cluster(backend: str) -> Cluster | None:
    """Fail up front, naming the variable, instead of deep inside fit() with a framework error; return the
    cluster to join when there is one."""
    if os.environ.get("TF_CONFIG"):
        raise StudioError(TF_CONFIG_MESSAGE)
    cluster = cluster_from_env()
    if cluster is not None and backend != "jax":
        raise StudioError(NEEDS_JAX_MESSAGE.format(variable=cluster.variables[0]))
    return cluster


_joined: Cluster | None = None


def join_cluster(cluster: Cluster) -> None:
    """Connect this process to the others (once), before anything asks JAX for its devices. On a CPU the
    processes talk through gloo (JAX's default there has no cross-process collectives)."""
    global _joined
    if _joined is not None:
        return
    import jax
    import keras

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize(job_addresses=cluster.addresses, num_processes=cluster.num_processes,
                                  process_id=cluster.process_id)
    _joined = cluster


def prepare_devices() -> None:
    """Call before anything touches TensorFlow's runtime: splits the CPU when STUDIO_CPU_DEVICES asks for it."""
    import keras

    cluster = refuse_unsupported_cluster(keras.backend.backend())
    if cluster is not None:
        join_cluster(cluster)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        allow_memory_growth(tf)
        if int(os.environ.get(CPU_DEVICES_ENV, "0") or 0) > 1:
            _virtual_cpus(tf)


def share_gpu_memory() -> None:
    """allow_memory_growth for processes that load models outside the trainer: the server (Classify, heatmaps,
    evaluation) and the health check."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        allow_memory_growth(tf)


def allow_memory_growth(tf: Any) -> list[str]:
    """Each GPU's memory taken as it is used, not all at start (TensorFlow's default), so a trainer, a health check
    and the server's loaded models share one GPU. core/__init__ sets TF_FORCE_GPU_ALLOW_GROWTH for the same reason;
    this covers a process whose environment overrode it. Returns the GPUs it applied to."""
    applied = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):  # already initialised: its setting is fixed for this process
            continue
        applied.append(gpu.name)
    return applied


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

    devices = jax.devices()  # every process's devices once the cluster is joined
    processes = jax.process_count()
    if processes > 1 and not enabled:
        raise StudioError("data_parallel is off, but this run is one of several processes "
                          f"({processes}); turn data_parallel on or start a single process.")
    if not enabled or len(devices) < 2:
        return Parallelism(None, 1, "single", [str(devices[0])])
    # Each process feeds only its slice of every batch (the loader shards), so Keras must not shard again.
    distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    keras.distribution.set_distribution(distribution)
    return Parallelism(None, len(devices), "jax_data_parallel", [str(d) for d in devices],
                       process_index=jax.process_index(), process_count=processes, distribution=distribution)


def sharded_forward(model, parallel: Parallelism) -> Callable[[np.ndarray], np.ndarray]:
    """A function from this process's slice of a global batch to the model's outputs for the whole global batch:
    every process computes its slice on its own devices, then all slices are gathered to every process (in
    process order, which is the order of the global batch)."""
    import jax
    from jax.experimental import multihost_utils

    forward = jax.jit(lambda trainable, other, x: model.stateless_call(trainable, other, x, training=False)[0])

    def run(local_batch: np.ndarray) -> np.ndarray:
        layout = parallel.distribution.get_data_layout((len(local_batch) * parallel.process_count,
                                                        *local_batch.shape[1:]))
        inputs = jax.make_array_from_process_local_data(layout.backend_layout, local_batch)
        outputs = forward([v.value for v in model.trainable_variables],
                          [v.value for v in model.non_trainable_variables], inputs)
        return np.asarray(multihost_utils.process_allgather(outputs, tiled=True))

    return run


def any_process(flag: bool, parallel: Parallelism) -> bool:
    """True on every process when `flag` is true on any (a stop seen by one process stops them all at the same
    step). All processes must call this at the same points."""
    if not parallel.multi_process:
        return flag
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([int(flag)], dtype=np.int32))
    return bool(np.asarray(flags).any())


def leave_distribution() -> None:
    """Back to plain single-device placement (the chief evaluates the saved model alone, after training)."""
    import keras

    if keras.backend.backend() == "jax":
        keras.distribution.set_distribution(None)
