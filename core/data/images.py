"""Reading images safely: one decoder for inspection, training, evaluation and prediction."""

from __future__ import annotations

import io
import math
import ctypes
import functools
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def decode_image(data: bytes, source: str = "image", target_size: int | None = None,
                 served: bool = False) -> np.ndarray:
    """Decode bytes into an RGB uint8 array, upright (EXIF), first frame only.

    `target_size` lets JPEG decoding scale down by DCT (much faster) while keeping at least that size. Large decodes
    in one process take turns (DECODING_SLOTS), so the server's scan of a folder of large PNGs, or a trainer's
    threads, never hold many full-size photos at once. `served`: a photo a visitor hands the server one at a time
    (the camera) is held to the full-size limits of Classify's uploads (FULL_DECODE_LIMITS), checked from its header.
    """
    image = _open_checked(data, source)
    if target_size:
        _draft(image, (target_size, target_size), source)
    if served:
        _return_large_buffers_to_the_system()
        _check_full_decode_limit(image, image.size, source)
    with DECODING_SLOTS.reserve(image.size[0] * image.size[1]):
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
    """Decode an opened image (at its draft size, if any) into an upright RGB uint8 array, first frame only.

    Consumes `image`: its decoded pixels are released as soon as the array holds them, so that a large photo never
    has more than the decoded image and the array alive at once (see _to_rgb_uint8).
    """
    try:
        image.seek(0)  # animated GIF/WebP: the first frame
        image.load()  # forces the full decode, so truncated files fail here and not later
        _drop_reader_buffers(image)
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        array = _to_rgb_uint8(image)
    except ImageError:
        raise
    except Exception as err:
        raise ImageError(f"{source}: the image is damaged or truncated ({_short(err)}).") from None
    finally:
        _release(image)
    array = _upright(array, orientation)
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise ImageError(f"{source}: {array.shape[1]}x{array.shape[0]} pixels is too small to learn from.")
    return array


EXIF_ORIENTATION = 0x0112
STRIP_ROWS = 64  # rows converted at a time: a strip of a 7000 px wide photo is 1.8 MB as RGBA, not the whole photo


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Any Pillow mode (L, LA, P, RGBA, CMYK, I;16, I, F) to RGB uint8, compositing alpha onto white.

    Converted a strip of rows at a time straight into the result: converting the whole image at once made full-size
    copies on the way (Pillow's 4-byte RGB, an RGBA background and composite, float32 values, NumPy's copy of
    tobytes()), 17-29 bytes per pixel in all where this needs the decoded image plus 3 bytes per pixel. Every step
    is per pixel, so the result is the same as converting the whole image at once.
    """
    width, height = image.size
    convert_strip = _strip_converter(image)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, STRIP_ROWS):
        bottom = min(height, top + STRIP_ROWS)
        rgb[top:bottom] = convert_strip(image.crop((0, top, width, bottom)))
    return rgb


def _strip_converter(image: Image.Image) -> Callable[[Image.Image], np.ndarray]:
    """How to turn one strip of `image` into RGB uint8 rows, by mode (what needs the whole image is read here)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: scale the actual range into 0..255 instead of clipping to white. The range is the
        # whole image's, taken as float32 like the values themselves.
        low, high = (float(np.float32(value)) for value in image.getextrema())

        def scaled_gray(strip: Image.Image) -> np.ndarray:
            values = np.asarray(strip, dtype=np.float32)
            scaled = np.zeros_like(values) if high <= low else (values - low) * (255.0 / (high - low))
            return scaled.astype(np.uint8)[..., None]  # broadcast into the three channels

        return scaled_gray
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        def onto_white(strip: Image.Image) -> np.ndarray:
            rgba = strip.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))

        return onto_white
    return lambda strip: np.asarray(strip.convert("RGB"))


def _upright(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Turn the array as EXIF orientation 1-8 says (what ImageOps.exif_transpose does to the image), losslessly."""
    views = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
             7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}
    turn = views.get(orientation)
    return rgb if turn is None else np.ascontiguousarray(turn(rgb))


def _drop_reader_buffers(image: Image.Image) -> None:
    """Once decoded, let go of what the reader still holds besides the pixels.

    Pillow's WebP reader keeps libwebp's decoder (with its own full-size RGBA canvas) and the frame's bytes (a
    second one) on the image until it is collected: 8 bytes per pixel more while the photo is converted.
    """
    if getattr(image, "_decoder", None) is not None:
        image._decoder = None
    image.fp = None


def _release(image: Image.Image) -> None:
    """Free the decoded pixels now rather than when the last reference goes (a caller may still hold the image)."""
    _drop_reader_buffers(image)
    image.close()


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


# A photo that must be decoded at full size (PNG, BMP and WebP have no reduced decoding; a JPEG too narrow for its
# DCT reduction) is refused above these many pixels, from the header, so that one decode raises the server's peak
# by at most ~200 MB. Measured (tests/bench_classify_memory.py --formats): Pillow holds RGB as 4 bytes per pixel
# plus our 3-byte array, 7 bytes per pixel, 167-171 MiB at 24 MP for PNG and BMP; Pillow's WebP reader keeps
# libwebp's two RGBA canvases and the frame's bytes besides the image, 16 bytes per pixel, 153 MiB at 10 MP.
FULL_DECODE_LIMITS = {"PNG": 24_000_000, "BMP": 24_000_000, "WEBP": 10_000_000, "JPEG": 24_000_000}
FORMAT_NAMES = {"MPO": "JPEG", "WEBP": "WebP"}  # how a visitor knows the format, where Pillow's name differs


class OverBudgetError(ImageError):
    """A readable image that decoding would take past the caller's pixel budget."""


