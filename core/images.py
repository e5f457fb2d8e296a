"""Reading images safely: one decoder for inspection, training, evaluation and prediction."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Pillow's own decompression-bomb guard fires at ~179 Mpx; we refuse earlier, with our own message.
MAX_IMAGE_PIXELS = 50_000_000


class ImageError(ValueError):
    """An image file that cannot be used, with the reason in words."""


def is_image_name(name: str) -> bool:
    """True for the extensions we train on, in any letter case."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(data: bytes, source: str = "image", target_size: int | None = None) -> np.ndarray:
    """Decode bytes into an RGB uint8 array, upright (EXIF), first frame only.

    `target_size` lets JPEG decoding scale down by DCT (much faster) while keeping at least that size.
    """
    if not data:
        raise ImageError(f"{source}: the file is empty.")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # Pillow's own guard, for headers far beyond ours
        raise ImageError(f"{source}: the image is over the {MAX_IMAGE_PIXELS:,} pixel limit; resize it first.") from None
    except Exception as err:  # Pillow raises several types for "not an image"
        raise ImageError(f"{source}: not a readable image ({_short(err)}).") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"{source}: {width}x{height} pixels is over the {MAX_IMAGE_PIXELS:,} pixel limit; resize it first."
        )
    if image.format not in ("JPEG", "PNG", "BMP", "WEBP", "GIF", "MPO", "TIFF"):
        raise ImageError(f"{source}: {image.format} images are not supported; use JPEG, PNG, BMP or WebP.")
    try:
        if target_size and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (target_size, target_size))
        image.seek(0)  # animated GIF/WebP: the first frame
        image.load()  # forces the full decode, so truncated files fail here and not later
        image = ImageOps.exif_transpose(image)
        array = _to_rgb_uint8(image)
    except ImageError:
        raise
    except Exception as err:
        raise ImageError(f"{source}: the image is damaged or truncated ({_short(err)}).") from None
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise ImageError(f"{source}: {array.shape[1]}x{array.shape[0]} pixels is too small to learn from.")
    return array


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Any Pillow mode (L, LA, P, RGBA, CMYK, I;16, I, F) to RGB uint8, compositing alpha onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: scale the actual range into 0..255 instead of clipping to white.
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        scaled = np.zeros_like(values) if high <= low else (values - low) * (255.0 / (high - low))
        gray = scaled.astype(np.uint8)
        return np.ascontiguousarray(np.stack([gray] * 3, axis=-1))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def read_image(path: Path | str, target_size: int | None = None) -> np.ndarray:
    """Read a file into an RGB uint8 array; raises ImageError naming the file and the problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageError(f"{path}: cannot be read ({err.strerror or err}).") from None
    return decode_image(data, str(path), target_size)


def resize_for_model(image: np.ndarray, size: int) -> np.ndarray:
    """Squash to size x size (whole picture kept, like Keras' image_dataset_from_directory)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    shrinking = image.shape[0] > size or image.shape[1] > size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def load_for_model(path: Path | str, size: int) -> np.ndarray:
    """Read and resize one file exactly as training does."""
    return resize_for_model(read_image(path, target_size=size), size)


def _short(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:160]
