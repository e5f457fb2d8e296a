"""EfficientNet Studio core: datasets, augmentation, loading, training, evaluation. Never imports streamlit."""

from __future__ import annotations

import os

# albumentations checks PyPI for a newer version on import; our hosts and CI have no network for that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# TensorFlow's C++ start-up chatter hides our own messages on the CLI.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class StudioError(Exception):
    """A problem with the user's input or environment, stated as a sentence that says what to do."""
