"""Export and Classify in a real browser, checked for what they produce (issue 19.3).

One tiny real run (Lite0, 64 px, head only) is trained into a shared workspace before one Streamlit server starts;
both tests use that server and that run. Export: the Evaluate page exports through its own buttons, its parity table
shows the numbers parity.json holds (a float32 export agrees with Keras on every photo), and the bundle .zip that
the download button hands the browser loads as a demo bundle that classifies like Keras. Classify: the class the page
shows for an uploaded photo is the one `python -m core predict` gives (core.serving.predict.Classifier), and the
heatmap beside it is core's class-activation overlay for that class, not the photo itself, a flat image or nothing.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.helpers_ui import (CHROMIUM, flowers_mini, go_to, keep_failure, launch_chromium, require, streamlit_server,
                              wait_idle)

IMAGE_SIZE = 64  # the smallest size the trainer takes comfortably: the run only has to be real, not good
EXPORTED = ("keras", "tflite")  # two float32 formats: Keras itself and the bundle's LiteRT file
BUNDLED = "tflite"  # the first format chosen that runs without TensorFlow goes into the demo bundle
SAFE_MARGIN = 0.15  # the page decodes the uploaded bytes, `predict` the file (JPEG DCT scaling): probabilities
#                     differ by ~0.3 points, so only photos whose top two are this far apart are compared
PERCENT_SLACK = 2.0  # percentage points between the page's confidence and predict's, for the same reason


@dataclass
class CorePrediction:
    """What core says about one flowers-mini photo: its top-1, that probability, and the runner-up's."""

    photo: Path
    predicted: str
    probability: float
    margin: float


@dataclass
class TrainedApp:
    """The module's server, browser, run and core's answers for the photos the Classify test uploads."""

    url: str
    browser: object
    run: object  # core.base.runs.RunDir
    photos: list[CorePrediction]
    log: Path


# ----------------------------------------------------------------------------------------- core's side
def core_predictions(run, photos: list[Path]) -> list[CorePrediction]:
    """`python -m core predict` for these photos, in process: top-1, its probability and the margin to the second."""
    from core.serving.predict import Classifier

    results = Classifier(run).classify_files(photos, top_k=2)
    return [CorePrediction(Path(r["path"]), r["predicted"], r["confidence"],
                           r["top_k"][0]["probability"] - r["top_k"][1]["probability"]) for r in results]


def two_clear_photos(predictions: list[CorePrediction]) -> list[CorePrediction]:
    """Two photos core predicts as two different classes, each with its top two far apart: a page that shows one
    class for everything fails, and decoding differences cannot swap the answer."""
    clear = sorted((p for p in predictions if p.margin >= SAFE_MARGIN), key=lambda p: -p.margin)
    chosen: list[CorePrediction] = []
    for prediction in clear:
        if prediction.predicted not in {c.predicted for c in chosen}:
            chosen.append(prediction)
    assert len(chosen) >= 2, f"the tiny run has no two clear photos of different classes: {predictions}"
    return chosen[:2]


def core_heatmap(run, photo: Path, class_name: str) -> np.ndarray:
    """The overlay the Classify page should draw: core's CAM for `class_name` over the photo decoded from its bytes
    as an upload is (core.serving.predict.decode_uploads)."""
    from core.results.cam import heatmap_for
    from core.serving.predict import Classifier, decode_uploads

    classifier = Classifier(run)

    @dataclass
    class Upload:
        name: str

        def getvalue(self) -> bytes:
            return photo.read_bytes()

    (item,) = decode_uploads([Upload(photo.name)], classifier.image_size).photos
    return heatmap_for(classifier.model, item.photo.model_input, classifier.classes.index(class_name),
                       classifier.image_size)


