"""Data health on planted problems: mislabelled photos, near-duplicate copies and train/test leaks found."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import run_cli
from core.results.health import SIMILAR

CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def altered_copy(source: Path, target: Path, seed: int) -> None:
    """What a near-duplicate looks like in the wild: resized, cropped by ~5% and recompressed."""
    rng = np.random.default_rng(seed)
    image = cv2.imread(str(source))
    height, width = image.shape[:2]
    top, left = int(height * rng.uniform(0.02, 0.05)), int(width * rng.uniform(0.02, 0.05))
    image = image[top:height - int(height * 0.03), left:width - int(width * 0.03)]
    scale = rng.uniform(0.6, 0.9)
    image = cv2.resize(image, (int(image.shape[1] * scale), int(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    target.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(target), image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 80))])


def planted_dataset(flowers: Path, root: Path) -> dict[str, set[str]]:
    """flowers-mini as train/ (its train photos) + test/ (its val photos), then 20 train photos moved to a wrong class,
    10 altered copies beside their originals in train/, 10 altered copies of train photos put into test/ (leaks).
    Returns the planted paths, relative to root."""
    truth: dict[str, set[str]] = {"mislabelled": set(), "duplicates": set(), "leaks": set()}
    for source_split, split in (("train", "train"), ("val", "test")):
        for photo in sorted((flowers / source_split).glob("*/*.jpg")):
            target = root / split / photo.parent.name / photo.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target)
    originals = {name: sorted((root / "train" / name).glob("*.jpg")) for name in CLASSES}  # before any move
    for index, name in enumerate(CLASSES):
        photos = originals[name]
        for photo in photos[:4]:  # 4 per class moved to the next class
            wrong = root / "train" / CLASSES[(index + 1) % len(CLASSES)] / photo.name
            shutil.move(photo, wrong)
            truth["mislabelled"].add(str(wrong.relative_to(root)))
        for k, photo in enumerate(photos[10:12]):  # 2 per class copied within train
            copy = photo.with_name(f"dup-{photo.name}")
            altered_copy(photo, copy, seed=100 * index + k)
            truth["duplicates"].add(str(copy.relative_to(root)))
        for k, photo in enumerate(photos[20:22]):  # 2 per class copied into test
            leak = root / "test" / name / f"leak-{photo.name}"
            altered_copy(photo, leak, seed=1000 + 100 * index + k)
            truth["leaks"].add(str(leak.relative_to(root)))
    return truth


@pytest.fixture(scope="module")
def planted(tmp_path_factory, flowers_dir):
    root = tmp_path_factory.mktemp("planted")
    truth = planted_dataset(flowers_dir, root / "data")
    result = run_cli("health", str(root / "data"), "--cache-dir", str(root / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    return truth, json.loads(result.stdout), root


def test_planted_label_errors_rank_among_the_top_suspects(planted):
    truth, report, _ = planted
    top = [s["path"] for s in report["suspect_labels"][:40]]
    found = truth["mislabelled"] & set(top)
    assert len(found) >= 14, f"only {len(found)} of 20 planted label errors in the top 40"  # the target
    # measured: all 20 listed with stages 6-7 + top; 19 of 20 (18 in the top 40) since stages 4-5 joined (issue 28)
    assert len(truth["mislabelled"] & {s["path"] for s in report["suspect_labels"]}) >= 19
    first = next(s for s in report["suspect_labels"] if s["path"] in truth["mislabelled"])
    true_class = CLASSES[(CLASSES.index(first["label"]) - 1) % len(CLASSES)]
    assert first["suggested"] == true_class and first["score"] > 0


def test_planted_near_duplicates_and_leaks_are_grouped_with_their_originals(planted):
    truth, report, _ = planted
    grouped = {path for group in report["near_duplicates"] for path in group["paths"]}
    assert len(truth["duplicates"] & grouped) >= 9
    leaked = {path for group in report["leaks"] for path in group["paths"]}
    assert len(truth["leaks"] & leaked) >= 9
    for group in report["leaks"]:
        assert {"train", "test"} <= set(group["splits"]) and group["similarity"] >= SIMILAR
    copy = next(p for p in truth["duplicates"] if p in grouped)
    group = next(g for g in report["near_duplicates"] if copy in g["paths"])
    assert copy.replace("dup-", "") in group["paths"]  # grouped with its own original


def test_report_has_imbalance_outliers_shapes_and_timings(planted):
    truth, report, _ = planted
    # no false alarms among flowers-mini's own photos: every group holds a planted copy
    planted_copies = truth["duplicates"] | truth["leaks"]
    assert all(set(group["paths"]) & planted_copies for group in report["near_duplicates"])
    assert report["photos"] == 420 and sum(report["class_counts"].values()) == 420
    assert report["imbalance"]["largest_over_smallest"] >= 1.0
    assert isinstance(report["outliers"], list) and isinstance(report["odd_shapes"], list)
    assert report["seconds"]["features"] > 0 and report["out_of_fold_accuracy"] > 0.6


def test_a_second_check_reuses_the_features(planted):
    _, report, root = planted
    again = run_cli("health", str(root / "data"), "--cache-dir", str(root / "cache"))
    assert again.returncode == 0
    second = json.loads(again.stdout)
    assert second["seconds"]["features"] == 0.0
    assert second["suspect_labels"] == report["suspect_labels"]


def test_tiny_and_extreme_photos_are_named(tmp_path, small_dataset):
    cv2.imwrite(str(small_dataset / "daisy" / "strip.png"), np.full((20, 300, 3), 128, np.uint8))
    from core.results.health import odd_shapes
    from core.data.datasets import scan

    found = {item["path"]: item["problem"] for item in odd_shapes(scan(small_dataset))}
    assert "tiny: 300x20 pixels" in found["daisy/strip.png"] and "extreme aspect ratio 15.0:1" in found["daisy/strip.png"]


def test_bench_health_reports_the_check_against_its_feature_pass(small_dataset):
    result = run_cli("bench", "health", "--data", str(small_dataset), "--size", "64")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["photos"] == 18 and report["feature_pass_seconds"] > 0
    assert report["health_over_feature_pass"] == pytest.approx(report["seconds"]["total"] /
                                                               report["feature_pass_seconds"], abs=0.02)


def test_the_data_page_checks_health_in_chromium(tmp_path):
    """A newcomer picks the sample, presses Check data health, and reads the counts and the suspect list."""
    from helpers_ui import CHROMIUM, flowers_mini, launch_chromium, require, snapshot, streamlit_server, wait_idle

    require(Path(CHROMIUM).is_file(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    require(flowers_mini() is not None, "flowers-mini is missing")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    with streamlit_server(workspace, tmp_path / "server.log") as url, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("button", name="Use flowers-mini").click()
        expect(page.get_by_text("Ready to train")).to_be_visible(timeout=90_000)
        page.get_by_role("button", name="Check data health").click()
        # the caption under the counts is drawn when the check has ended ("Train/test leaks" is also in the button's
        # help text, drawn before it, so waiting on that alone left 30 s for a check that can take longer)
        expect(page.get_by_text("out-of-fold accuracy")).to_be_visible(timeout=240_000)
        expect(page.get_by_text("Train/test leaks", exact=True)).to_be_visible()
        page.get_by_text("Suspect labels (").click()  # the expander: thumbnails and the table
        wait_idle(page)
        expect(page.get_by_text("→").first).to_be_visible()
        expect(page.get_by_role("button", name="Check again")).to_be_visible()
        snapshot(page, "data-health")
        # The cleaning loop: one click relabels a suspect as its suggested class, another excludes one, Undo
        # takes one back; the sample is shared, so the corrections live in this workspace, not beside it.
        page.get_by_role("button", name="Relabel as").first.click()
        expect(page.get_by_text("Your corrections (1 relabelled, 0 excluded)")).to_be_visible()
        page.get_by_role("button", name="Exclude").first.click()
        expect(page.get_by_text("Your corrections (1 relabelled, 1 excluded)")).to_be_visible()
        [file] = list(workspace.rglob("*.overrides.json"))
        entries = json.loads(file.read_text())["overrides"]
        assert sorted(e["action"] for e in entries) == ["exclude", "relabel"]
        assert {e["source"] for e in entries} == {"health"}
        assert not list(flowers_mini().parent.glob("*.overrides.json"))
        relabelled = next(e for e in entries if e["action"] == "relabel")
        # Undo the relabel from the corrections section (its first photo is the first correction made)
        page.get_by_role("button", name="Undo").first.click()
        expect(page.get_by_text("Your corrections (0 relabelled, 1 excluded)")).to_be_visible()
        assert [e["action"] for e in json.loads(file.read_text())["overrides"]] == ["exclude"]
        assert relabelled["path"] not in file.read_text()
        snapshot(page, "data-corrections")
        # The next run trains with them: Train says so, and the run's config names the file.
        page.get_by_role("link", name="Go to Train").click()
        expect(page.get_by_text("Your corrections from the Data page are used")).to_be_visible()
        page.get_by_role("button", name="Start training").click()
        expect(page.get_by_role("button", name="Stop")).to_be_visible(timeout=60_000)
        [config] = list(workspace.rglob("runs/*/config.json"))
        assert json.loads(config.read_text())["overrides"] == str(file)
        page.get_by_role("button", name="Stop").click()
        assert "Traceback" not in page.content()
        browser.close()


def test_same_layout_in_other_colours_is_not_a_near_duplicate(flowers_dir):
    """The colour test (SAME_COLOURS): generated flat scenes share features and an 8x8 layout without being copies
    (the shapes check set flagged 15 such pairs before it); a resized, recompressed copy keeps its colours."""
    from core.results.health import SAME_COLOURS, near_duplicate_groups, thumbnails

    photo = cv2.cvtColor(cv2.imread(str(sorted((flowers_dir / "train" / "roses").glob("*.jpg"))[0])),
                         cv2.COLOR_BGR2RGB)
    photo = cv2.resize(photo, (160, 160))
    small = cv2.resize(photo, (112, 112), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 60])
    copy = cv2.resize(cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), (160, 160))
    hsv = cv2.cvtColor(photo, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + 60) % 180  # the same scene, every hue turned a third of the way
    recoloured = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    layouts, colours = thumbnails(np.stack([photo, copy, recoloured]))
    assert np.minimum(colours[0], colours[1]).sum() >= SAME_COLOURS
    assert np.minimum(colours[0], colours[2]).sum() < SAME_COLOURS
    # Features and layouts alone would pair the recoloured scene with the photo; colours say no.
    features = np.asarray([[1.0, 0.0, 0.2], [0.0, 1.0, 0.2], [0.02, 1.0, 0.2], [1.0, 0.01, 0.2]], np.float32)
    same_layout = np.repeat(layouts[:1], 4, axis=0)
    pairs = near_duplicate_groups(features, same_layout, colours[[0, 0, 0, 0]])
    assert sorted(sorted(m) for m, _ in pairs) == [[0, 3], [1, 2]]
    pairs = near_duplicate_groups(features, same_layout, colours[[0, 2, 0, 0]])
    assert sorted(sorted(m) for m, _ in pairs) == [[0, 3]]


def test_a_burst_of_five_near_copies_is_one_group_of_five_and_distinct_photos_stay_out():
    """Each shot's nearest is another shot of the burst, so mutual best pairs would split it (two pairs and one
    left out, as on a real set: 107 groups, every one a pair); linking every near neighbour that passes the tests
    keeps it whole. A photo as close in features but laid out differently is not pulled in."""
    from core.results.health import near_duplicate_groups

    rng = np.random.default_rng(0)
    others = rng.normal(size=(40, 64))
    base = rng.normal(size=64)
    burst = np.stack([base + 0.05 * rng.normal(size=64) for _ in range(5)])
    lookalike = base + 0.05 * rng.normal(size=64)  # as close in features, other layout
    features = np.vstack([others, burst, lookalike[None]]).astype(np.float32)
    layouts = rng.normal(size=(len(features), 16))
    layouts[40:46] = layouts[40]  # the burst and the look-alike share a thumbnail layout...
    layouts[45] = -layouts[40]    # ...except the look-alike, laid out the other way round
    layouts /= np.linalg.norm(layouts, axis=1, keepdims=True)
    colours = np.full((len(features), 8), 1 / 8)
    groups = near_duplicate_groups(features, layouts, colours, block=7)  # blocks smaller than the burst
    assert [sorted(members) for members, _ in groups] == [[40, 41, 42, 43, 44]]
    assert groups[0][1] >= SIMILAR
