"""The benchmark commands run and report what they claim (no timing assertions: speed is measured, not tested)."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from conftest import run_cli
from core.base.config import PRESETS
from core.training.recipes import REFERENCE_OVERRIDES, benchmark_split, default_config, reference_config


def test_bench_loader_reports_both_contenders(small_dataset):
    result = run_cli("bench", "loader", "--data", str(small_dataset), "--image-size", "64", "--epochs", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["images"] == 15  # 18 photos, 20% held out for validation
    for key in ("baseline_images_per_s", "ours_images_per_s", "ours_warm_cache_images_per_s", "speedup"):
        assert report[key] > 0
    assert report["machine"]["cpu_cores"] >= 1


def test_bench_needs_data():
    result = run_cli("bench", "loader")
    assert result.returncode == 2 and "needs --data" in result.stderr  # bad input (core.cli.EXIT_BAD_INPUT)


def test_benchmark_split_is_the_folder_as_a_user_has_it_and_resplits_on_request(flowers_dir):
    split = benchmark_split(str(flowers_dir), seed=0)
    # flowers-mini has train/ and val/: its val/ photos are the test set; no validation is carved here (the
    # trainer carves one itself when its recipe needs it, as it would for a user)
    assert len(split["test"]) == 80 and all(s.path.startswith("val/") for s in split["test"])
    assert len(split["train"]) == 320 and split["val"] == []
    assert benchmark_split(str(flowers_dir), seed=1) == split  # the folder's split does not depend on the seed
    drawn = [benchmark_split(str(flowers_dir), seed=seed, resplit=True) for seed in (0, 1)]
    for resplit in drawn:
        assert len(resplit["test"]) == 80 and len(resplit["train"]) == 320
        assert Counter(s.label for s in resplit["test"]) == {i: 16 for i in range(5)}
    assert {s.path for s in drawn[0]["test"]} != {s.path for s in drawn[1]["test"]}
    assert any(s.path.startswith("train/") for s in drawn[0]["test"])


def test_reference_recipe_is_the_tutorial_recipe(flowers_dir):
    reference = reference_config(str(flowers_dir), "efficientnet_lite0", 0)
    assert (reference.head_epochs, reference.head_lr, reference.batch_size) == (2, 1e-2, 32)
    assert reference.finetune_epochs == 0 and reference.augmentation == "none" and reference.dropout == 0.2
    assert REFERENCE_OVERRIDES["tta"] is False
    # the tutorials run Lite0 at its native 224 px; the default recipe's own size is 288 px
    assert reference.resolved_image_size == 224
    default = default_config(str(flowers_dir), "efficientnet_lite0", 0)
    assert default.head_mode == "features" and default.resolved_image_size == 288


def test_bench_scale_reports_memory_disk_and_phases_per_size(tmp_path):
    result = run_cli("bench", "scale", "--sizes", "36", "72", "--work", str(tmp_path),
                     "--train-args", "--image-size", "64")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert [row["images"] for row in report["rows"]] == [36, 72]
    for row in report["rows"]:
        assert row["peak_rss_mb"] > 100 and row["cache_mb"] >= 0 and 0 <= row["accuracy"] <= 1
        assert set(row["phases"]) == {"prepare", "decode", "features", "head_fit", "save", "evaluate"}
        assert row["phases"]["decode"]["unit"] == "images" and row["phases"]["features"]["per_s"] > 0
    assert report["peak_rss_ratio_largest_over_smallest"] > 0
    assert (tmp_path / "data-72").is_dir()  # generated data is kept in --work for the next measurement


def test_generated_folders_have_the_asked_size_classes_and_imbalance(tmp_path):
    from core.data.datasets import scan
    from core.data.synthetic import make_dataset

    dataset = scan(make_dataset(tmp_path / "even", 60))
    assert dataset.report.usable_images == 60 and len(dataset.classes) == 6
    skewed = scan(make_dataset(tmp_path / "skewed", 120, imbalance=0.5))
    counts = [skewed.report.counts[c]["total"] for c in skewed.classes]
    assert sum(counts) == 120 and max(counts) > 4 * min(counts)


@pytest.mark.slow
def test_bench_train_reports_real_against_synthetic_steps(small_dataset):
    result = run_cli("bench", "train", "--backbone", "efficientnet_lite0", "--image-size", "64", "--batch-size", "4",
                     "--steps", "2", "--data", str(small_dataset), "--augmentation", "light")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["real_finetune_images_per_s"] > 0 and report["synthetic_finetune_images_per_s"] > 0
    assert report["real_over_synthetic"] == report["real_finetune_images_per_s"] / \
        report["synthetic_finetune_images_per_s"]
    synthetic = run_cli("bench", "train", "--backbone", "efficientnet_lite0", "--image-size", "64", "--batch-size",
                        "4", "--steps", "2", "--data", str(small_dataset), "--synthetic")
    assert synthetic.returncode == 0 and "real_over_synthetic" not in json.loads(synthetic.stdout)


def test_a_laid_out_split_is_read_back_by_the_trainer_as_exactly_that_split(tmp_path, flowers_dir):
    """Each benchmark run is a whole trainer process; the split reaches it as train/ val/ test/ folders of links."""
    from core.data.datasets import scan, split_samples
    from core.training.recipes import lay_out_split
    from core.training.train import split_for_recipe

    dataset = scan(flowers_dir)
    split = benchmark_split(str(flowers_dir), seed=3)
    folder = lay_out_split(dataset.root, dataset.classes, split, tmp_path / "split")
    laid_out = scan(folder)
    # the folders decide, whatever the seed: the default recipe learns from all of train/ and scores on test/
    again = split_for_recipe(laid_out, split_samples(laid_out, seed=99), needs_validation=False)
    assert not (tmp_path / "split" / "val").exists()  # nothing carved: the trainer decides
    for part in ("train", "test"):
        original = sorted((dataset.classes[s.label], (dataset.root / s.path).resolve()) for s in split[part])
        read_back = sorted((dataset.classes[s.label], (folder / s.path).resolve()) for s in again[part])
        assert original == read_back and original, part


@pytest.mark.slow
def test_bench_recipe_times_whole_processes_on_a_train_test_folder(tmp_path, flowers_dir):
    """Any folder with train/ and test/ works; both recipes run as `python -m core train` processes."""
    data = tmp_path / "data"
    for part, source, count in (("train", "train", 10), ("test", "val", 4)):
        for cls in ("daisy", "roses", "tulips"):
            (data / part / cls).mkdir(parents=True)
            for f in sorted((flowers_dir / source / cls).iterdir())[:count]:
                shutil.copy(f, data / part / cls / f.name)
    result = run_cli("bench", "recipe", "--data", str(data), "--seeds", "0", "--preset", "best", "--set",
                     "image_size=96", "--set", "finetune_epochs=1", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for name in ("reference", "default"):
        (row,) = report["runs"][name]
        assert row["split"] == "test" and row["test_images"] == 12 and row["seconds"] > 1
        assert 0 <= row["test_accuracy"] <= 1
        assert row["estimated_seconds"] > 0 and row["trainer_seconds"] <= row["seconds"]  # kept by the run
    assert report["time_ratio_default_over_reference"] > 0
    # --preset best: the preset's settings, under the ones set by hand
    assert report["overrides"]["preset"] == "best" and report["default_settings"]["finetune_epochs"] == 1
    assert report["default_settings"]["unfreeze_stages"] == PRESETS["best"]["unfreeze_stages"]


def test_bench_features_scores_every_candidate_over_resplits_and_caches_the_features(tmp_path, small_dataset):
    from core.training.featurestudy import CANDIDATES

    args = ("bench", "features", "--data", str(small_dataset), "--size", "64", "--resplits", "2",
            "--work", str(tmp_path / "work"))
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["photos"] == 18 and report["resplits"] == 2 and report["image_size"] == 64
    assert set(report["results"]) == {f"{name} (cv)" for name in CANDIDATES} | {"s6+top (holdout)"}
    for row in report["results"].values():
        assert len(row["per_split"]) == 2 and all(0 <= a <= 1 for a in row["per_split"])
        assert 0 <= row["mean_tta"] <= 1 and row["wins_vs_previous_default"] <= 2
    (cached,) = (tmp_path / "work").glob("features-*.npz")
    again = json.loads(run_cli(*args).stdout)
    assert again["feature_seconds"] == report["feature_seconds"]  # read back, not recomputed
    assert again["results"] == report["results"]  # same seeds, same re-splits, same answers


def test_bench_load_refuses_bad_input_with_one_line_naming_the_flag(tmp_path):
    """Each refusal comes before any server or browser starts (no timing: speed is measured, not tested)."""
    from core.loadbench import DEFAULT_PHOTOS, photos_per_visitor
    from core.cli import build_parser

    (tmp_path / "empty").mkdir()
    cases = {("--parts", "burst,nope"): "--parts: unknown part 'nope'",
             ("--profile", "serve", "--parts", "training"): "--parts training needs --profile train",
             ("--profile", "serve"): "--profile serve needs --venv",
             ("--profile", "train", "--demo", str(tmp_path / "empty")): "--demo:",
             ("--profile", "train", "--demo", str(tmp_path), "--visitors", "0"): "--visitors takes 1 to 64",
             ("--profile", "train", "--demo", str(tmp_path), "--photos", "65"): "--photos takes 1 to 64",
             ("--profile", "train", "--demo", str(tmp_path), "--minutes", "0"): "--minutes takes at least 0.1",
             ("--profile", "train", "--venv", str(tmp_path)): "--venv is for --profile serve"}
    for flags, reason in cases.items():
        result = run_cli("bench", "load", *flags)
        assert result.returncode == 2, (flags, result.stderr[-500:])
        assert reason in result.stderr and len(result.stderr.strip().splitlines()) == 1, (flags, result.stderr)
    # --photos is shared with bench serve (default 10 there); bench load's own default is 8 unless it is typed
    assert photos_per_visitor(build_parser().parse_args(["bench", "load"])) == DEFAULT_PHOTOS == 8
    assert photos_per_visitor(build_parser().parse_args(["bench", "load", "--photos", "10"])) == 10
    assert build_parser().parse_args(["bench", "serve"]).photos is None  # bench serve then takes its 10
