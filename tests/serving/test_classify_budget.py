"""Classify within a budget (issue 14): photos decoded straight to the model's size and a preview, at most
MAX_PHOTOS_PER_BATCH photos and MAX_BATCH_DECODED_PIXELS decoded pixels per batch, duplicate names shown apart,
and names shown and exported as text, never as Markdown or spreadsheet formulas."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.images import (MAX_IMAGE_PIXELS, THUMBNAIL_SIDE, ImageError, OverBudgetError, decode_for_model_and_thumbnail,
                         decode_image, load_for_model)
from core.serving.predict import (MAX_BATCH_DECODED_PIXELS, MAX_PHOTOS_PER_BATCH, decode_uploads, display_names, result_rows,
                          results_csv)
from core.base.safetext import markdown_literal
from test_app import CLASSES, app, make_run, no_exceptions, png_bytes, texts, workspace  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
HUGE_SIDE = 7000  # the probe's photos: 7000x7000 JPEGs, 147 MB each once fully decoded


def jpeg_bytes(width: int, height: int, seed: int = 0, quality: int = 85) -> bytes:
    """A smooth photo-like JPEG (a few random colours blown up), small on disk however large in pixels."""
    colours = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(colours).resize((width, height), Image.BILINEAR).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_of(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class FakeUpload:
    """What decode_uploads reads of Streamlit's UploadedFile."""

    name: str
    data: bytes

    def getvalue(self) -> bytes:
        return self.data


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    path.write_bytes(jpeg_bytes(HUGE_SIDE, HUGE_SIDE))
    return path


# A fresh interpreter per measurement, so the peak RSS it reports belongs to that decode alone.
MEASURE = """
import json, sys
# VmHWM, the peak of this process image: ru_maxrss would start at the parent's size (Linux keeps the high-water mark
# across the exec of a vfork child), so a large pytest process would hide any growth.
def peak_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
from pathlib import Path
from core.data.images import decode_for_model_and_thumbnail, decode_image
data = Path(sys.argv[2]).read_bytes()
before = peak_kb()
if sys.argv[1] == "budgeted":
    photo = decode_for_model_and_thumbnail(data, "huge.jpg", 224)
    shapes = [list(photo.model_input.shape), list(photo.thumbnail.shape), photo.decoded_pixels]
else:
    shapes = [list(decode_image(data, "huge.jpg").shape)]
after = peak_kb()
print(json.dumps({"growth_mb": (after - before) / 1024, "shapes": shapes}))
"""


def measure(path: Path, how: str) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, how, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- decoding
def test_huge_jpeg_is_never_decoded_at_full_size(huge_jpeg: Path) -> None:
    full = measure(huge_jpeg, "full")
    budgeted = measure(huge_jpeg, "budgeted")
    # The control shows the measurement sees a full decode (7000 x 7000 x 3 bytes = 147 MB)...
    assert full["shapes"] == [[HUGE_SIDE, HUGE_SIDE, 3]] and full["growth_mb"] > 130, full
    # ...and the budgeted decode stays far below it: DCT-reduced to 875 x 875 (1/8), 2.3 MB of pixels.
    assert budgeted["growth_mb"] < 30, budgeted
    assert budgeted["shapes"] == [[224, 224, 3], [THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3], 875 * 875], budgeted


def test_huge_jpeg_model_input_is_what_training_decodes(huge_jpeg: Path) -> None:
    photo = decode_for_model_and_thumbnail(huge_jpeg.read_bytes(), "huge.jpg", 96, thumb=None)
    assert photo.thumbnail is None and photo.model_input.dtype == np.uint8
    np.testing.assert_array_equal(photo.model_input, load_for_model(huge_jpeg, 96))


