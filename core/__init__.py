"""EfficientNet Studio core: datasets, augmentation, loading, training, evaluation. Never imports streamlit."""

from __future__ import annotations

import os

# albumentations checks PyPI for a newer version on import; our hosts and CI have no network for that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# TensorFlow's C++ start-up chatter hides our own messages on the CLI.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# STUDIO_CPU_DEVICES must reach XLA before JAX starts, i.e. before anything imports keras.
if int(os.environ.get("STUDIO_CPU_DEVICES", "0") or 0) > 1:
    _flag = f"--xla_force_host_platform_device_count={os.environ['STUDIO_CPU_DEVICES']}"
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()


class StudioError(Exception):
    """A problem with the user's input or environment, stated as a sentence that says what to do."""
