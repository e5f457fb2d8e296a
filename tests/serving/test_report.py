"""The stakeholder report (issue 16.4): one self-contained HTML file that opens offline in Chromium with no request
leaving the file and no script error, under 25 MB, with every section, hostile class names shown as text, and a
sentence (not a crash) for whatever a run lacks."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import run_cli
from core import StudioError
from core.results.metrics import saved_macro_f1, wilson_interval
from core.serving.report import MAX_REPORT_BYTES, build_report
from core.base.runs import RunDir
from tests.helpers_ui import CHROMIUM, launch_chromium, require

# Class folder names are a visitor's: markup in them must be shown, never obeyed. Folder names cannot hold "/",
# so the fake run below tries "</script>" too.
HOSTILE = "roses <b>&amp; co"
INJECTING = "tulips <img src=x onerror=window.pwned=1>"
CLASSES = {"daisy": "daisy", "roses": HOSTILE, "tulips": INJECTING}
TINY = ["--image-size", "96", "--head-epochs", "1", "--finetune-epochs", "0", "--batch-size", "32"]
SECTIONS = ("Model card", "Intended use", "Training data", "Metrics", "Limits", "Date and versions", "Dataset",
            "Data health", "Training curves", "Evaluation", "Per class", "Most confident mistakes",
            "Exports and parity")


def copy_photos(flowers: Path, root: Path, train: int = 12, test: int = 6) -> None:
    """flowers-mini's first photos of three classes as train/ and test/ folders, under hostile class names."""
    for source, name in CLASSES.items():
        for split, source_split, count in (("train", "train", train), ("test", "val", test)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for photo in sorted((flowers / source_split / source).glob("*.jpg"))[:count]:
                shutil.copy(photo, folder / photo.name)


@pytest.fixture(scope="module")
def made(tmp_path_factory, flowers_dir) -> dict:
    """One real run (Lite0 head at 96 px on 54 photos), its data health check and a Keras export, then the report
    made through the CLI; with the seconds each step took."""
    from core.results.health import check_in_own_process

    root = tmp_path_factory.mktemp("report")
    copy_photos(flowers_dir, root / "data")
    models, seconds = root / "models", {}
    started = time.perf_counter()
    trained = run_cli("--models-dir", str(models), "train", "--data", str(root / "data"), *TINY)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = RunDir(trained.stdout.strip().splitlines()[-1])
    seconds["train"] = time.perf_counter() - started
    started = time.perf_counter()
    check_in_own_process(root / "data", models / ".cache")  # what the Data page's button does, saved where it saves
    exported = run_cli("export", str(run.path), "--format", "keras")
    assert exported.returncode == 0, exported.stderr[-3000:]
    seconds["health and export"] = time.perf_counter() - started
    started = time.perf_counter()
    made = run_cli("--models-dir", str(models), "report", run.run_id, "--out", str(root / "report.html"))
    seconds["report"] = time.perf_counter() - started
    assert made.returncode == 0, made.stderr[-3000:]
    assert made.stdout.strip() == str(root / "report.html")  # the written path, on stdout
    print(f"\nreport: {(root / 'report.html').stat().st_size / 1e6:.2f} MB; seconds {seconds}")
    return {"run": run, "path": root / "report.html", "html": (root / "report.html").read_text(encoding="utf-8"),
            "root": root}


def test_report_holds_every_section_and_its_numbers(made):
    text, run = made["html"], made["run"]
    evaluation = run.read_evaluation()
    assert len(text.encode()) < MAX_REPORT_BYTES
    for title in SECTIONS:
        assert f">{title}</h" in text, title
    assert f"{evaluation['images']} held-out photos (test split)" in text
    low, high = wilson_interval(sum(row[i] for i, row in enumerate(evaluation["confusion_matrix"])),
                                evaluation["images"])
    assert f"95% interval {low:.1%} to {high:.1%}, Wilson" in text
    assert "The test set is small (18 photos)" in text  # a limit stated with its size
    assert "EfficientNet-Lite0" in text and "at 96 px" in text and "tensorflow 2." in text
    assert "36 train, 0 validation, 18 test" in text
    assert "Confidence and calibration" in text and "Expected calibration error" in text
    assert "Classify answers \"unknown\" below" in text and "out-of-fold predictions" in text  # CV run: no val
    assert "Possible wrong labels" in text and "Not checked" not in text  # the saved health check is found
    assert "<td>keras</td>" in text and "<td>passed</td>" in text and "Not exported yet" not in text
    # the mistakes: photo and heatmap side by side, as inline JPEGs
    shown = min(len(evaluation["mistakes"]), 12)
    assert shown and text.count('alt="heatmap for ') == shown and "Heatmaps are not shown" not in text


def scripts(text: str) -> list[tuple[str, str]]:
    """(attributes, body) of every <script> element."""
    return re.findall(r"<script\b([^>]*)>(.*?)</script>", text, re.S | re.I)


def markup(text: str) -> str:
    """The document without its scripts (plotly.js holds URLs in strings that it never fetches offline)."""
    return re.sub(r"<script\b[^>]*>.*?</script>", "", text, flags=re.S | re.I)


def test_report_is_self_contained_and_names_are_text(made):
    text = made["html"]
    found = scripts(text)
    assert not any("src" in attributes for attributes, _ in found)
    assert len([body for _, body in found if len(body) > 100_000]) == 1  # plotly.js inlined once, the rest is JSON
    assert not re.search(r"<(link|iframe|object|embed|base)\b", markup(text), re.I)
    assert not re.search(r"\b(src|href|action)=\"(?!data:|#)", markup(text))
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert str(made["root"]) not in text  # no server path: the dataset is named by its folder's name only
    for name in (HOSTILE, INJECTING):
        assert name not in text
    assert "roses &lt;b&gt;&amp;amp; co" in text


def test_report_opens_offline_in_chromium(made):
    """Every request but the file itself aborted and recorded; no page error or console error; the charts drawn;
    the hostile class names shown literally and never obeyed."""
    require(Path(CHROMIUM).exists(), f"Chromium at {CHROMIUM}")
    require(importlib.util.find_spec("playwright") is not None, "the playwright package")
    from playwright.sync_api import sync_playwright

    outside, errors = [], []

    def only_the_file(route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_context(offline=True).new_page()
            page.on("pageerror", lambda err: errors.append(f"page error: {err}"))
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.route("**/*", only_the_file)
            page.goto(made["path"].as_uri())
            page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 5",
                                   timeout=20_000)
            drawn = page.evaluate("() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                                  ".filter(p => p.querySelector('.cartesianlayer .trace, .cartesianlayer image')).length")
            cells = page.evaluate("() => Array.from(document.querySelectorAll('td')).map(t => t.textContent)")
            injected = page.evaluate("() => [window.pwned, document.querySelectorAll('td b, td img, q b').length]")
            pictures = page.evaluate("() => Array.from(document.images).map(i => [i.src.slice(0, 11), i.complete,"
                                     " i.naturalWidth])")
        finally:
            browser.close()
    assert outside == [] and errors == []
    assert drawn == 5  # images per class, loss, accuracy, confusion matrix, reliability: each with its traces
    assert HOSTILE in cells and INJECTING in cells
    assert injected == [None, 0]
    assert pictures and all(src == "data:image/" and done and width > 0 for src, done, width in pictures)


def test_cli_report_bad_input_exits_2_naming_it(made, tmp_path):
    missing = run_cli("report", str(tmp_path / "no-such-run"))
    assert missing.returncode == 2 and "no-such-run" in missing.stderr and missing.stdout == ""
    nowhere = tmp_path / "gone" / "report.html"
    unwritable = run_cli("report", str(made["run"].path), "--out", str(nowhere))
    assert unwritable.returncode == 2 and str(nowhere) in unwritable.stderr and not nowhere.exists()


def test_report_download_section_builds_and_offers_the_file(made):
    """pages/_report.py in AppTest: the button builds the report in its own process, then a download is offered."""
    from streamlit.testing.v1 import AppTest

    def script(path: str) -> None:
        from core.base.runs import RunDir
        from pages._report import report_download

        report_download(RunDir(path))

    at = AppTest.from_function(script, args=(str(made["run"].path),), default_timeout=120).run()
    assert not at.exception and at.subheader[0].value == "Stakeholder report"
    assert not at.get("download_button")
    at.button(key="build_report").click().run()
    assert not at.exception and not at.error
    [download] = at.get("download_button")
    assert download.proto.label.startswith(f"Download report-{made['run'].run_id}.html (")


# ----------------------------------------------------------------------------------------- fake run folders
def fake_run(models: Path, classes: list[str], evaluation: dict | None = None, model: bool = True) -> RunDir:
    """A run folder as the trainer leaves it, without training: config, classes, split, optionally an evaluation
    and a model file (garbage bytes: the report must not need to load it unless it draws heatmaps)."""
    run = RunDir.create(models, "run-fake")
    run.write_config({"data": "/nowhere/photos", "backbone": "efficientnet_b0", "image_size": 224,
                      "resolved": {"image_size": 224}, "seed": 1})
    run.write_classes(classes)
    run.write_split({"root": "/nowhere/photos", "classes": classes, "seed": 1, "source": "random",
                     "train": [[f"{c}/{i}.jpg", k] for k, c in enumerate(classes) for i in range(3)],
                     "val": [[f"{c}/v.jpg", k] for k, c in enumerate(classes)], "test": []})
    run.set_status("failed", error="stopped early")
    if evaluation is not None:
        run.write_evaluation(evaluation)
    if model:
        run.file("model.keras").write_bytes(b"not a model")
    return run


def test_a_run_without_evaluation_exports_or_health_says_so(tmp_path):
    text = build_report(fake_run(tmp_path / "models", ["cats", "dogs"]), cache_dir=tmp_path / "cache")
    assert "no evaluation yet, so no score can be given" in text and "Not evaluated yet." in text
    assert "Not exported yet" in text and "Not checked" in text
    assert "No epoch lines were logged" in text
    assert len(scripts(text)) == 2  # plotly.js and the class-count chart
    assert "none: every photo under its folder's class" in text


def test_the_model_card_says_which_corrections_the_run_trained_with(tmp_path):
    from core.base.runs import OVERRIDES, write_json_atomic

    run = fake_run(tmp_path / "models", ["cats", "dogs"])
    entry = {"path": "cats/0.jpg", "action": "relabel", "was": "cats", "label": "dogs", "source": "health"}
    write_json_atomic(run.file(OVERRIDES), {"file": "/x/photos.overrides.json", "relabelled": [entry],
                                            "excluded": [{**entry, "path": "cats/1.jpg", "action": "exclude"}] * 2,
                                            "stale": [], "count": 3})
    text = build_report(run, cache_dir=tmp_path / "cache")
    assert "1 photo(s) relabelled and 2 excluded by the user before training" in text


def test_the_model_card_of_a_from_scratch_run_says_no_pretrained_weights(tmp_path):
    run = fake_run(tmp_path / "models", ["cats", "dogs"])
    run.write_config({**run.read_config(), "backbone": "baseline_cnn",
                      "resolved": {"image_size": 128, "recipe": "from scratch", "finetune_epochs": 0}})
    text = build_report(run, cache_dir=tmp_path / "cache")
    assert "It is a small CNN trained from random initialisation (no pretrained weights)" in text
    assert "ImageNet EfficientNet" not in text
    assert "every layer trained from random initialisation" in text
    transfer = build_report(fake_run(tmp_path / "other", ["cats", "dogs"]), cache_dir=tmp_path / "cache")
    assert "transfer learning from an ImageNet EfficientNet" in transfer


def test_moved_photos_and_a_broken_model_still_give_a_report_with_hostile_names_escaped(tmp_path):
    evil = "</script><script>window.pwned=1</script>"
    classes = ["cats", evil]
    evaluation = {"split": "val", "images": 2, "classes": classes, "accuracy": 0.5, "top_k": 1,
                  "top_k_accuracy": 0.5, "macro_auc": None, "confusion_matrix": [[1, 0], [1, 0]],
                  "per_class": [{"class": c, "precision": 0.5, "recall": 1.0 - k, "f1": 0.5, "support": 1}
                                for k, c in enumerate(classes)],
                  "most_confused": [{"true": evil, "predicted": "cats", "count": 1}],
                  "mistakes": [{"path": f"{evil}/v.jpg", "true": evil, "predicted": "cats", "confidence": 0.9,
                                "true_probability": 0.1}], "mistakes_total": 1, "root": "/nowhere/photos"}
    text = build_report(fake_run(tmp_path / "models", classes, evaluation), cache_dir=tmp_path / "cache")
    assert evil not in text and "window.pwned" in markup(text)  # present as escaped text only
    assert not any("window.pwned" in body and "\\u003c" not in body for _, body in scripts(text))  # plotly: \u003c
    assert "only the list is shown" in text and "1 of 1 mistakes shown" not in text
    assert "scored on the validation photos" in text
    assert "/nowhere" not in text  # the dataset by its folder name only


def test_a_run_with_no_model_and_no_evaluation_is_refused(tmp_path):
    run = fake_run(tmp_path / "models", ["cats", "dogs"], model=False)
    with pytest.raises(StudioError, match="run-fake has no model and no evaluation yet"):
        build_report(run)
    refused = run_cli("report", str(run.path), "--out", str(tmp_path / "r.html"))
    assert refused.returncode == 2 and "run-fake has no model and no evaluation" in refused.stderr
    assert not (tmp_path / "r.html").exists()


def test_a_damaged_evaluation_is_said_in_the_report(tmp_path):
    run = fake_run(tmp_path / "models", ["cats", "dogs"])
    run.file("evaluation.json").write_text(json.dumps({"classes": "cats"}))
    text = build_report(run, cache_dir=tmp_path / "cache")
    assert "evaluation.json is damaged" in text and "Not evaluated yet." in text


@pytest.mark.parametrize("correct,total,low,high", [(15, 18, 0.6078, 0.9416), (10, 10, 0.7225, 1.0),
                                                    (0, 10, 0.0, 0.2775), (0, 0, 0.0, 1.0)])
def test_wilson_interval_matches_published_values(correct, total, low, high):
    got = wilson_interval(correct, total)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_macro_f1_prefers_the_saved_value_and_skips_classes_without_photos():
    rows = [{"class": "a", "f1": 0.8, "support": 5}, {"class": "b", "f1": 0.4, "support": 5},
            {"class": "c", "f1": 0.0, "support": 0}]
    assert saved_macro_f1({"per_class": rows}) == pytest.approx(0.6)
    assert saved_macro_f1({"per_class": rows, "macro_f1": 0.55}) == 0.55
    assert saved_macro_f1({"per_class": []}) is None


# ----------------------------------------------------------------------------------------- a chosen comparison
def scored(run: RunDir, classes: list[str], right: list[bool]) -> RunDir:
    """Give a fake run an evaluation of len(right) validation photos with every photo's prediction (right where
    `right` says, else the next class), as core.results.evaluate writes it."""
    from core.results.metrics import confusion_matrix, per_class_scores

    n = len(classes)
    true = [i % n for i in range(len(right))]
    predicted = [t if ok else (t + 1) % n for t, ok in zip(true, right)]
    matrix = confusion_matrix(true, predicted, n)
    run.write_evaluation({"split": "val", "images": len(right), "classes": classes, "accuracy": sum(right) / len(right),
                          "top_k": 1, "top_k_accuracy": sum(right) / len(right), "macro_auc": None,
                          "confusion_matrix": matrix.tolist(), "per_class": per_class_scores(matrix, classes),
                          "mistakes": [], "root": "/nowhere/photos",
                          "predictions": {"paths": [f"photo-{i}.jpg" for i in range(len(right))], "true": true,
                                          "predicted": predicted, "confidence": [0.9] * len(right)}})
    return run


def compared_pair(models: Path, classes: list[str]) -> tuple[RunDir, RunDir]:
    """Two fake runs on the same 60 photos: this one right on 30 (run A), the other on 57 (run B), from scratch."""
    first = scored(fake_run(models, classes), classes, [i % 2 == 0 for i in range(60)])
    second = RunDir(shutil.copytree(first.path, models / "run-other"))
    config = second.read_config()
    second.write_config({**config, "backbone": "efficientnet_lite0", "run_name": "pair 1: pretrained"})
    return first, scored(second, classes, [i % 20 != 1 for i in range(60)])


def test_a_report_with_a_chosen_comparison_opens_with_its_verdict_differences_and_classes(tmp_path):
    classes = ["cats", HOSTILE, INJECTING]
    first, second = compared_pair(tmp_path / "models", classes)
    # the report of the better run (B, "this run") against the other (A): the differences read as what it gains
    text = build_report(second, cache_dir=tmp_path / "cache", compare_with=first)
    assert '<a href="#comparison">Comparison</a>' in text
    section = text[text.index('<h2 id="comparison">'):text.index('<h2 id="model-card">')]
    assert text.index('<h2 id="comparison">') < text.index('<h2 id="model-card">')  # right after the headline
    assert re.search(r'<p class="headline">“pair 1: pretrained”: 95\.0%, .*: 50\.0%: \+45\.0 points \(95% CI '
                     r"[\d.]+–[\d.]+\), not chance", section), section[:600]
    assert "B is this run, pair 1: pretrained (run-other)" in section
    assert "<td>Accuracy</td><td class=\"num\">50.0%</td><td class=\"num\">95.0%</td>" \
           "<td class=\"num\">+45.0 points</td>" in section
    assert "only A was right on 0 photos, only B on 27" in section and "The difference is real" in section
    assert "<h3>What differs</h3>" in section and "efficientnet_lite0" in section and "efficientnet_b0" in section
    assert "<h3>Recall per class</h3>" in section and "run-other" in section
    assert HOSTILE not in text and INJECTING not in text and "roses &lt;b&gt;&amp;amp; co" in section  # as text
    assert "--compare run-fake" in text  # the footer's command makes the same report


def test_a_comparison_that_cannot_be_made_refuses_the_report_with_the_reason(tmp_path):
    first, second = compared_pair(tmp_path / "models", ["cats", "dogs"])
    second.write_classes(["cats", "birds"])
    with pytest.raises(StudioError, match="cannot include a comparison with run run-other: .*different classes"):
        build_report(first, cache_dir=tmp_path / "cache", compare_with=second)
    out = tmp_path / "report.html"
    with pytest.raises(StudioError, match="Choose another run to compare with"):
        from core.serving.report import write_report

        write_report(first, out, compare_with=second, cache_dir=tmp_path / "cache")
    assert not out.exists()


def test_the_report_section_offers_a_comparison_and_builds_with_it(tmp_path, monkeypatch):
    """pages/_report.py: 'Include a comparison with' lists the other finished runs; the chosen one goes to the report
    process as --compare."""
    from streamlit.testing.v1 import AppTest

    from core.serving.report import build_in_own_process

    first, second = compared_pair(tmp_path / "models", ["cats", "dogs"])
    asked = []

    def fake_build(run, out, timeout=600, compare_with=None):
        asked.append(compare_with and compare_with.run_id)
        Path(out).write_text("<html>report</html>")
        return Path(out)

    monkeypatch.setattr("pages._report.build_in_own_process", fake_build)

    def script(path: str) -> None:
        from core.base.runs import RunDir
        from pages._report import report_download

        report_download(RunDir(path))

    at = AppTest.from_function(script, args=(str(first.path),), default_timeout=60).run()
    assert not at.exception
    choice = at.selectbox(key=f"report_compare_{first.run_id}")
    assert choice.options == ["no comparison", "run-other · pair 1: pretrained"]
    choice.set_value("run-other").run()
    at.button(key="build_report").click().run()
    assert not at.exception and not at.error
    assert asked == ["run-other"] and at.get("download_button")
    choice = at.selectbox(key=f"report_compare_{first.run_id}")
    choice.set_value(None).run()
    assert not at.get("download_button")  # the report built holds a comparison this choice no longer asks for

    commands = []

    def no_process(command, **options):
        commands.append(command)
        raise subprocess.TimeoutExpired(command, 1)

    monkeypatch.setattr("core.serving.report.subprocess.run", no_process)
    with pytest.raises(StudioError):
        build_in_own_process(first, tmp_path / "r.html", compare_with=second)
    assert commands[0][-2:] == ["--compare", str(second.path)]