class TooLargeToDecodeError(ImageError):
    """A readable image whose format cannot be decoded at reduced size, over the full-size limit for it."""


class DecodingSlots:
    """Pixels being decoded at once in this process, at most `capacity`: Streamlit serves every visitor from one
    process, so eight visitors with large PNGs at once would otherwise each hold a full-size decode."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._free = capacity
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        """Wait until `pixels` (at most the capacity, so one photo never waits forever) are free, then hold them."""
        pixels = min(pixels, self.capacity)
        with self._changed:
            self._changed.wait_for(lambda: self._free >= pixels)
            self._free -= pixels
        try:
            yield
        finally:
            with self._changed:
                self._free += pixels
                self._changed.notify_all()


# One full-size decode at the largest limit, or several smaller ones (a batch of reduced JPEGs), at a time.
DECODING_SLOTS = DecodingSlots(max(FULL_DECODE_LIMITS.values()))
MMAP_THRESHOLD_BYTES = 4 << 20


@functools.cache
def _return_large_buffers_to_the_system() -> None:
    """Have glibc map every buffer of 4 MB or more on its own, so that freeing it gives the memory back at once.

    Otherwise, once such a buffer is freed, glibc raises its threshold (up to 32 MB) and serves Pillow's 16 MB
    blocks from the calling thread's own heap, which keeps them after the decode; each visitor's session is a
    thread with its own heap, so decodes taken one at a time still stacked up (measured: four 24 MP photos in four
    threads, +376 MiB; with this, +177 MiB, the same as one). Nothing to do where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt, and their own behaviour
        return
    m_mmap_threshold = -3  # glibc's malloc.h; setting it also turns the dynamic threshold off
    mallopt(ctypes.c_int(m_mmap_threshold), ctypes.c_int(MMAP_THRESHOLD_BYTES))


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
    photo costs 875x875 pixels, not 49 million; other formats have no reduced decoding: they are decoded whole up to
    FULL_DECODE_LIMITS (refused above it), one at a time in the process (DECODING_SLOTS), then resized at once and the
    full-size array dropped. Both limits are checked from the header, before any decoding.
    Raises ImageError (OverBudgetError for the budget, TooLargeToDecodeError for the size) naming `source`.
    """
    _return_large_buffers_to_the_system()
    image = _open_checked(data, source)
    full_size = image.size
    _draft(image, (size, size), source)  # the same request as load_for_model: same pixels as in training
    _check_full_decode_limit(image, full_size, source)
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
    with DECODING_SLOTS.reserve(image.size[0] * image.size[1]):
        decoded = _load_rgb(image, source)
        model_input = resize_for_model(decoded, size)
        thumbnail = thumbnail_of(decoded, thumb) if thumb and preview_source is None else None
        del decoded  # the (possibly full-size) array goes before the next decode may start
    if thumb and preview_source is not None:
        with DECODING_SLOTS.reserve(preview_source.size[0] * preview_source.size[1]):
            thumbnail = thumbnail_of(_load_rgb(preview_source, source), thumb)
    return ModelPhoto(model_input, thumbnail, pixels)


def _check_full_decode_limit(image: Image.Image, full_size: tuple[int, int], source: str) -> None:
    """Refuse, from the header, a photo that would be decoded at more pixels than its format's full-size limit."""
    width, height = image.size
    fmt = "JPEG" if image.format == "MPO" else str(image.format)
    limit = FULL_DECODE_LIMITS.get(fmt, min(FULL_DECODE_LIMITS.values()))
    if width * height <= limit:
        return
    name = FORMAT_NAMES.get(fmt, fmt)
    shown = f"{full_size[0]}x{full_size[1]} pixels ({full_size[0] * full_size[1] / 1e6:.3g} MP)"
    if image.size != full_size or fmt == "JPEG":  # reduced, but a side too short for more reduction
        raise TooLargeToDecodeError(
            f"{source}: {shown} would still be {width}x{height} pixels ({width * height / 1e6:.3g} MP) at the "
            f"smallest size JPEG decoding allows for it, over the {limit / 1e6:g} MP limit for decoding a photo "
            "here; resize it first.")
    raise TooLargeToDecodeError(
        f"{source}: {shown} is over the {limit / 1e6:g} MP limit for {name} photos, which cannot be decoded at "
        "reduced size; resize it (or save it as JPEG) first.")


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
