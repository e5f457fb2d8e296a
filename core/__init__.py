"""EfficientNet Studio core: datasets, augmentation, loading, training, evaluation. Never imports streamlit."""

from __future__ import annotations

import os

# albumentations checks PyPI for a newer version on import; our hosts and CI have no network for that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# TensorFlow's C++ start-up chatter hides our own messages on the CLI.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
