"""Evaluation you can click through (issue 16.3): a confusion-matrix cell lists its photos (AppTest and a real
click in Chromium), named evaluations on a labelled test folder sit beside the run's own and can be switched to.

The runs here are run folders as the trainer leaves them, with a report computed by core.results.metrics from constructed
probabilities and real photo files, so no model is trained (the page never loads one to show a report)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import write_png
from core.network.device import DeviceInfo
from core.data.ingest import COMPLETE_MARKER
from core.results.metrics import evaluation_report
from core.base.runs import RunDir

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["daisy", "roses", "tulips"]
# Rows true, columns predicted: the report's confusion matrix is built from these cells' photos.
MATRIX = [[3, 2, 0],
          [1, 4, 0],
          [0, 1, 3]]


def photos_and_probabilities(root: Path, matrix=MATRIX) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One small PNG per photo of each cell, and probabilities whose argmax puts it in that cell (confidences
    spread so the order within a cell is known: 0.50, 0.51, ...)."""
    probs, labels, paths = [], [], []
    seed = 0
    for true, row in enumerate(matrix):
        for predicted, count in enumerate(row):
            for k in range(count):
                path = f"{CLASSES[true]}/{CLASSES[true]}-as-{CLASSES[predicted]}-{k}.png"
                write_png(root / path, seed=seed, size=24)
                seed += 1
                confidence = 0.5 + 0.01 * k
                row_probs = np.full(len(CLASSES), (1 - confidence) / (len(CLASSES) - 1))
                row_probs[predicted] = confidence
                probs.append(row_probs)
                labels.append(true)
                paths.append(path)
    return np.array(probs), np.array(labels), paths


