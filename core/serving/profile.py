"""Which install profile this process runs in (train or serve), and where the demo bundles are.

The serve profile (requirements.txt: Heroku, Community Cloud) has no TensorFlow, Keras or albumentations, so it
can only show demo bundles (core.serving.bundle). Detection looks the packages up with importlib.util.find_spec, which
reads the file system and imports nothing: `import tensorflow` alone costs ~525 MiB and seconds of start-up, more
than a 512 MiB dyno has. Nothing here imports streamlit.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

from core.serving.bundle import find_bundles

REPO_ROOT = Path(__file__).resolve().parents[2]
# What training, augmentation previews, evaluation of a Keras model and heatmaps import.
TRAIN_PACKAGES = ("tensorflow", "keras", "albumentations")
TRAIN_REQUIREMENTS = "requirements-train.txt"
DEMO_DIR_ENV = "STUDIO_DEMO_DIR"
# STUDIO_PROFILE=serve shows a train-profile install as the hosted demo will look (it never forces "train":
# that would only fail later, at the first import).
PROFILE_ENV = "STUDIO_PROFILE"


@functools.lru_cache(maxsize=1)
def _missing_on_disk() -> tuple[str, ...]:
    """The train packages that are not installed (looked up once per process; installs don't change under us)."""
    return tuple(name for name in TRAIN_PACKAGES if importlib.util.find_spec(name) is None)


def missing_train_packages() -> list[str]:
    """Train-profile packages this process cannot import, without importing any of them."""
    return list(_missing_on_disk())


def is_train_profile() -> bool:
    """True when training (TensorFlow, Keras, albumentations) is available and not switched off by STUDIO_PROFILE."""
    if os.environ.get(PROFILE_ENV, "").strip().lower() == "serve":
        return False
    return not missing_train_packages()


def profile_name() -> str:
    """'train' or 'serve', for the sidebar and logs."""
    return "train" if is_train_profile() else "serve"


def train_profile_message(what: str = "Training") -> str:
    """The sentence the training pages show in the serve profile: what is missing and how to get it."""
    missing = missing_train_packages()
    why = (f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
           if missing else f"{PROFILE_ENV}=serve is set")
    return (f"{what} needs the train profile, and this deployment runs the serve profile ({why}). "
            f"Install it with `pip install -r {TRAIN_REQUIREMENTS}` (or `make run`) on your own machine; "
            "here, the Evaluate and Classify pages show the demo bundles that came with the deployment.")


def demo_dir() -> Path:
    """Where demo bundles are looked for: $STUDIO_DEMO_DIR (a relative path counts from the repository, whatever
    folder the host starts the app in), else `<repo>/demo/`."""
    configured = Path(os.environ.get(DEMO_DIR_ENV, "").strip() or "demo").expanduser()
    return configured if configured.is_absolute() else REPO_ROOT / configured


def demo_bundles(folder: Path | None = None) -> list[Path]:
    """Bundle folders and zips in the demo folder, one per bundle: make_demo_bundle writes a folder and its .zip
    side by side, and a deployment may ship both, so a zip whose folder is present is left out."""
    found = find_bundles(folder or demo_dir())
    folders = {p.name for p in found if p.is_dir()}
    return [p for p in found if p.is_dir() or p.stem not in folders]
