"""A small CNN trained from scratch: the baseline that shows what pretrained weights buy (issue 20).

The classic Keras tutorial network: blocks of 3x3 Conv2D -> BatchNorm -> ReLU, each but the last followed by a 2x2
max-pool, with 32, 64, 128 and 256 filters. Like every backbone in the registry (core.base.backbones) it takes RGB
pixels 0..255 and rescales them inside the model, and it has no classifier and no pooling of its own: the same head
as an EfficientNet's (core.network.model.build_classifier: GAP -> BatchNorm -> Dropout -> Dense) goes on top, so
evaluation, export and the class-activation map (core.results.cam) treat it like any other backbone. The last block
is not pooled, so the map the heatmap is drawn from stays fine (image size / 8 per side).

Its layers are named `stage<n>_...`, never `block<n>...`: the EfficientNet helpers that look for numbered blocks
(mid-level pooling, fine-tuning the top stages) find none here, and leave it as it is.
"""

from __future__ import annotations

import keras

from core import StudioError

FILTERS: tuple[int, ...] = (32, 64, 128, 256)  # one block per entry; every block but the last halves the grid
MIN_INPUT_SIZE = 32  # three 2x2 pools leave a 4x4 map


def build_baseline_cnn(include_top: bool = False, weights: str | None = None,
                       input_shape: tuple[int, int, int] = (128, 128, 3), pooling: str | None = None,
                       filters: tuple[int, ...] = FILTERS, name: str = "baseline_cnn") -> keras.Model:
    """The convolutional base (keras.applications' signature, as create_backbone calls it), randomly initialised."""
    if weights is not None:
        raise StudioError("The baseline CNN has no pretrained weights: it is trained from random initialisation "
                          "(weights=None), which is the point of it.")
    if include_top or pooling is not None:
        raise ValueError("build_baseline_cnn builds the base only (include_top=False, pooling=None); "
                         "core.network.model.build_classifier adds the head.")
    size = min(int(input_shape[0]), int(input_shape[1]))
    if size < MIN_INPUT_SIZE:
        raise StudioError(f"Image size {size} is too small for the baseline CNN; it needs at least {MIN_INPUT_SIZE} "
                          "pixels.")
    inputs = keras.Input(tuple(input_shape), name="pixels_0_255")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)  # pixels to 0..1 inside the model
    for index, width in enumerate(filters, start=1):
        # No bias: the BatchNorm right after it has its own offset.
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                                name=f"stage{index}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"stage{index}_bn")(x)
        x = keras.layers.ReLU(name=f"stage{index}_relu")(x)
        if index < len(filters):
            x = keras.layers.MaxPooling2D(2, name=f"stage{index}_pool")(x)
    return keras.Model(inputs, x, name=name)
