"""The cleaning loop (core.data.overrides): corrections beside the dataset, applied on scan, recorded by the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core import StudioError
from core.data import overrides as ov
from core.data.datasets import scan, split_samples
from core.data.ingest import fingerprint


@pytest.fixture
def dataset_dir(tmp_path: Path, small_dataset: Path) -> Path:
    """3 classes x 6 real photos, inside a wrapper folder as an unzipped upload often is."""
    root = tmp_path / "upload" / "flowers"
    shutil.copytree(small_dataset, root)
    return root


def test_relabel_exclude_undo_change_the_scan_not_the_files(dataset_dir: Path) -> None:
    dataset = scan(dataset_dir)
    files_before = sorted(p.relative_to(dataset_dir) for p in dataset_dir.rglob("*"))
    file = ov.file_beside(dataset.root)
    daisy = [s.path for s in dataset.samples if dataset.classes[s.label] == "daisy"]
    ov.relabel(file, dataset, daisy[0], "roses", source="health")
    ov.exclude(file, dataset, daisy[1])
    cleaned, applied = ov.apply_overrides(dataset, file)
    labels = {s.path: cleaned.classes[s.label] for s in cleaned.samples}
    assert labels[daisy[0]] == "roses" and daisy[1] not in labels
    assert cleaned.report.counts["daisy"]["total"] == 4 and cleaned.report.counts["roses"]["total"] == 7
    assert cleaned.report.usable_images == len(dataset.samples) - 1
    assert [o.path for o in applied.relabelled] == [daisy[0]] and applied.relabelled[0].source == "health"
    assert [o.path for o in applied.excluded] == [daisy[1]]
    assert any("1 relabelled and 1 excluded" in w for w in cleaned.report.warnings)
    # The photos never moved, and a scan of the folder does not see the corrections file.
    assert sorted(p.relative_to(dataset_dir) for p in dataset_dir.rglob("*")) == files_before
    assert file.parent == dataset_dir.parent and file.is_file()
    assert ov.undo(file, daisy[0], dataset.root) is True
    cleaned, applied = ov.apply_overrides(dataset, file)
    assert {s.path: cleaned.classes[s.label] for s in cleaned.samples}[daisy[0]] == "daisy"
    assert applied.count == 1
    assert ov.undo(file, daisy[1], dataset.root) is True
    assert not file.exists()  # no entries left: no file
    assert ov.undo(file, daisy[1], dataset.root) is False


def test_relabelling_back_to_the_folder_class_drops_the_entry(dataset_dir: Path) -> None:
    dataset = scan(dataset_dir)
    file = ov.file_beside(dataset.root)
    path = dataset.samples[0].path
    ov.relabel(file, dataset, path, "tulips")
    cleaned, _ = ov.apply_overrides(dataset, file)
    ov.relabel(file, cleaned, path, "daisy")  # the corrected dataset still knows the folder's class
    assert ov.read_overrides(file) == {}


def test_refusals_name_the_photo_or_the_file(dataset_dir: Path) -> None:
    dataset = scan(dataset_dir)
    file = ov.file_beside(dataset.root)
    with pytest.raises(StudioError, match="'sunflowers' is not one of the dataset's classes"):
        ov.relabel(file, dataset, dataset.samples[0].path, "sunflowers")
    with pytest.raises(StudioError, match="daisy/nope.jpg: no such photo"):
        ov.exclude(file, dataset, "daisy/nope.jpg")
    file.write_text("{not json")
    with pytest.raises(StudioError, match=f"{file.name}: the overrides file cannot be read"):
        ov.apply_overrides(dataset, file)
    file.write_text(json.dumps({"overrides": [{"path": "x.jpg", "action": "rename"}]}))
    with pytest.raises(StudioError, match="entry 1 is not a relabel or exclude entry"):
        ov.read_overrides(file)


def test_entries_that_no_longer_fit_are_kept_but_not_applied(dataset_dir: Path) -> None:
    dataset = scan(dataset_dir)
    file = ov.file_beside(dataset.root)
    gone, kept = dataset.samples[0].path, dataset.samples[1].path
    ov.exclude(file, dataset, gone)
    ov.relabel(file, dataset, kept, "roses")
    (dataset_dir / gone).unlink()
    shutil.rmtree(dataset_dir / "roses")
    rescanned = scan(dataset_dir)
    cleaned, applied = ov.apply_overrides(rescanned, file)
    reasons = {s["path"]: s["reason"] for s in applied.stale}
    assert "no longer in the dataset" in reasons[gone] and "class 'roses' is no longer" in reasons[kept]
    assert applied.count == 0 and len(ov.read_overrides(file)) == 2  # nothing is thrown away


def test_emptying_a_class_blocks_training_with_a_sentence(dataset_dir: Path) -> None:
    dataset = scan(dataset_dir)
    file = ov.file_beside(dataset.root)
    for sample in [s for s in dataset.samples if dataset.classes[s.label] == "tulips"]:
        ov.exclude(file, dataset, sample.path)
    cleaned, _ = ov.apply_overrides(dataset, file)
    assert not cleaned.report.trainable
    assert any("Class 'tulips' has no photo left after the overrides" in e for e in cleaned.report.errors)


def test_the_file_beside_never_changes_what_a_scan_or_a_fingerprint_sees(dataset_dir: Path) -> None:
    upload = dataset_dir.parent  # upload/flowers/<classes>: the scan descends through the wrapper
    before = fingerprint(upload)
    dataset = scan(upload)
    assert dataset.root == dataset_dir
    ov.exclude(ov.file_beside(dataset.root), dataset, dataset.samples[0].path)
    assert (upload / "flowers.overrides.json").is_file()
    again = scan(upload)
    assert again.root == dataset_dir and not again.report.skipped  # still descends; the file is not "skipped"
    assert fingerprint(upload) == before  # a correction does not make the app scan every photo again


def test_a_store_file_is_per_folder_location(tmp_path: Path) -> None:
    a, b = tmp_path / "one" / "flowers", tmp_path / "two" / "flowers"
    assert ov.file_in_store(a, tmp_path / "store") != ov.file_in_store(b, tmp_path / "store")
    assert ov.file_in_store(a, tmp_path / "store").parent == tmp_path / "store"


def test_resolve_file_auto_none_and_a_path(dataset_dir: Path) -> None:
    assert ov.resolve_file("auto", dataset_dir) is None
    dataset = scan(dataset_dir)
    ov.exclude(ov.file_beside(dataset_dir), dataset, dataset.samples[0].path)
    assert ov.resolve_file("auto", dataset_dir) == ov.file_beside(dataset_dir)
    assert ov.resolve_file(None, dataset_dir) is None and ov.resolve_file("none", dataset_dir) is None
    with pytest.raises(StudioError, match="no such overrides file"):
        ov.resolve_file(str(dataset_dir / "typo.json"), dataset_dir)


def test_a_run_trains_with_the_corrections_and_records_them(dataset_dir: Path, tmp_path: Path) -> None:
    from core.base.config import TrainConfig
    from core.training.train import prepare_dataset, run_training

    dataset = scan(dataset_dir)
    file = ov.file_beside(dataset.root)
    daisy = [s.path for s in dataset.samples if dataset.classes[s.label] == "daisy"]
    ov.relabel(file, dataset, daisy[0], "tulips", source="mistakes")
    ov.exclude(file, dataset, daisy[1])
    config = TrainConfig(data=str(dataset_dir), image_size=64, seed=3)
    _, split, applied = prepare_dataset(config)
    in_split = {s.path: s.label for part in split.values() for s in part}
    assert in_split[daisy[0]] == dataset.classes.index("tulips") and daisy[1] not in in_split
    assert applied.file == str(file)
    # Without the file ("none"), the same seed splits the folders as they are.
    _, plain, _ = prepare_dataset(TrainConfig(data=str(dataset_dir), image_size=64, seed=3, overrides=None))
    assert daisy[1] in {s.path for part in plain.values() for s in part}
    assert plain == split_samples(dataset, 0.2, 0.0, 3)

    run = run_training(config, models_dir=tmp_path / "models")
    used = run.read_overrides_used()
    assert used["count"] == 2 and used["file"] == str(file)
    assert [e["path"] for e in used["relabelled"]] == [daisy[0]] and used["relabelled"][0]["label"] == "tulips"
    assert [e["path"] for e in used["excluded"]] == [daisy[1]]
    saved = run.read_split()
    labels = {p: label for part in ("train", "val", "test") for p, label in saved[part]}
    assert labels[daisy[0]] == saved["classes"].index("tulips") and daisy[1] not in labels
    # Undoing afterwards leaves the run's record as it trained.
    ov.undo(file, daisy[0], dataset.root)
    assert run.read_overrides_used()["count"] == 2


def test_cli_train_and_health_take_the_overrides_flag(dataset_dir: Path, tmp_path: Path) -> None:
    """--overrides none trains on the folders as they are; health judges a relabelled photo under its new class
    and leaves an excluded one out (both from the feature pass it cached the first time)."""
    import json as _json

    from conftest import run_cli

    dataset = scan(dataset_dir)
    file = tmp_path / "elsewhere.overrides.json"
    daisy = [s.path for s in dataset.samples if dataset.classes[s.label] == "daisy"]
    ov.relabel(file, dataset, daisy[0], "roses")
    ov.exclude(file, dataset, daisy[1])
    cache = tmp_path / "cache"
    common = ["health", str(dataset_dir), "--image-size", "64", "--cache-dir", str(cache)]
    plain = run_cli(*common, "--overrides", "none")
    assert plain.returncode == 0, plain.stderr
    corrected = run_cli(*common, "--overrides", str(file))
    assert corrected.returncode == 0, corrected.stderr
    plain, corrected = _json.loads(plain.stdout), _json.loads(corrected.stdout)
    assert plain["photos"] == len(dataset.samples) and plain["corrections"] == 0
    assert corrected["photos"] == len(dataset.samples) - 1 and corrected["corrections"] == 2
    assert corrected["class_counts"]["roses"] == plain["class_counts"]["roses"] + 1
    assert corrected["seconds"].get("features", 0) == 0  # the first check's features were reused
    missing = run_cli("train", "--data", str(dataset_dir), "--overrides", str(tmp_path / "typo.json"),
                      env={"STUDIO_MODELS_DIR": str(tmp_path / "models")})
    assert missing.returncode != 0 and "typo.json: no such overrides file" in missing.stderr