def make_evaluated_run(runs_dir: Path, root: Path, run_id: str = "run-click", matrix=MATRIX) -> RunDir:
    """A succeeded run (model file faked) whose evaluation.json scores the photos under `root`."""
    probs, labels, paths = photos_and_probabilities(root, matrix)
    run = RunDir.create(runs_dir, run_id)
    run.write_config({"data": str(root), "backbone": "efficientnet_lite0", "image_size": 96,
                      "resolved": {"image_size": 96}})
    run.write_classes(CLASSES)
    run.write_split({"root": str(root), "classes": CLASSES, "train": [], "val": [], "test": []})
    run.set_status("succeeded", pid=999_999, phase="done")
    run.file("model.keras").write_bytes(b"fake")
    report = evaluation_report(probs, labels, CLASSES, paths, "test")
    report["root"] = str(root)
    run.write_evaluation(report)
    return run


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A shared workspace, a fast fake device and fresh Streamlit caches (as tests/app/test_app.py)."""
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("STUDIO_SHARED_WORKSPACE", "1")
    monkeypatch.setenv("STUDIO_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setattr("core.network.device.detect_device", lambda: DeviceInfo("tensorflow", "cpu", "CPU only", 1))
    monkeypatch.setattr("core.data.samples.is_online", lambda *a, **k: False)
    st.cache_data.clear()
    st.cache_resource.clear()
    return tmp_path / "ws"


def evaluate_page(run_id: str = "run-click") -> AppTest:
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=30)
    at.query_params["run"] = run_id
    at.run()
    at.switch_page("pages/evaluate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "info", "warning", "error", "success")
                     for e in getattr(at, kind))


def cell_pictures(at: AppTest) -> list[str]:
    """The captions ("51% · file.png") of the clicked cell's pictures (the mistakes gallery's read "true ...")."""
    captions = [image.caption for element in at.get("image") for image in element.proto.imgs]
    return [c for c in captions if " · " in c]


def pick_cell(at: AppTest, true: str, predicted: str) -> AppTest:
    key = "run-click_:own"
    at.selectbox(key=f"cell_true_{key}").set_value(true).run()
    at.selectbox(key=f"cell_predicted_{key}").set_value(predicted).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_choosing_a_cell_lists_its_photos_with_the_keyboard_fallback(workspace: Path, tmp_path: Path) -> None:
    make_evaluated_run(workspace / "runs", tmp_path / "data")
    at = evaluate_page()
    assert "Click a cell of the matrix to see its photos" in texts(at)
    assert "→ predicted" not in "\n".join(m.value for m in at.markdown if m.value.startswith("**true"))
    pick_cell(at, "daisy", "roses")
    text = texts(at)
    assert "**true daisy → predicted roses: 2 photos**" in text
    assert "Photos 1–2 of 2, most confident first." in text
    assert cell_pictures(at) == ["51% · daisy-as-roses-1.png", "50% · daisy-as-roses-0.png"]
    pick_cell(at, "roses", "roses")
    text = texts(at)
    assert "**true roses → predicted roses: 4 photos** (correct)" in text
    assert "Photos 1–4 of 4, least confident first." in text
    assert cell_pictures(at) == [f"{50 + k}% · roses-as-roses-{k}.png" for k in range(4)]  # least confident first
    # Macro F1 and ECE are on the page for this report.
    assert "Macro F1" in [m.label for m in at.metric]
    assert "**Calibration: ECE" in text


def test_a_large_cell_is_shown_24_photos_at_a_time(workspace: Path, tmp_path: Path) -> None:
    make_evaluated_run(workspace / "runs", tmp_path / "data", matrix=[[2, 30, 0], [0, 3, 0], [0, 0, 3]])
    at = pick_cell(evaluate_page(), "daisy", "roses")
    assert "**true daisy → predicted roses: 30 photos**" in texts(at)
    assert "Photos 1–24 of 30, most confident first." in texts(at)
    shown = cell_pictures(at)
    assert len(shown) == 24 and shown[0] == "79% · daisy-as-roses-29.png"  # the most confident first
    at.number_input(key="cell_page_run-click_:own_0_1").set_value(2).run()
    assert "Photos 25–30 of 30, most confident first." in texts(at)
    assert cell_pictures(at) == [f"{50 + k}% · daisy-as-roses-{k}.png" for k in range(5, -1, -1)]


def test_a_report_without_predictions_says_how_to_get_them(workspace: Path, tmp_path: Path) -> None:
    run = make_evaluated_run(workspace / "runs", tmp_path / "data")
    old = run.read_evaluation()
    for key in ("predictions", "reliability", "ece", "macro_f1"):  # as written before issue 16.3
        del old[key]
    run.write_evaluation(old)
    at = pick_cell(evaluate_page(), "tulips", "roses")
    text = texts(at)
    assert "**true tulips → predicted roses: 1 photo**" in text
    assert "evaluate the run again to list them" in text and "predates calibration figures" in text
    assert [m.value for m in at.metric][2] == "n/a"  # macro F1


def fake_model(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str]) -> None:
    """evaluate_run with every step real but the model: each photo's class is predicted from its folder name
    through `answers` (true folder -> predicted class), at 90%."""
    seen: dict[str, list] = {}

    def fake_open_or_build(paths, size, cache_dir, threads=None, progress=None, **kwargs):
        seen["paths"] = [Path(p) for p in paths]
        if progress:
            progress(len(paths), len(paths))
        return np.zeros((len(paths), 2, 2, 3), np.uint8), False

    def fake_score(model, images, batch_size=32, tta=False, on_batch=None):
        probs = np.full((len(seen["paths"]), len(CLASSES)), 0.05)
        for i, path in enumerate(seen["paths"]):
            probs[i, CLASSES.index(answers.get(path.parent.name, path.parent.name))] = 0.9
        if on_batch:
            on_batch(len(probs))
        return probs

    monkeypatch.setattr("core.data.imagecache.open_or_build", fake_open_or_build)
    monkeypatch.setattr("core.results.evaluate.score_images", fake_score)
    monkeypatch.setattr("core.results.evaluate.load_run_model", lambda run: object())


def zipped_test_folder(answers: dict[str, int]) -> bytes:
    """A .zip of a labelled test folder as "Compress folder" makes it: field-photos/<class>/<n>.png."""
    import io
    import zipfile

    from test_app import png_bytes

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for c, (name, count) in enumerate(answers.items()):
            for i in range(count):
                archive.writestr(f"field-photos/{name}/{i}.png", png_bytes(100 * c + i, size=24))
    return buffer.getvalue()


def test_an_uploaded_test_zip_is_a_named_evaluation_beside_the_runs_own(workspace: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_evaluated_run(workspace / "runs", tmp_path / "data")
    own = run.file("evaluation.json").read_bytes()
    fake_model(monkeypatch, {"tulips": "roses"})
    at = evaluate_page()
    upload = zipped_test_folder({"daisy": 3, "tulips": 3})
    at.file_uploader(key="test_zip").set_value(("field-photos.zip", upload, "application/zip")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert run.file("evaluation.json").read_bytes() == own  # the run's own report is untouched
    [name] = run.named_evaluations()
    assert name.startswith("field-photos-") and (workspace / "datasets" / name).is_dir()
    assert at.selectbox(key="evaluation_shown").value == name
    assert [m.value for m in at.metric][0] == "50.0%"
    assert "Evaluated on field-photos, a labelled folder the run was not scored on" in texts(at)
    per_class = at.dataframe[0].value
    assert list(per_class.index) == CLASSES and list(per_class["support"]) == [3, 0, 3]
    # The cell list works on it too, without the cleaning buttons (a test set is not the run's dataset).
    at.selectbox(key=f"cell_true_run-click_{name}").set_value("tulips").run()
    at.selectbox(key=f"cell_predicted_run-click_{name}").set_value("roses").run()
    assert "**true tulips → predicted roses: 3 photos**" in texts(at) and len(cell_pictures(at)) == 3
    assert not [b for b in at.button if "relabel" in str(b.key) or "exclude" in str(b.key)]
    # Switch back to the run's own evaluation; the uploaded folder can be evaluated again from the workspace.
    at.selectbox(key="evaluation_shown").set_value(":own").run()
    assert [m.value for m in at.metric][0] == f"{10 / 14:.1%}"
    assert at.selectbox(key="test_dataset").value.name == name


def test_a_test_folder_with_a_class_the_run_does_not_know_is_refused_by_name(workspace: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_evaluated_run(workspace / "runs", tmp_path / "data")
    test_set = workspace / "datasets" / "with-cats-0123abcd"
    write_png(test_set / "daisy" / "0.png", seed=1)
    write_png(test_set / "cats" / "0.png", seed=2)
    (test_set / COMPLETE_MARKER).write_text("complete\n")
    fake_model(monkeypatch, {})
    at = evaluate_page()
    at.selectbox(key="test_dataset").set_value(test_set).run()
    at.button(key="evaluate_on_dataset").click().run()
    errors = [e.value for e in at.error]
    assert any("'cats'" in e and "not trained on" in e and "daisy, roses, tulips" in e for e in errors), errors
    assert not any(str(tmp_path) in e for e in errors)  # the server's folders are not named
    assert run.named_evaluations() == []


# ------------------------------------------------------------------------------------------------ Chromium
def test_clicking_a_confusion_matrix_cell_in_chromium_lists_its_photos(tmp_path: Path) -> None:
    """A real click on a real Plotly chart: an off-diagonal cell, then a diagonal one, each showing as many photos
    as the cell counts. Then a test folder picked in the browser with a class the run does not know is refused,
    naming it (no model is needed for that), and is not kept."""
    from helpers_ui import (CHROMIUM, folder_picker_input, keep_failure, launch_chromium, require, snapshot,
                            streamlit_server, wait_idle)

    require(Path(CHROMIUM).is_file(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    workspace = tmp_path / "workspace"
    make_evaluated_run(workspace / "runs", tmp_path / "data")
    expect.set_options(timeout=30_000)
    env = {"STUDIO_SHARED_WORKSPACE": "1", "STUDIO_DEMO_DIR": str(tmp_path / "no-demo")}
    started = time.perf_counter()
    with streamlit_server(workspace, tmp_path / "server.log", env=env) as url, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(f"{url}/evaluate?run=run-click")
            expect(page.get_by_text("Confusion matrix (counts)")).to_be_visible()
            wait_idle(page)
            chart = page.locator('[data-testid="stPlotlyChart"]').first
            plot_area = chart.locator("rect.nsewdrag").first

            def click_cell(row: int, column: int) -> None:
                box = plot_area.bounding_box()
                n = len(CLASSES)
                page.mouse.click(box["x"] + (column + 0.5) * box["width"] / n,
                                 box["y"] + (row + 0.5) * box["height"] / n)
                wait_idle(page)

            photos = page.locator('.st-key-cell_photos [data-testid="stImage"]')
            click_cell(0, 1)
            expect(page.get_by_text("true daisy → predicted roses: 2 photos")).to_be_visible()
            expect(photos).to_have_count(2)
            click_cell(1, 1)
            expect(page.get_by_text("true roses → predicted roses: 4 photos")).to_be_visible()
            expect(photos).to_have_count(4)
            click_cell(2, 1)  # the select boxes follow the click
            expect(page.get_by_text("true tulips → predicted roses: 1 photo", exact=True)).to_be_visible()
            expect(photos).to_have_count(1)
            snapshot(page, "evaluate-clicked-cell")
            with_cats = tmp_path / "pick" / "with-cats"
            for name in ("daisy", "cats"):
                for i in range(2):
                    write_png(with_cats / name / f"{i}.png", seed=300 + i, size=24)
            folder_picker_input(page).set_input_files(str(with_cats))
            expect(page.get_by_text("has a class the run was not trained on: 'cats'")).to_be_visible()
            assert not list((workspace / "datasets").glob("with-cats*"))  # the refused upload is not kept
            assert "Traceback" not in page.content()
        except Exception:
            keep_failure({"clickthrough-failure.png": page}, {"clickthrough-server.log": tmp_path / "server.log"})
            raise
        finally:
            browser.close()
    print(f"click-through in Chromium: {time.perf_counter() - started:.1f} s")