# ----------------------------------------------------------------------------------------- the browser's side
def grid_rows(grid) -> list[dict[str, str]]:
    """A st.dataframe's cells as shown, {column header: text} per row. The grid paints on a canvas; the table
    Streamlit keeps inside it for screen readers holds the same texts."""
    headers = grid.locator('th[role="columnheader"]').all_inner_texts()
    rows = []
    for row in grid.locator('tbody tr[role="row"]').all():
        cells = row.locator('td[role="gridcell"]').all_inner_texts()
        rows.append(dict(zip(headers[-len(cells):], (c.strip() for c in cells))))  # a row-index column may lead
    return rows


def cell_number(text: str) -> float:
    """A grid cell's number: the screen-reader table holds the value itself ("1", "0.6625"); should it ever hold the
    text painted on the canvas ("100.0%", "3.0e-06"), that is read too."""
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


def shown_answers(page, count: int, timeout: float = 60.0) -> dict[str, tuple[str, float]]:
    """{photo name: (class, percent)} from the Classify page's line per photo: 'name: class (p%)', or 'name: unknown
    (why); best guess class (p%)' below the run's threshold, whose best guess is the class. Polled until `count`
    lines are drawn (the script adds them one by one)."""
    pattern = re.compile(r"\s*(\S+): (?:unknown \(.*\); best guess )?(\S+) \(([\d.]+)%\)\s*", re.S)
    deadline = time.monotonic() + timeout
    while True:
        shown = {}
        for text in page.locator('[data-testid="stMain"] [data-testid="stMarkdownContainer"]').all_inner_texts():
            match = pattern.fullmatch(text)
            if match:
                shown[match.group(1)] = (match.group(2), float(match.group(3)))
        if len(shown) >= count or time.monotonic() > deadline:
            return shown
        page.wait_for_timeout(300)


def choose_option(page, label: str, option: str) -> None:
    """Add `option` to the multiselect labelled `label` as a person does: open its list, click the option."""
    box = page.get_by_role("combobox", name=label)
    choice = page.get_by_role("option", name=option, exact=True)
    for _ in range(3):  # a click that lands while the page is still drawing may not open the list
        box.click()
        try:
            choice.wait_for(timeout=5_000)
            break
        except Exception:  # playwright's TimeoutError
            box.press("ArrowDown")
    choice.click()
    page.keyboard.press("Escape")
    wait_idle(page)


