"""The classifier around a backbone: uint8 pixels in, class probabilities out."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import keras
import numpy as np

HEAD_LAYERS = ("head_pool", "head_bn", "head_dropout", "predictions")


# How many of the last stages are pooled with the top features: those that share its grid (stages 6 and 7 of an
# EfficientNet) and those on a grid exactly twice as fine (stages 4 and 5), averaged 2x2 onto the top's grid first.
# Chosen with ablations over re-splits of flowers-dev's train/ and two generated sets (docs/benchmarks.md, issue 28):
# adding stages 4 and 5 to stages 6, 7 and the top gained +0.8 points on flowers-dev (8 of 10 re-splits won, none
# lost), more with per-stage scaling of the head where the fit chooses it (core.network.headfit.RECIPE_SCALING).
MID_LEVEL_STAGES = 4


def with_mid_level_features(base: keras.Model, stages: int = MID_LEVEL_STAGES) -> keras.Model:
    """The base's final feature map concatenated with the outputs of its last `stages` stages, on the top's grid.

    Measured (docs/benchmarks.md): pooled mid-level features transfer better than the top features alone
    (textures, colours and simple outlines matter more than ImageNet object parts), and together they beat
    either. A stage on the top's grid joins as it is; one on a grid exactly twice as fine is averaged over 2x2
    cells first (its global average is unchanged, so the pooled features are the stage's own). Everything then sits
    on one grid, so GAP -> BatchNorm -> Dense stays linear per position and the class-activation map stays exact.
    Going down, the first stage on any other grid ends the search (e.g. Lite1 at 240 px: 15 is not twice 8).
    Backbones with no such stage (EfficientNetV2) are returned unchanged.
    """
    top = base.output
    grid = tuple(top.shape[1:3])
    numbers = sorted({_stage(layer.name) for layer in base.layers if _stage(layer.name)})
    joined = []
    for stage in reversed(numbers[-stages:] if stages > 0 else []):
        output = [layer for layer in base.layers if _stage(layer.name) == stage][-1].output
        if tuple(output.shape[1:3]) == grid:
            joined.insert(0, output)
        elif None not in grid and tuple(output.shape[1:3]) == (2 * grid[0], 2 * grid[1]):
            joined.insert(0, keras.layers.AveragePooling2D(2, name=f"stage{stage}_on_top_grid")(output))
        else:
            break
    if not joined:
        return base
    merged = keras.layers.Concatenate(name="multi_level_features")([*joined, top])
    return keras.Model(base.input, merged, name=base.name)


def feature_blocks(classifier: keras.Model) -> tuple[int, ...]:
    """Widths of the pooled feature blocks the head sees, in order (one per joined stage, then the top), read from
    the backbone's "multi_level_features" layer; one block when the features are the top's alone."""
    base = base_of(classifier)
    try:
        merged = base.get_layer("multi_level_features")
    except ValueError:
        return (int(base.output.shape[-1]),)
    return tuple(int(tensor.shape[-1]) for tensor in merged.input)


def build_classifier(base: keras.Model, num_classes: int, dropout: float = 0.2,
                     synchronized_batchnorm: bool = False) -> keras.Model:
    """GAP -> BatchNorm -> Dropout -> Dense(softmax) on top of `base` (the keras.io fine-tuning head).

    Input is uint8 so batches cross to the device at a quarter of float32's size; Rescaling(1.0) casts.
    `synchronized_batchnorm` (TensorFlow with several replicas only): the head's BatchNorm normalises a training
    batch with the global batch's statistics, not each replica's share of it.
    """
    size = base.input_shape[1]
    inputs = keras.Input((size, size, 3), dtype="uint8", name="pixels")
    x = keras.layers.Rescaling(1.0, name="to_float")(inputs)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = keras.layers.BatchNormalization(name="head_bn", synchronized=synchronized_batchnorm)(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 output even under mixed precision, so softmax and the loss stay numerically stable.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"{base.name}_classifier")


@contextmanager
def portable_batchnorm(model: keras.Model) -> Iterator[None]:
    """While saving: BatchNorm layers say synchronized=False. The flag only changes training under a TensorFlow
    distribution strategy, and Keras refuses to build such a layer on any other backend, so a model saved with it
    would not load under JAX. The layers keep the flag in memory (their training steps are traced already)."""
    synchronized = [layer for layer in _all_layers(model)
                    if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized]
    for layer in synchronized:
        layer.synchronized = False
    try:
        yield
    finally:
        for layer in synchronized:
            layer.synchronized = True


def _all_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in getattr(model, "layers", []):
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def base_of(classifier: keras.Model) -> keras.Model:
    """The nested backbone inside a classifier built by build_classifier."""
    for layer in classifier.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError(f"{classifier.name} holds no backbone model")


def write_linear_head(classifier: keras.Model, mean: np.ndarray, variance: np.ndarray, kernel: np.ndarray,
                      bias: np.ndarray) -> None:
    """Put a linear model fitted on standardised pooled features into the classifier's head.

    BatchNorm at inference computes gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta, so
    gamma 1, beta 0 and the features' moments make it exactly the standardiser the fit used (same epsilon).
    """
    width = int(mean.shape[0])
    classifier.get_layer("head_bn").set_weights([np.ones(width), np.zeros(width), mean, variance])
    classifier.get_layer("predictions").set_weights([kernel, bias])


def feature_extractor(classifier: keras.Model) -> keras.Model:
    """Pixels -> pooled backbone features (what the head sees before its BatchNorm)."""
    return keras.Model(classifier.input, classifier.get_layer("head_pool").output, name="features")


def set_finetune_trainable(classifier: keras.Model, unfreeze_stages: int) -> int:
    """Unfreeze the top `unfreeze_stages` stages of the base plus its top conv; BatchNorm stays frozen.

    Frozen BatchNorm keeps the ImageNet statistics (small fine-tuning batches would wreck them); a frozen
    BatchNorm layer in Keras 3 also runs in inference mode. Returns the number of trainable layers.
    """
    base = base_of(classifier)
    stages = sorted({_stage(layer.name) for layer in base.layers if _stage(layer.name)})
    top_stages = set(stages[-unfreeze_stages:]) if unfreeze_stages > 0 else set()
    base.trainable = True
    count = 0
    for layer in base.layers:
        trainable = (_stage(layer.name) in top_stages or layer.name.startswith("top_")) \
            and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable and unfreeze_stages > 0
        count += int(layer.trainable and bool(layer.weights))
    return count


def _stage(layer_name: str) -> int | None:
    """'block6a_expand_conv' -> 6; layers outside the numbered blocks -> None."""
    if not layer_name.startswith("block"):
        return None
    digits = ""
    for char in layer_name[5:]:
        if not char.isdigit():
            break
        digits += char
    return int(digits) if digits else None


def predict_in_batches(model: keras.Model, images, batch_size: int, tta: bool = False,
                       on_batch: Callable[[int], None] | None = None, offset: int = 0,
                       parallel=None) -> np.ndarray:
    """The model's outputs for uint8 images (an array or an on-disk ImageCache), one batch in memory at a time.

    Every call has the same shape (the last batch is padded), so the predict function is traced once; with `tta`
    each output is averaged with the mirrored image's. `on_batch(offset + images done)` follows each batch (it
    may raise to stop). With a multi-process `parallel` (core.network.distribute) every process reads and computes only
    its slice of each batch of `batch_size`, and all processes get every output.
    """
    from core.data.loader import take_rows

    sharded = parallel is not None and parallel.multi_process
    if sharded:
        from core.network.distribute import sharded_forward

        forward = sharded_forward(model, parallel)
    else:
        def forward(batch: np.ndarray) -> np.ndarray:
            return np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(batch)), dtype=np.float32)

    total = len(images)
    out: np.ndarray | None = None  # filled in place: one (N, outputs) array, no list of batches to join
    for start in range(0, total, batch_size):
        rows = np.arange(start, min(start + batch_size, total))
        if sharded:  # pad with a real row (its output is dropped), then read only this process's slice
            batch = take_rows(images, parallel.local_slice(np.pad(rows, (0, batch_size - len(rows)), mode="edge")))
        else:
            batch = take_rows(images, rows)
            if len(batch) < batch_size:
                batch = np.concatenate([batch, np.zeros((batch_size - len(batch), *batch.shape[1:]), batch.dtype)])
        values = forward(batch)
        if tta:
            values = (values + forward(np.ascontiguousarray(batch[:, :, ::-1]))) / 2
        if out is None:
            out = np.empty((total, *values.shape[1:]), dtype=np.float32)
        out[start:start + len(rows)] = values[:len(rows)]
        if on_batch is not None:
            on_batch(offset + int(rows[-1]) + 1)
    if out is None:
        return np.zeros((0, *model.output_shape[1:]), dtype=np.float32)
    return out


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int = 64,
                          tta: bool = False) -> np.ndarray:
    """Class probabilities for uint8 images; with `tta`, averaged with the mirrored images."""
    if tta:
        images = np.concatenate([images, images[:, :, ::-1]])
    if len(images) <= batch_size:
        # A direct call skips predict()'s per-call dataset set-up, which dominates for one or two photos.
        probs = keras.ops.convert_to_numpy(model(images, training=False))
    else:
        probs = model.predict(images, batch_size=batch_size, verbose=0)
    probs = np.asarray(probs, dtype=np.float64)
    if tta:
        half = len(probs) // 2
        probs = (probs[:half] + probs[half:]) / 2.0
    return probs


def activation_elements(backbone: str, image_size: int = 224) -> int:
    """Elements of every layer's output in the backbone's base for one image (random weights: only the shapes
    count), which is what fine-tuning keeps for the backward pass; core.base.backbones.ACTIVATIONS_VS_B0 holds
    them against B0's."""
    import math

    from core.base.backbones import create_backbone

    base = create_backbone(backbone, image_size, weights=None)
    return sum(math.prod(d for d in layer.output.shape[1:] if d) for layer in base.layers)
