"""Class-activation heatmaps: where in the photo the classifier found evidence for a class.

The head is GlobalAveragePooling -> BatchNorm -> Dropout -> Dense. At inference BatchNorm is a per-channel affine
map and Dropout is the identity, so the whole head is linear up to the softmax and can be moved in front of the
pooling: apply BatchNorm's affine map and the Dense weights of one class to every spatial position of the
backbone's feature map. That map's mean is exactly the class logit (the original CAM of Zhou et al. 2016,
made exact for this head), with no gradients and on any Keras backend.
"""

from __future__ import annotations

import cv2
import numpy as np


def head_weights(classifier) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, offset) of BatchNorm folded into the Dense layer: logits = f @ scale + offset."""
    bn, dense = classifier.get_layer("head_bn"), classifier.get_layer("predictions")
    mean, variance = _array(bn.moving_mean), _array(bn.moving_variance)
    gamma = _array(bn.gamma) if bn.gamma is not None else np.ones_like(mean)
    beta = _array(bn.beta) if bn.beta is not None else np.zeros_like(mean)
    inv = gamma / np.sqrt(variance + bn.epsilon)
    kernel = _array(dense.kernel)  # (channels, classes)
    bias = _array(dense.bias) if dense.bias is not None else np.zeros(kernel.shape[1], np.float32)
    scale = inv[:, None] * kernel
    offset = (beta - mean * inv) @ kernel + bias
    return scale.astype(np.float32), offset.astype(np.float32)


def feature_map(classifier, image: np.ndarray) -> np.ndarray:
    """The backbone's (H', W', C) feature map for one uint8 image already at the model's input size."""
    import keras

    from core.network.model import base_of

    x = keras.ops.cast(keras.ops.convert_to_tensor(image[None]), "float32")  # what "to_float" does
    features = base_of(classifier)(x, training=False)
    return _array(features)[0]


def class_activation_maps(classifier, image: np.ndarray) -> np.ndarray:
    """(classes, H', W') logit maps; the mean of map c equals the classifier's logit for class c."""
    scale, offset = head_weights(classifier)
    features = feature_map(classifier, image)
    maps = np.tensordot(features, scale, axes=([2], [0])) + offset  # (H', W', classes)
    return np.moveaxis(maps, -1, 0)


def normalise_map(cam: np.ndarray) -> np.ndarray:
    """Scale a map to 0..1 for display (a flat map becomes all zeros)."""
    low, high = float(cam.min()), float(cam.max())
    return np.zeros_like(cam, dtype=np.float32) if high - low < 1e-12 else ((cam - low) / (high - low)).astype(np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a 0..1 heatmap (any size) over an RGB uint8 image, red where the evidence is strongest."""
    height, width = image.shape[:2]
    heat = cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    heat = np.clip(heat, 0.0, 1.0)
    coloured = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 1.0 - alpha, coloured, alpha, 0.0)


def heatmap_for(classifier, image: np.ndarray, class_index: int, size: int) -> np.ndarray:
    """The photo (any size) with the heatmap of `class_index` over it, computed at the model's `size`."""
    from core.data.images import resize_for_model

    maps = class_activation_maps(classifier, resize_for_model(image, size))
    return overlay(image, normalise_map(maps[class_index]))


def _array(value) -> np.ndarray:
    """A backend tensor or variable as a float32 numpy array."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float32)
