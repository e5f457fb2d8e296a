"""EfficientNet Studio core: datasets, augmentation, loading, training, evaluation. Never imports streamlit."""

from __future__ import annotations

import os

# albumentations checks PyPI for a newer version on import; our hosts and CI have no network for that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# TensorFlow's C++ start-up chatter hides our own messages on the CLI.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# GPU memory: TensorFlow claims nearly all of a GPU's memory at start, and JAX 75% of it. The Streamlit server
# loads models in-process (Classify, heatmaps) and a trainer or health check starts beside it, so each process takes
# only what it uses (set here, before any of them imports a backend; a value the user set wins).
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Kernel caches that outlive the run: this TensorFlow build ships no sm_90 code, so an H100/H200 JIT-compiles its
# kernels from PTX on first use (minutes). The driver keeps them in CUDA_CACHE_PATH, 256 MB by default in older
# drivers, too small for TensorFlow's set, so each run compiled again; 4 GB is the driver's maximum. JAX keeps its
# compiled XLA programs in its own cache.
_CACHE_HOME = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                           "efficientnet-studio")
os.environ.setdefault("CUDA_CACHE_PATH", os.path.join(_CACHE_HOME, "cuda-kernels"))
os.environ.setdefault("CUDA_CACHE_MAXSIZE", str(4 * 1024**3))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_CACHE_HOME, "jax-programs"))
# STUDIO_CPU_DEVICES must reach XLA before JAX starts, i.e. before anything imports keras.
# Simulated devices share the real cores, so one can reach an all-reduce long after the other: XLA's default
# 40 s rendezvous deadline then aborts the process on a busy 2-core machine. And XLA sizes its CPU thread pool to
# the core count (PJRT_NPROC overrides it): with 2 cores and 2 devices, one device's computation can hold the
# threads while it waits in an all-reduce for the other, which never gets a thread (a deadlock seen every time on
# the first all-reduce of a large enough step). Two threads per simulated device leave room for both.
if int(os.environ.get("STUDIO_CPU_DEVICES", "0") or 0) > 1:
    _devices = int(os.environ["STUDIO_CPU_DEVICES"])
    for _flag in (f"--xla_force_host_platform_device_count={_devices}",
                  "--xla_cpu_collective_call_terminate_timeout_seconds=1800"):
        if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
    os.environ.setdefault("PJRT_NPROC", str(max(os.cpu_count() or 1, 2 * _devices)))


class StudioError(Exception):
    """A problem with the user's input or environment, stated as a sentence that says what to do."""
