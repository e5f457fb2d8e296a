"""Reading images safely: one decoder for inspection, training, evaluation and prediction."""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# What README promises, checked by content (MPO is the multi-picture JPEG some cameras write; its first frame is
# a plain JPEG).
CONTENT_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "WEBP")
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
    image = _open_checked(data, source)
    if target_size:
        _draft(image, (target_size, target_size), source)
    return _load_rgb(image, source)


def _open_checked(data: bytes, source: str) -> Image.Image:
    """Open (header only, nothing decoded yet) and refuse empty, unreadable, oversized or unsupported images."""
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
    if image.format not in CONTENT_FORMATS:  # by content, not by name: a GIF or TIFF named .jpg is refused too
        raise ImageError(f"{source}: the file holds a{'n' if str(image.format)[:1] in 'AEIOU' else ''} "
                         f"{image.format} image, which is not supported; use JPEG, PNG, BMP or WebP.")
    return image


def _draft(image: Image.Image, box: tuple[int, int], source: str) -> None:
    """JPEG only: decode at the smallest DCT scale (1/2, 1/4, 1/8) still at least `box`; other formats unchanged."""
    if image.format not in ("JPEG", "MPO"):
        return
    try:
        image.draft("RGB", box)
    except Exception as err:
        raise ImageError(f"{source}: the image is damaged or truncated ({_short(err)}).") from None


def _load_rgb(image: Image.Image, source: str) -> np.ndarray:
    """Decode an opened image (at its draft size, if any) into an upright RGB uint8 array, first frame only."""
    try:
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


# ------------------------------------------------------------------ budgeted decoding (classifying uploads)
# A photo to classify is needed twice, both small: at the model's input size and as a preview. Neither needs the
# full-size pixels, which for a 7000x7000 phone photo are 147 MB; a hosted demo must not hold those per visitor.
THUMBNAIL_SIDE = 384  # longest side of a preview shown next to its prediction


class OverBudgetError(ImageError):
    """A readable image that decoding would take past the caller's pixel budget."""


@dataclass(frozen=True)
class ModelPhoto:
    """One photo decoded only as far as classifying and showing it need; the full-size pixels are never kept."""

    model_input: np.ndarray  # (size, size, 3) uint8, exactly what load_for_model gives training for the same file
    thumbnail: np.ndarray | None  # RGB uint8, longest side at most the asked side (never enlarged); None if not asked
    decoded_pixels: int  # pixels actually decoded (after JPEG reduction): what a batch budget counts


def decode_for_model_and_thumbnail(data: bytes, source: str, size: int, thumb: int | None = THUMBNAIL_SIDE,
                                   max_decoded_pixels: int | None = None) -> ModelPhoto:
    """Decode an upload straight to the model's input and a preview, within `max_decoded_pixels` if given.

    A JPEG is decoded at a reduced DCT scale (Pillow's draft mode) just large enough for `size`, so a 7000x7000
    photo costs 875x875 pixels, not 49 million; other formats are decoded whole (they have no reduced decoding), then
    resized at once and the full-size array dropped. The budget is checked from the header, before any decoding.
    Raises ImageError (OverBudgetError for the budget) naming `source`.
    """
    image = _open_checked(data, source)
    full_size = image.size
    _draft(image, (size, size), source)  # the same request as load_for_model: same pixels as in training
    pixels = image.size[0] * image.size[1]
    # A small model size can leave the reduced JPEG below the preview size: then decode the preview on its own,
    # also reduced, rather than enlarge a blurred one.
    preview_source = None
    if thumb and max(image.size) < thumb and image.size != full_size:
        preview_source = _open_checked(data, source)
        _draft(preview_source, _thumbnail_box(full_size, thumb), source)
        pixels += preview_source.size[0] * preview_source.size[1]
    if max_decoded_pixels is not None and pixels > max_decoded_pixels:
        raise OverBudgetError(f"{source}: decoding it needs {pixels / 1e6:.3g} megapixels and only "
                              f"{max(0, max_decoded_pixels) / 1e6:.3g} are left in this batch's budget.")
    decoded = _load_rgb(image, source)
    model_input = resize_for_model(decoded, size)
    thumbnail = None
    if thumb:
        thumbnail = thumbnail_of(decoded if preview_source is None else _load_rgb(preview_source, source), thumb)
    del decoded  # the (possibly full-size) array goes now, not when the caller's batch is done
    return ModelPhoto(model_input, thumbnail, pixels)


def thumbnail_of(image: np.ndarray, side: int) -> np.ndarray:
    """A copy with the longest side at most `side`, aspect kept (never enlarged)."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return image.copy()
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, new_size, interpolation=cv2.INTER_AREA)


def _thumbnail_box(full_size: tuple[int, int], side: int) -> tuple[int, int]:
    """The draft request that keeps the longest side at least `side` (draft asks both sides to reach the box)."""
    width, height = full_size
    scale = side / max(width, height)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _short(err: Exception) -> str:
    """A library's error in a few words for a visitor: first line only, without object reprs such as
    `<_io.BytesIO object at 0x7f…>` (Pillow's "cannot identify image file" names its buffer that way)."""
    text = str(err).strip() or type(err).__name__
    return _OBJECT_REPR.sub("the file", text.splitlines()[0])[:160]
