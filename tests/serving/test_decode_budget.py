"""A memory bound for every accepted format on Classify (issue 27): a photo each format can hold is decoded at
reduced size (JPEG) or, up to its full-size limit, leanly and one at a time; above the limit it is refused from the
header, before any decoding, with a message naming the photo and the limit.

Peaks are each fresh interpreter's own VmHWM (Pillow's allocations are invisible to tracemalloc), measured after the
file's bytes are read, i.e. what a decode adds to a server that already holds the upload."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from core.data import images
from core.data.images import FULL_DECODE_LIMITS, TooLargeToDecodeError, decode_for_model_and_thumbnail

REPO = Path(__file__).resolve().parents[2]
PEAK_BOUND_MIB = 190  # 200 MB, the target for what one 49-megapixel photo may add to the server's peak
HUGE = (7000, 7000)  # 49 MP, the photo


def photo_like(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A smooth image (a few random colours blown up): compresses small and fast, decodes like a photo."""
    colours = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(colours).resize((width, height), Image.BILINEAR)
    if mode == "RGBA":
        image.putalpha(Image.linear_gradient("L").resize((width, height)))
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    elif mode == "P":
        image = image.quantize(64)
    elif mode != "RGB":
        image = image.convert(mode)
    return image


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


FAST = {"PNG": {"compress_level": 1}, "WEBP": {"method": 0}, "JPEG": {"quality": 85}, "BMP": {}}
# (name, Pillow format, mode, extra save options): every accepted format and the layouts that decode differently.
CASES = [
    ("rgb.png", "PNG", "RGB", {}), ("rgba.png", "PNG", "RGBA", {}), ("deep16.png", "PNG", "I;16", {}),
    ("palette.png", "PNG", "P", {}), ("gray.png", "PNG", "L", {}), ("rgb24.bmp", "BMP", "RGB", {}),
    ("rgba32.bmp", "BMP", "RGBA", {}), ("lossy.webp", "WEBP", "RGB", {"quality": 80}),
    ("lossless.webp", "WEBP", "RGBA", {"lossless": True, "quality": 0}), ("rgb.jpg", "JPEG", "RGB", {}),
    ("gray.jpg", "JPEG", "L", {}),
]
AT_LIMIT = {"PNG": (6000, 4000), "BMP": (6000, 4000), "WEBP": (4000, 2500)}  # exactly FULL_DECODE_LIMITS


MEASURE = """
import json, sys, threading
from pathlib import Path
def peak_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
from core.data.images import decode_for_model_and_thumbnail
uploads = [(Path(p).name, Path(p).read_bytes()) for p in sys.argv[1:]]
before = peak_kb()
results = {}
def decode(name, data):
    photo = decode_for_model_and_thumbnail(data, name, 224)
    results[name] = [list(photo.model_input.shape), photo.decoded_pixels]
threads = [threading.Thread(target=decode, args=upload) for upload in uploads]  # as visitors' sessions do
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"growth_mib": (peak_kb() - before) / 1024, "results": results}))
"""


def measure(*paths: Path) -> dict:
    """Decode the files at once, one thread each, in a fresh interpreter; its peak growth in MiB and what it got."""
    done = subprocess.run([sys.executable, "-c", MEASURE, *map(str, paths)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def at_limit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each case as large as its format may be decoded at full size (a 49 MP photo for JPEG, which is reduced)."""
    folder = tmp_path_factory.mktemp("at-limit")
    paths = {}
    for name, fmt, mode, options in CASES:
        paths[name] = folder / name
        paths[name].write_bytes(encoded(photo_like(*AT_LIMIT.get(fmt, HUGE), mode), fmt, **FAST[fmt], **options))
    return paths


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_largest_decodable_photo_stays_under_the_peak_bound(name: str, at_limit: dict[str, Path]) -> None:
    fmt = next(case[1] for case in CASES if case[0] == name)
    measured = measure(at_limit[name])
    shape, pixels = measured["results"][name]
    assert shape == [224, 224, 3]
    assert pixels == (875 * 875 if fmt == "JPEG" else FULL_DECODE_LIMITS[fmt])  # JPEG: reduced 1/8, else whole
    assert measured["growth_mib"] < PEAK_BOUND_MIB, measured  # was 240-490 MiB at these sizes before issue 27


def test_concurrent_visitors_decode_one_large_photo_at_a_time(at_limit: dict[str, Path]) -> None:
    # Four visitors' 24 MP photos at once: one full-size decode at a time, so the peak is one decode's, not four.
    measured = measure(at_limit["rgb.png"], at_limit["rgba.png"], at_limit["rgb24.bmp"], at_limit["rgba32.bmp"])
    assert len(measured["results"]) == 4
    assert measured["growth_mib"] < PEAK_BOUND_MIB, measured


@pytest.mark.parametrize("name, fmt, mode, options", [case for case in CASES if case[1] != "JPEG"])
def test_49_megapixel_photo_is_refused_from_the_header_naming_it_and_the_limit(
        name: str, fmt: str, mode: str, options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    data = encoded(Image.new(mode, HUGE), fmt, **FAST[fmt], **options)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a pixel was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)  # proves the refusal comes before any decoding
    monkeypatch.setattr(images, "_load_rgb", no_decoding)
    limit = FULL_DECODE_LIMITS[fmt] // 1_000_000
    shown = {"WEBP": "WebP"}.get(fmt, fmt)
    with pytest.raises(TooLargeToDecodeError) as refused:
        decode_for_model_and_thumbnail(data, name, 224)
    assert str(refused.value) == (f"{name}: 7000x7000 pixels (49 MP) is over the {limit} MP limit for {shown} photos, "
                                  "which cannot be decoded at reduced size; resize it (or save it as JPEG) first.")


def test_jpeg_too_narrow_to_reduce_is_refused_above_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # 447 px wide: DCT reduction would take it below the model's 224 px, so it would be decoded whole (26.8 MP).
    data = encoded(Image.new("RGB", (447, 60_000), (90, 140, 60)), "JPEG", quality=50)
    assert decode_for_model_and_thumbnail(data, "strip.jpg", 96).decoded_pixels == 112 * 15_000  # reducible: fine
    monkeypatch.setattr(images, "_load_rgb", lambda *a: (_ for _ in ()).throw(AssertionError("decoded")))
    with pytest.raises(TooLargeToDecodeError, match=r"^strip\.jpg: 447x60000 pixels \(26\.8 MP\) would still be "
                                                    r"447x60000 pixels .* over the 24 MP limit"):
        decode_for_model_and_thumbnail(data, "strip.jpg", 224)


def test_decoding_slots_bound_the_pixels_decoded_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Eight visitors' photos at once, each decode made slow so that they would overlap: never more pixels in flight
    # than the slots hold (two of these photos), and every photo is still decoded.
    side = 100
    monkeypatch.setattr(images, "DECODING_SLOTS", images.DecodingSlots(2 * side * side))
    real_load = images._load_rgb
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def slow_load(image: Image.Image, source: str) -> np.ndarray:
        with lock:
            in_flight[0] += image.size[0] * image.size[1]
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.05)
        try:
            return real_load(image, source)
        finally:
            with lock:
                in_flight[0] -= image.size[0] * image.size[1]

    monkeypatch.setattr(images, "_load_rgb", slow_load)
    data = encoded(photo_like(side, side), "PNG")
    done = []
    threads = [threading.Thread(target=lambda: done.append(decode_for_model_and_thumbnail(data, "a.png", 32)))
               for _ in range(8)]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    assert len(done) == 8 and most[0] == 2 * side * side