def image_pixels(page, base_url: str, image) -> np.ndarray:
    """The RGB pixels the server sent for an <img> (its source fetched again, at its own size, not as drawn)."""
    import cv2

    source = image.get_attribute("src")
    response = page.request.get(source if source.startswith("http") else f"{base_url}{source}")
    assert response.ok, f"{source}: HTTP {response.status}"
    decoded = cv2.imdecode(np.frombuffer(response.body(), np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None, f"{source}: not an image ({response.headers.get('content-type')})"
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def captioned_image(page, caption: str):
    """The <img> of the st.image whose caption starts with `caption` (the first such on the page)."""
    figure = page.locator('[data-testid="stImage"]').filter(has_text=caption).first
    figure.wait_for()
    return figure.locator("img").first


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two RGB images in levels (0..255), `b` resized to `a`'s size first."""
    import cv2

    if a.shape != b.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


# ----------------------------------------------------------------------------------------- fixture
@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedApp]:
    """A tiny real run in a shared workspace, one Streamlit server on it and one Chromium, for both tests."""
    require(Path(CHROMIUM).is_file(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    require(flowers_mini() is not None, "flowers-mini is missing (see core.data.samples.flowers_mini_missing_message)")
    require(importlib.util.find_spec("ai_edge_litert") is not None,
            "ai-edge-litert (requirements-train.txt), which the tflite export and the bundle need")
    from playwright.sync_api import sync_playwright

    from core.base.config import TrainConfig
    from core.training.train import run_training

    root = tmp_path_factory.mktemp("export-classify")
    workspace = root / "workspace"
    started = time.perf_counter()
    run = run_training(TrainConfig(data=str(flowers_mini()), image_size=IMAGE_SIZE), models_dir=workspace / "runs")
    assert run.read_status()["state"] == "succeeded", run.read_status()
    val_photos = sorted((flowers_mini() / "val").glob("*/*.jpg"))
    photos = two_clear_photos(core_predictions(run, val_photos))
    print(f"tiny run {run.run_id} trained and predicted in {time.perf_counter() - started:.1f} s")
    env = {"STUDIO_SHARED_WORKSPACE": "1", "STUDIO_DEMO_DIR": str(root / "no-demo")}
    log = root / "server.log"
    with streamlit_server(workspace, log, env=env) as url, sync_playwright() as p:
        browser = launch_chromium(p)
        yield TrainedApp(url, browser, run, photos, log)
        browser.close()


def new_page(app: TrainedApp):
    """A fresh tab with a download-friendly context; Streamlit on a busy 2-core machine gets generous timeouts."""
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    page = app.browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True).new_page()
    page.set_default_timeout(60_000)
    return page


# ----------------------------------------------------------------------------------------- the tests
def test_export_in_the_browser_shows_real_parity_and_downloads_a_working_bundle(app: TrainedApp,
                                                                               tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from core.serving.bundle import MANIFEST, load_demo_bundle
    from core.serving.export import FORMATS, read_parity
    from core.serving.predict import Classifier

    page = new_page(app)
    started = time.perf_counter()
    try:
        page.goto(f"{app.url}/evaluate?run={app.run.run_id}")
        export = page.get_by_role("button", name="Export and bundle")
        expect(export).to_be_enabled()
        wait_idle(page)
        # Choose the formats as a person does: tflite is preselected, keras is added from the list.
        choose_option(page, "Formats", "keras")
        for name in EXPORTED:
            expect(page.get_by_role("group", name="Selected values").get_by_label(name, exact=True)).to_be_visible()
        export.click()
        expect(page.get_by_text(f"demo bundle {app.run.run_id}-{BUNDLED}.zip is ready")).to_be_visible(
            timeout=180_000)
        wait_idle(page)

        # The parity table shows what parity.json holds, and that holds a real check: every float32 export gives
        # Keras' top-1 on every held-out photo, its probabilities within 1e-4.
        parity = read_parity(app.run)
        assert set(parity) == set(EXPORTED), parity
        table = page.locator('[data-testid="stDataFrame"]').filter(
            has=page.locator('th[role="columnheader"]', has_text="top-1 agreement"))
        expect(table).to_be_visible()
        rows = {row["format"]: row for row in grid_rows(table)}
        assert set(rows) == set(EXPORTED), rows
        for name in EXPORTED:
            entry, row = parity[name], rows[name]
            assert FORMATS[name].is_float and entry["passed"] is True and row["passed"] == "true", (entry, row)
            assert entry["agreement"] == 1.0 and cell_number(row["top-1 agreement"]) == 1.0, (entry, row)
            assert entry["images"] >= 10 and cell_number(row["images"]) == entry["images"], (entry, row)
            assert entry["export_accuracy"] == entry["keras_accuracy"] > 0, entry
            # Within what a shown "66.2%" or "3.0e-06" rounds away, should the cells ever hold the painted text.
            for column, key, within in (("Keras accuracy", "keras_accuracy", {"abs": 5e-4}),
                                        ("export accuracy", "export_accuracy", {"abs": 5e-4}),
                                        ("max prob. difference", "max_abs_probability_difference",
                                         {"rel": 0.02, "abs": 1e-12})):
                assert cell_number(row[column]) == pytest.approx(entry[key], **within), (column, entry, row)
            assert entry["max_abs_probability_difference"] < 1e-4, entry

        # The download button hands over the bundle .zip; it opens, its checksums hold, and it classifies like
        # the Keras model without TensorFlow's help (LiteRT).
        download_button = page.get_by_role("button", name=re.compile(rf"Download {app.run.run_id}-{BUNDLED}\.zip"))
        with page.expect_download() as download:
            download_button.click()
        archive = tmp_path / download.value.suggested_filename
        download.value.save_as(archive)
        assert archive.name == f"{app.run.run_id}-{BUNDLED}.zip", archive.name
        with zipfile.ZipFile(archive) as bundle_zip:
            names = set(bundle_zip.namelist())
            folder = f"{app.run.run_id}-{BUNDLED}"
            manifest = json.loads(bundle_zip.read(f"{folder}/{MANIFEST}"))
        model_file = FORMATS[BUNDLED].filename
        assert {f"{folder}/{name}" for name in (MANIFEST, model_file, "classes.json", "parity.json")} <= names, names
        assert (manifest["run_id"], manifest["format"], manifest["model_file"], manifest["image_size"]) == \
            (app.run.run_id, BUNDLED, model_file, IMAGE_SIZE), manifest
        assert manifest["parity"]["agreement"] == 1.0, manifest["parity"]
        bundle = load_demo_bundle(archive, extract_to=tmp_path / "unzipped")  # checks every file's sha256
        photos = [p.photo for p in app.photos]
        from_bundle = [r["predicted"] for r in bundle.classifier.classify_files(photos)]
        assert from_bundle == [r["predicted"] for r in Classifier(app.run).classify_files(photos)]
    except Exception:
        keep_failure({"export-failure.png": page}, {"export-server.log": app.log})
        raise
    finally:
        page.context.close()
    print(f"export in Chromium: {time.perf_counter() - started:.1f} s")


def test_classify_in_the_browser_shows_cores_class_and_a_real_heatmap(app: TrainedApp) -> None:
    from playwright.sync_api import expect

    page = new_page(app)
    started = time.perf_counter()
    try:
        page.goto(f"{app.url}/?run={app.run.run_id}")
        wait_idle(page)
        go_to(page, "Classify")
        uploader = page.locator('[data-testid="stFileUploader"] input[type=file]').first
        uploader.set_input_files([str(p.photo) for p in app.photos])
        expect(page.get_by_text(f"Classified {len(app.photos)} photo(s)")).to_be_visible(timeout=120_000)
        wait_idle(page)
        shown = shown_answers(page, len(app.photos))
        expected = {p.photo.name: (p.predicted, 100 * p.probability) for p in app.photos}
        assert {name: cls for name, (cls, _) in shown.items()} == {name: cls for name, (cls, _) in expected.items()}, \
            f"the page shows {shown}, core predicts {expected}"
        for name, (_, percent) in shown.items():
            assert abs(percent - expected[name][1]) < PERCENT_SLACK, (name, percent, expected[name])

        # The first photo's heatmap: the image the server sent is core's CAM overlay for the shown class (same size,
        # same pixels up to PNG/JPEG rounding), it is no flat fill, and it is not the plain photo shown beside it.
        first = app.photos[0]
        heatmap = image_pixels(page, app.url, captioned_image(page, f"where it saw {first.predicted}"))
        photo = image_pixels(page, app.url, captioned_image(page, "photo"))
        expected_overlay = core_heatmap(app.run, first.photo, first.predicted)
        assert heatmap.shape == expected_overlay.shape == (IMAGE_SIZE, IMAGE_SIZE, 3), \
            (heatmap.shape, expected_overlay.shape)
        assert heatmap.std() > 20, f"the heatmap is nearly flat (std {heatmap.std():.1f} levels)"
        to_core = mean_difference(heatmap, expected_overlay)
        to_photo = mean_difference(heatmap, photo)
        assert to_core < 3.0, f"the heatmap differs from core's overlay by {to_core:.1f} levels on average"
        assert to_photo > 15.0, f"the heatmap is the plain photo ({to_photo:.1f} levels apart on average)"
    except Exception:
        keep_failure({"classify-failure.png": page}, {"classify-server.log": app.log})
        raise
    finally:
        page.context.close()
    print(f"classify in Chromium: {time.perf_counter() - started:.1f} s; heatmap {to_core:.1f} levels from core's "
          f"overlay, {to_photo:.1f} from the photo")
