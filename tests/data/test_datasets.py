"""Dataset scanning, reporting and splitting on real photos plus hand-made bad files."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from conftest import flower_files, write_png
from core import StudioError
from core.data.datasets import resolve_root, scan, split_samples


def test_class_folders_are_scanned_with_sorted_classes(small_dataset: Path):
    dataset = scan(small_dataset)
    report = dataset.report
    assert report.layout == "class_folders"
    assert report.classes == ["daisy", "roses", "tulips"]
    assert report.usable_images == 18
    assert {c: row["total"] for c, row in report.counts.items()} == {"daisy": 6, "roses": 6, "tulips": 6}
    assert report.trainable and not report.errors


def test_split_folders_keep_their_split(flowers_dir: Path):
    dataset = scan(flowers_dir)
    assert dataset.report.layout == "split_folders"
    split = split_samples(dataset)
    assert len(split["train"]) == 320 and len(split["val"]) == 80 and not split["test"]
    assert Counter(s.label for s in split["val"]) == {i: 16 for i in range(5)}


def test_extensions_any_case_and_other_files_skipped(small_dataset: Path):
    src = next((small_dataset / "daisy").glob("*.jpg"))
    shutil.copy(src, small_dataset / "daisy" / "UPPER.JPG")
    write_png(small_dataset / "roses" / "shot.PnG", seed=3)
    (small_dataset / "roses" / "notes.txt").write_text("not an image")
    (small_dataset / "README.md").write_text("top-level file")
    report = scan(small_dataset).report
    assert report.counts["daisy"]["total"] == 6  # UPPER.JPG is a byte copy: found, and reported as duplicate
    assert report.counts["roses"]["total"] == 7
    skipped = {item["path"]: item["reason"] for item in report.skipped}
    assert "roses/notes.txt" in skipped and "README.md" in skipped


def test_unreadable_images_are_reported_and_left_out(small_dataset: Path):
    good = next((small_dataset / "daisy").glob("*.jpg"))
    data = good.read_bytes()
    (small_dataset / "daisy" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (small_dataset / "daisy" / "text.jpg").write_text("this is text, not a JPEG")
    (small_dataset / "roses" / "empty.png").write_bytes(b"")
    report = scan(small_dataset).report
    reasons = {item["path"]: item["reason"] for item in report.unreadable}
    assert set(reasons) == {"daisy/truncated.jpg", "daisy/text.jpg", "roses/empty.png"}
    assert "truncated" in reasons["daisy/truncated.jpg"] or "damaged" in reasons["daisy/truncated.jpg"]
    assert "not a readable image" in reasons["daisy/text.jpg"]
    assert report.counts["daisy"]["total"] == 6 and report.trainable
    assert any("unreadable" in w for w in report.warnings)


def test_png_named_jpg_is_read_correctly(small_dataset: Path):
    write_png(small_dataset / "tulips" / "really_a_png.jpg", seed=9)
    report = scan(small_dataset).report
    assert report.counts["tulips"]["total"] == 7 and not report.unreadable


def test_duplicates_within_and_across_classes(small_dataset: Path):
    daisy = sorted((small_dataset / "daisy").glob("*.jpg"))[0]
    shutil.copy(daisy, small_dataset / "daisy" / "copy_same_class.jpg")
    shutil.copy(daisy, small_dataset / "roses" / "copy_other_class.jpg")
    dataset = scan(small_dataset)
    groups = dataset.report.duplicates
    assert len(groups) == 1 and len(groups[0]) == 3
    # the extra copy in the same class is left out (it would leak into validation); the cross-class copy stays
    assert dataset.report.counts["daisy"]["total"] == 6
    assert dataset.report.counts["roses"]["total"] == 7
    assert any("more than one class" in w for w in dataset.report.warnings)


def test_empty_class_and_one_class_cannot_be_trained(tmp_path: Path, flowers_dir: Path):
    one = tmp_path / "one"
    (one / "daisy").mkdir(parents=True)
    for f in flower_files(flowers_dir, "daisy", 3):
        shutil.copy(f, one / "daisy")
    report = scan(one).report
    assert not report.trainable and "at least 2 classes" in report.errors[0]

    (one / "roses").mkdir()
    (one / "roses" / "broken.jpg").write_text("nope")
    report = scan(one).report
    assert not report.trainable
    assert report.empty_classes == ["roses"]
    assert any("'roses' has no usable image" in e for e in report.errors)


def test_class_with_one_image_is_warned_and_kept_in_train(small_dataset: Path):
    (small_dataset / "lonely").mkdir()
    write_png(small_dataset / "lonely" / "only.png", seed=1)
    dataset = scan(small_dataset)
    assert dataset.report.small_classes == ["lonely"]
    split = split_samples(dataset, val_fraction=0.2, seed=1)
    lonely = dataset.classes.index("lonely")
    assert [s.label for s in split["train"]].count(lonely) == 1
    assert lonely not in {s.label for s in split["val"]}


def test_missing_path_and_file_path_are_clear_errors(tmp_path: Path):
    with pytest.raises(StudioError, match="no such folder"):
        scan(tmp_path / "nowhere")
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(StudioError, match="is a file, not a folder"):
        scan(file)


def test_wrapper_folder_is_descended(tmp_path: Path, small_dataset: Path):
    wrapped = tmp_path / "upload" / "flowers"
    shutil.copytree(small_dataset, wrapped)
    assert resolve_root(tmp_path / "upload") == wrapped


def test_random_split_is_stratified_and_reproducible(small_dataset: Path):
    dataset = scan(small_dataset)
    first = split_samples(dataset, val_fraction=0.34, test_fraction=0.17, seed=7)
    again = split_samples(dataset, val_fraction=0.34, test_fraction=0.17, seed=7)
    other = split_samples(dataset, val_fraction=0.34, test_fraction=0.17, seed=8)
    assert [s.path for s in first["val"]] == [s.path for s in again["val"]]
    assert [s.path for s in first["val"]] != [s.path for s in other["val"]]
    assert Counter(s.label for s in first["val"]) == {0: 2, 1: 2, 2: 2}
    assert Counter(s.label for s in first["test"]) == {0: 1, 1: 1, 2: 1}
    all_paths = [s.path for part in first.values() for s in part]
    assert len(all_paths) == len(set(all_paths)) == 18


def test_split_folders_without_val_are_carved(tmp_path: Path, small_dataset: Path):
    root = tmp_path / "only_train"
    shutil.copytree(small_dataset, root / "train")
    split = split_samples(scan(root), val_fraction=0.5, seed=0)
    assert len(split["val"]) == 9 and len(split["train"]) == 9


def test_bad_fractions_are_rejected(small_dataset: Path):
    with pytest.raises(StudioError, match="fraction"):
        split_samples(scan(small_dataset), val_fraction=0.6, test_fraction=0.5)


def test_hidden_files_and_corrections_files_are_not_reported_as_skipped(tmp_path):
    """An unzipped upload's .studio-complete marker at the top (no wrapper folder) and an overrides file are
    neither photos nor strays: the report never lists them as "not inside a class folder"."""
    from conftest import write_png

    for cls in ("cat", "dog"):
        for i in range(2):
            write_png(tmp_path / "data" / cls / f"{i}.png", seed=i + (10 if cls == "dog" else 0))
    (tmp_path / "data" / ".studio-complete").write_text("")
    (tmp_path / "data" / "cat" / ".notes").write_text("x")
    (tmp_path / "data" / "inner.overrides.json").write_text("{}")
    report = scan(tmp_path / "data").report
    assert report.skipped == [] and report.usable_images == 4


def test_offline_mode_never_opens_a_connection(monkeypatch):
    """STUDIO_OFFLINE=1 (set for every server the tests start: tests/helpers_ui.py) answers "offline" without
    asking the network, so no served page in a test probes an outside host."""
    from core.data import samples

    def refuse(*args, **kwargs):
        raise AssertionError(f"a connection was opened: {args}")

    monkeypatch.setattr(samples.socket, "create_connection", refuse)
    monkeypatch.setenv("STUDIO_OFFLINE", "1")
    assert samples.is_online() is False
    monkeypatch.delenv("STUDIO_OFFLINE")
    with pytest.raises(AssertionError, match="a connection was opened"):
        samples.is_online()
