"""One decoder for every path: odd but valid images are read correctly, bad ones are named and refused."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.images import ImageError, decode_image, load_for_model, read_image


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_exif_rotated_phone_photo_is_upright():
    # A landscape sensor image stored 40x20 with EXIF orientation 6 ("rotate 90 CW to view") is 20x40 upright.
    stored = Image.new("RGB", (40, 20), (200, 30, 30))
    stored.paste((30, 30, 200), (0, 0, 10, 20))  # blue strip on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = decode_image(_encode(stored, "JPEG", exif=exif, quality=95), "phone.jpg")
    assert upright.shape == (40, 20, 3)
    top_row = upright[2, :, :].astype(int)
    assert top_row[:, 2].mean() > 150 and top_row[:, 0].mean() < 100  # the blue strip is now on top


def test_cmyk_grayscale_rgba_and_palette_become_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    red = decode_image(_encode(cmyk, "JPEG", quality=95), "cmyk.jpg")
    assert red.shape == (16, 16, 3) and red[..., 0].mean() > 200 and red[..., 1].mean() < 60
    gray = decode_image(_encode(Image.new("L", (8, 8), 77), "PNG"), "gray.png")
    assert gray.shape == (8, 8, 3) and np.all(gray == 77)
    transparent = decode_image(_encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"), "clear.png")
    assert np.all(transparent == 255)  # transparent pixels composite onto white, not black
    palette = decode_image(_encode(Image.new("P", (8, 8), 3), "PNG"), "palette.png")
    assert palette.shape == (8, 8, 3)


def test_sixteen_bit_png_uses_its_full_range():
    values = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    deep = decode_image(_encode(Image.fromarray(values), "PNG"), "deep.png")
    assert deep.dtype == np.uint8 and deep.min() == 0 and deep.max() == 255


def test_animated_webp_uses_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 250, 0))]
    data = _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, loop=0)
    first = decode_image(data, "anim.webp")
    assert first[..., 0].mean() > 200 and first[..., 1].mean() < 60


@pytest.mark.parametrize("fmt, article", [("GIF", "a GIF"), ("TIFF", "a TIFF")])
def test_formats_are_checked_by_content_not_by_name(fmt, article):
    """README promises JPEG, PNG, BMP and WebP: a GIF or TIFF renamed .jpg is refused, saying what it holds."""
    data = _encode(Image.new("RGB", (16, 16), (10, 200, 30)), fmt)
    with pytest.raises(ImageError, match=rf"photo.jpg: the file holds {article} image, which is not supported; "
                                         r"use JPEG, PNG, BMP or WebP"):
        decode_image(data, "photo.jpg")


def test_an_unreadable_file_is_named_without_a_python_object_repr():
    with pytest.raises(ImageError) as raised:
        decode_image(b"this is not an image at all", "notes.jpg")
    assert str(raised.value).startswith("notes.jpg: not a readable image") and "object at 0x" not in str(raised.value)


def test_decompression_bomb_header_is_refused_without_decoding():
    # PNG headers claiming huge sizes with almost no data: refused from the header, not by running out of memory.
    for side in (8000, 20000):  # 64 Mpx: our limit; 400 Mpx: Pillow's own guard, same message
        header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
        png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 100)) \
            + _chunk(b"IEND", b"")
        with pytest.raises(ImageError, match=r"bomb.png: .*over the 50,000,000 pixel limit"):
            decode_image(png, "bomb.png")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@pytest.mark.parametrize("data, message", [
    (b"", "the file is empty"),
    (b"hello, I am text", "not a readable image"),
    (b"%PDF-1.4 not an image", "not a readable image"),
])
def test_non_images_are_named_and_refused(data: bytes, message: str):
    with pytest.raises(ImageError, match=f"thing.jpg: {message}"):
        decode_image(data, "thing.jpg")


def test_truncated_jpeg_and_tiny_image(tmp_path: Path):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = _encode(photo, "JPEG", quality=90)
    with pytest.raises(ImageError, match="damaged or truncated"):
        decode_image(data[: len(data) // 2], "half.jpg")
    with pytest.raises(ImageError, match="too small"):
        decode_image(_encode(Image.new("RGB", (1, 1)), "PNG"), "dot.png")
    missing = tmp_path / "gone.jpg"
    with pytest.raises(ImageError, match="gone.jpg: cannot be read"):
        read_image(missing)


def test_jpeg_draft_decoding_keeps_enough_pixels(tmp_path: Path):
    big = Image.fromarray(np.random.default_rng(1).integers(0, 255, (800, 1200, 3), dtype=np.uint8))
    path = tmp_path / "big.jpg"
    path.write_bytes(_encode(big, "JPEG"))
    reduced = read_image(path, target_size=96)
    assert min(reduced.shape[:2]) >= 96  # DCT scaling never goes below the size we resize to
    assert load_for_model(path, 96).shape == (96, 96, 3)


def _whole_image_reference(data: bytes) -> np.ndarray:
    """The conversion as it was before issue 27, the whole image at once: what the strip-wise one must equal."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        scaled = np.zeros_like(values) if high <= low else (values - low) * (255.0 / (high - low))
        return np.stack([scaled.astype(np.uint8)] * 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(image.convert("RGB"))


def _odd_images() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(7)
    rgba = Image.fromarray(rng.integers(0, 256, (45, 31, 4), dtype=np.uint8))
    cases = [(mode, _encode(rgba.convert(mode), "PNG")) for mode in ("RGB", "RGBA", "L", "LA", "P", "1")]
    cases.append(("PA", _encode(rgba.convert("P"), "PNG", transparency=3)))
    cases.append(("I;16", _encode(Image.fromarray(rng.integers(300, 60000, (45, 31), dtype=np.uint16)), "PNG")))
    cases.append(("I", _encode(Image.fromarray(rng.integers(-5, 1 << 30, (45, 31), dtype=np.int32)), "TIFF")))
    cases.append(("F", _encode(Image.fromarray(rng.normal(0, 9, (45, 31)).astype(np.float32)), "TIFF")))
    cases.append(("CMYK", _encode(rgba.convert("CMYK"), "JPEG", quality=90)))
    cases.append(("webp-alpha", _encode(rgba, "WEBP", lossless=True)))
    cases.append(("bmp-32", _encode(rgba, "BMP")))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases.append((f"exif-{orientation}", _encode(rgba.convert("RGB"), "PNG", exif=exif)))
    return cases


@pytest.mark.parametrize("name, data", _odd_images(), ids=[case[0] for case in _odd_images()])
def test_strip_wise_conversion_equals_the_whole_image_conversion(name: str, data: bytes, monkeypatch):
    """Issue 27 converts a strip of rows at a time (no full-size intermediate copies) and turns EXIF orientation on
    the array: every mode and orientation must still give the very pixels training always got."""
    from core.data import images

    monkeypatch.setattr(images, "STRIP_ROWS", 7)  # several strips, the last one short
    monkeypatch.setattr(images, "CONTENT_FORMATS", images.CONTENT_FORMATS + ("TIFF",))  # I and F modes come as TIFF
    np.testing.assert_array_equal(images.decode_image(data, name), _whole_image_reference(data))