def test_png_is_decoded_whole_resized_at_once_and_matches_training(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    path.write_bytes(png_of(1000, 600))
    photo = decode_for_model_and_thumbnail(path.read_bytes(), "wide.png", 64)
    np.testing.assert_array_equal(photo.model_input, load_for_model(path, 64))
    assert photo.thumbnail.shape == (230, THUMBNAIL_SIDE, 3)  # aspect kept, longest side 384
    assert photo.decoded_pixels == 1000 * 600  # PNG has no reduced decoding: all of it counts
    small = decode_for_model_and_thumbnail(png_of(50, 30), "small.png", 64)
    assert small.thumbnail.shape == (30, 50, 3)  # never enlarged


def test_small_model_size_decodes_the_preview_apart_and_sharp() -> None:
    # For 64 px the JPEG is reduced 1/8 to 250x188, too small for a 384 px preview: the preview gets its own
    # reduced decode (1/4: 500x375) instead of an enlarged blur, and both count against the budget.
    photo = decode_for_model_and_thumbnail(jpeg_bytes(2000, 1500), "phone.jpg", 64)
    assert photo.model_input.shape == (64, 64, 3)
    assert photo.thumbnail.shape == (288, THUMBNAIL_SIDE, 3)
    assert photo.decoded_pixels == 250 * 188 + 500 * 375


def test_budget_is_checked_from_the_header_before_decoding_and_names_the_file(huge_jpeg: Path) -> None:
    with pytest.raises(OverBudgetError, match=r"^huge\.jpg: decoding it needs 0\.766 megapixels"):
        decode_for_model_and_thumbnail(huge_jpeg.read_bytes(), "huge.jpg", 224, max_decoded_pixels=100_000)
    bomb = io.BytesIO()
    Image.new("L", (10_000, 6_000)).save(bomb, format="PNG")  # 60 Mpx header, over the decompression-bomb limit
    with pytest.raises(ImageError, match=f"bomb.png: 10000x6000 pixels is over the {MAX_IMAGE_PIXELS:,} pixel"):
        decode_for_model_and_thumbnail(bomb.getvalue(), "bomb.png", 224)


# ------------------------------------------------------------------------------------------------ batches
def test_batch_classifies_at_most_the_cap_in_upload_order() -> None:
    assert 16 <= MAX_PHOTOS_PER_BATCH <= 256
    uploads = [FakeUpload(f"{i:03d}.png", png_of(8, 8, seed=i)) for i in range(MAX_PHOTOS_PER_BATCH + 3)]
    batch = decode_uploads(uploads, 32, thumbnails=2)
    assert batch.not_classified == 3 and not batch.problems
    assert [p.name for p in batch.photos] == [u.name for u in uploads[:MAX_PHOTOS_PER_BATCH]]
    assert [p.position for p in batch.photos] == list(range(MAX_PHOTOS_PER_BATCH))
    assert [p.photo.thumbnail is not None for p in batch.photos[:3]] == [True, True, False]  # previews only as shown


def test_batch_pixel_budget_refuses_by_name_and_spares_the_rest() -> None:
    assert MAX_BATCH_DECODED_PIXELS >= 4 * MAX_IMAGE_PIXELS  # four photos at the per-photo limit always fit
    uploads = [FakeUpload("a.png", png_of(100, 100)), FakeUpload("b.png", png_of(100, 100)),
               FakeUpload("big.png", png_of(100, 100)), FakeUpload("broken.jpg", b"not an image"),
               FakeUpload("small.png", png_of(40, 40))]
    batch = decode_uploads(uploads, 32, max_pixels=25_000)
    assert [p.name for p in batch.photos] == ["a.png", "b.png", "small.png"]
    assert [p.position for p in batch.photos] == [0, 1, 4]
    assert [name for name, _ in batch.problems] == ["big.png", "broken.jpg"]
    assert batch.problems[0][1] == ("decoding it needs 0.01 megapixels and only 0.005 are left in this batch's budget "
                                    "(a batch decodes at most 0.025 megapixels); classify it in a smaller batch.")
    assert batch.problems[1][1].startswith("not a readable image")


def test_duplicate_names_are_told_apart_in_order() -> None:
    assert display_names(["IMG_0001.jpg", "IMG_0001.jpg", "b.jpg"]) == ["IMG_0001.jpg", "IMG_0001.jpg (2)", "b.jpg"]
    # A real upload already called "x (2)" keeps its name; the repeat takes the next free one.
    assert display_names(["x", "x", "x (2)"]) == ["x", "x (3)", "x (2)"]


def test_csv_neutralises_names_that_start_like_formulas() -> None:
    rows = result_rows(["=HYPERLINK(\"http://evil\")", "@a.png", "plain.png"],
                       [[{"class": "=SUM(1)", "probability": 0.7}, {"class": "+x", "probability": 0.3}],
                        [{"class": "-y", "probability": 0.9}],
                        [{"class": "roses", "probability": 1.0}]])
    table = list(csv.DictReader(io.StringIO(results_csv(rows).decode("utf-8"))))
    assert [r["file"] for r in table] == ["'=HYPERLINK(\"http://evil\")", "'@a.png", "plain.png"]
    assert [r["predicted"] for r in table] == ["'=SUM(1)", "'-y", "roses"]
    assert table[0]["top_k"] == "'=SUM(1) 0.700; +x 0.300" and table[0]["confidence"] == "0.7"


# ----------------------------------------------------------------------------------------- the page (AppTest)
ODD_CLASSES = ["=SUM(1)", "**bold** $x$", "roses"]


class OddClassifier:
    """Stands in for core.serving.predict.Classifier: classes with Markdown and formula names, fixed answers, no model."""

    classes = ODD_CLASSES
    image_size = 96
    model = None

    def __init__(self) -> None:
        self.fed: list[tuple[int, ...]] = []

    def heatmap(self, image, class_index):  # as core.serving.predict.Classifier does, through the (faked) CAM
        from core.results import cam

        return cam.heatmap_for(self.model, image, class_index, self.image_size)

    def classify_arrays(self, images, top_k=5):
        self.fed.extend(image.shape for image in images)
        return [[{"class": c, "probability": p} for c, p in zip(ODD_CLASSES, (0.6, 0.3, 0.1))][:top_k]
                for _ in images]


@pytest.fixture
def classify_page(workspace: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: F811 (the fixture imported above)
    """The Classify page on a run whose model is OddClassifier; heatmaps record what they were given."""
    make_run(workspace / "runs", "run-a")
    classifier = OddClassifier()
    heatmap_inputs: list[tuple[int, ...]] = []

    def fake_heatmap(model, image, index, size):
        heatmap_inputs.append(image.shape)
        return image

    monkeypatch.setattr("pages._loaders.load_classifier", lambda run: classifier)
    monkeypatch.setattr("core.results.cam.heatmap_for", fake_heatmap)
    stores = []
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    class RecordingStorage(MemoryMediaFileStorage):  # so the test can read what the download button offers
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr("streamlit.testing.v1.app_test.MemoryMediaFileStorage", RecordingStorage)
    at = app()
    at.switch_page("pages/classify.py").run()
    no_exceptions(at)
    return at, classifier, heatmap_inputs, stores


def downloaded(at, stores) -> bytes:
    url = at.get("download_button")[0].proto.url
    return stores[-1].get_file(url.rsplit("/", 1)[1]).content


def test_page_classifies_two_photos_with_the_same_name(classify_page) -> None:
    at, classifier, heatmap_inputs, _ = classify_page
    at.file_uploader(key="photos").set_value([("IMG_0001.jpg", jpeg_bytes(300, 200, seed=1), "image/jpeg"),
                                              ("IMG_0001.jpg", jpeg_bytes(200, 300, seed=2), "image/jpeg")]).run()
    no_exceptions(at)  # was StreamlitDuplicateElementKey on the second top-k chart
    assert list(at.dataframe[0].value["file"]) == ["IMG_0001.jpg", "IMG_0001.jpg (2)"]
    assert len(at.get("plotly_chart")) == 2
    headings = [m.value for m in at.markdown if m.value.startswith("**IMG")]
    assert headings[1].startswith(f"**{markdown_literal('IMG_0001.jpg (2)')}**")
    # The model got its own input size, and so did the heatmap: nothing full-size reached either.
    assert classifier.fed[-2:] == [(96, 96, 3), (96, 96, 3)] and heatmap_inputs[-2:] == [(96, 96, 3), (96, 96, 3)]


def test_page_shows_markdown_in_names_literally_and_exports_safe_csv(classify_page) -> None:
    at, _, _, stores = classify_page
    name = "**bold** $x$.png"
    at.file_uploader(key="photos").set_value([(name, png_bytes(1), "image/png"),
                                              ("=cmd|calc.png", png_bytes(2), "image/png"),
                                              ("*evil* <b>$y$</b>.jpg", b"not an image", "image/jpeg")]).run()
    no_exceptions(at)
    shown = texts(at)
    for raw in ("**bold**", "$x$", "<b>", "$y$"):  # nothing a visitor named is read as Markdown, math or HTML
        assert raw not in shown.replace("`*evil* <b>$y$</b>.jpg`", ""), raw
    assert f"**{markdown_literal(name)}**: {markdown_literal('=SUM(1)')} (60.0%)" in shown
    assert f"classes: {', '.join(markdown_literal(c) for c in ODD_CLASSES)}" in shown
    assert any(w.value.startswith("Skipped `*evil* <b>$y$</b>.jpg`: not a readable image") for w in at.warning)
    table = list(csv.DictReader(io.StringIO(downloaded(at, stores).decode("utf-8"))))
    assert [r["file"] for r in table] == [name, "'=cmd|calc.png"]
    assert [r["predicted"] for r in table] == ["'=SUM(1)", "'=SUM(1)"]


def test_page_says_how_many_photos_were_left_out(classify_page, monkeypatch: pytest.MonkeyPatch) -> None:
    at = classify_page[0]
    monkeypatch.setattr("core.serving.predict.MAX_PHOTOS_PER_BATCH", 3)
    at.file_uploader(key="photos").set_value([(f"{i}.png", png_bytes(i), "image/png") for i in range(5)]).run()
    no_exceptions(at)
    assert list(at.dataframe[0].value["file"]) == ["0.png", "1.png", "2.png"]
    assert any("the last 2 of the 5 uploaded were not classified" in w.value for w in at.warning)


def test_page_refuses_a_photo_over_the_pixel_budget_by_name(classify_page, monkeypatch: pytest.MonkeyPatch) -> None:
    at = classify_page[0]
    monkeypatch.setattr("core.serving.predict.MAX_BATCH_DECODED_PIXELS", 2_000)  # one 40x40 photo (1,600 px) fits
    at.file_uploader(key="photos").set_value([("first.png", png_bytes(1), "image/png"),
                                              ("second.png", png_bytes(2), "image/png")]).run()
    no_exceptions(at)
    assert list(at.dataframe[0].value["file"]) == ["first.png"]
    assert any(w.value.startswith("Skipped `second.png`: decoding it needs") and "smaller batch" in w.value
               for w in at.warning)
