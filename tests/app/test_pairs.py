"""Experiment pairs (core.training.pairs, issue 20): two configs that differ in one setting, queued in order, recorded
in both run folders, and compared only when both runs trained to the end; the Train page's one click and panel."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import require
from core import StudioError
from core.base.backbones import BACKBONES
from core.base.config import SCRATCH_DEFAULTS, TrainConfig
from core.base.runs import RunDir
from core.training import jobs, pairs
from test_app import APP, make_run, no_exceptions, pick_folder, texts, workspace  # noqa: F401 (workspace: fixture)

BASE = {"data": "/somewhere/flowers", "image_size": 96, "head_epochs": 4, "finetune_epochs": 1, "seed": 7,
        "val_fraction": 0.25, "augmentation": "light"}


def differing(first: TrainConfig, second: TrainConfig) -> dict[str, tuple]:
    a, b = first.to_dict(), second.to_dict()
    return {key: (a[key], b[key]) for key in a if a[key] != b[key]}


@pytest.mark.parametrize("kind", list(pairs.PAIR_KINDS))
def test_the_two_configs_differ_in_the_pairs_one_setting_only(kind: str) -> None:
    if kind == "transfer":
        require(pairs.BASELINE in BACKBONES, "the baseline_cnn backbone (core.base.backbones)")
    first, second = pairs.pair_configs(pairs.get_kind(kind), TrainConfig.from_dict(BASE))
    changed = differing(first, second)
    setting = pairs.PAIR_KINDS[kind].setting
    assert setting in changed
    # A backbone brings the settings it implies (a from-scratch one: no weights, images head); nothing else moves.
    allowed = {setting} | (set(SCRATCH_DEFAULTS) if setting == "backbone" else set())
    assert set(changed) <= allowed, changed
    for made in (first, second):  # same data, split and seed: the same photos in the same parts
        assert (made.data, made.seed, made.val_fraction, made.test_fraction) == ("/somewhere/flowers", 7, 0.25, 0.0)


def test_each_pair_kind_gives_each_run_its_value() -> None:
    config = TrainConfig.from_dict(BASE)
    first, second = pairs.pair_configs(pairs.get_kind("resolution"), config)
    assert (first.image_size, second.image_size) == (224, 288)
    first, second = pairs.pair_configs(pairs.get_kind("augmentation"), config)
    assert (first.augmentation, second.augmentation) == ("none", "light")
    # Nothing chosen on the Augment page: run B still augments, else both runs would be alike.
    unaugmented = TrainConfig.from_dict({**BASE, "augmentation": "none"})
    _, second = pairs.pair_configs(pairs.get_kind("augmentation"), unaugmented)
    assert second.augmentation == "light"
    if pairs.BASELINE in BACKBONES:
        first, second = pairs.pair_configs(pairs.get_kind("transfer"), config)
        # Run A goes without what the pair shows, run B with it: Compare's B minus A is what pretraining buys.
        assert (first.backbone, first.weights, second.backbone, second.weights) == \
            (pairs.BASELINE, None, "efficientnet_lite0", "imagenet")
        # Set by hand, the epochs and patience are kept for both; left at their default, each takes its own.
        hand = TrainConfig.from_dict({**BASE, "early_stopping_patience": 5})
        first, second = pairs.pair_configs(pairs.get_kind("transfer"), hand)
        assert (first.head_epochs, first.early_stopping_patience) == (4, 5) == \
            (second.head_epochs, second.early_stopping_patience)
        first, second = pairs.pair_configs(pairs.get_kind("transfer"), TrainConfig.from_dict({"data": "/x"}))
        assert first.head_epochs == SCRATCH_DEFAULTS["head_epochs"] and second.head_epochs == TrainConfig().head_epochs


def test_an_augmentation_pair_that_could_not_differ_is_refused() -> None:
    config = TrainConfig.from_dict({**BASE, "finetune_epochs": 0})  # head fitted on features of unaugmented photos
    with pytest.raises(StudioError, match="Fine-tune epochs"):
        pairs.pair_configs(pairs.get_kind("augmentation"), config)
    with pytest.raises(StudioError, match="Unknown experiment pair"):
        pairs.get_kind("colour vs grey")


def busy_slot(lock_dir: Path) -> None:
    """The machine's training slot taken by another session's run (a live process: this test's own)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    (lock_dir / jobs.SLOT).write_text(json.dumps({"run": str(lock_dir / "elsewhere" / "run-x"), "pid": os.getpid(),
                                                  "pid_start": jobs.process_start_ticks(os.getpid())}))


def test_a_pair_is_queued_in_order_and_recorded_in_both_runs(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    models, lock = tmp_path / "runs", tmp_path / "lock"
    busy_slot(lock)
    started: list[str] = []

    def fake_trainer(run: RunDir, models_dir: Path, python, lock_dir: Path) -> None:
        """Stands in for launching `python -m core train`: takes the slot, as the real launcher does."""
        started.append(run.run_id)
        (Path(lock_dir) / jobs.SLOT).write_text(json.dumps({"run": str(run.path.resolve())}))

    monkeypatch.setattr(jobs, "_start_trainer", fake_trainer)
    pair = pairs.start_pair("resolution", TrainConfig.from_dict(BASE), models, "mine", lock_dir=lock)
    assert pair.number == 1 and started == []
    assert [jobs.queue_place(r, lock).position for r in (pair.first, pair.second)] == [1, 2]
    assert pair.first.read_config()["run_name"] == "mine · pair 1: 224 px"
    assert pair.second.read_config()["run_name"] == "mine · pair 1: 288 px"
    assert (pair.first.read_config()["image_size"], pair.second.read_config()["image_size"]) == (224, 288)
    (found,) = pairs.find_pairs(models)
    assert found.run_ids() == pair.run_ids() and found.kind.name == "resolution"
    assert pairs.pair_state(found).state == "training"

    (lock / jobs.SLOT).unlink()  # the other session's run ends: A starts, B still waits behind it
    assert jobs.dispatch(lock).run_id == pair.first.run_id
    assert jobs.dispatch(lock) is None and started == [pair.first.run_id]
    pair.first.set_status("succeeded", finished=time.time())
    assert jobs.dispatch(lock).run_id == pair.second.run_id
    assert pairs.next_number(models) == 2


def test_a_pair_the_limits_refuse_starts_neither_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    monkeypatch.setenv("STUDIO_HOSTED_MAX_IMAGE_SIZE", "256")
    from core.training.hosting import training_limits

    if training_limits() is None:
        pytest.fail("STUDIO_HOSTED=1 should turn the hosted limits on")
    models = tmp_path / "runs"
    with pytest.raises(StudioError, match="288"):
        pairs.start_pair("resolution", TrainConfig.from_dict(BASE), models, lock_dir=tmp_path / "lock")
    assert not models.exists() or not list(models.iterdir())


def make_pair(runs_dir: Path, states: tuple[str, str], number: int = 1, kind: str = "augmentation") -> pairs.Pair:
    """Two run folders as the trainer leaves them, recorded as a pair the way start_pair records one."""
    first = make_run(runs_dir, f"run-p{number}-a", state=states[0], pid=os.getpid())
    time.sleep(0.01)
    second = make_run(runs_dir, f"run-p{number}-b", state=states[1], pid=os.getpid())
    labels = pairs.PAIR_KINDS[kind].labels
    for run, role, partner, label in ((first, "a", second, labels[0]), (second, "b", first, labels[1])):
        run.file(pairs.PAIR_FILE).write_text(json.dumps({"pair": number, "kind": kind, "role": role, "label": label,
                                                         "partner": partner.run_id, "created": time.time()}))
    return pairs.find_pair(runs_dir, number)


def test_only_a_pair_whose_runs_both_finished_can_be_compared(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    ready = make_pair(runs, ("succeeded", "succeeded"), 1)
    assert pairs.pair_state(ready).comparable
    assert pairs.newest_comparable(runs).number == 1
    failed = make_pair(runs, ("succeeded", "failed"), 2)
    state = pairs.pair_state(failed)
    assert state.state == "unfinished" and not state.comparable
    assert "run B (augmentation) failed" in state.sentence and "start the pair again" in state.sentence
    stopped = make_pair(runs, ("stopped", "succeeded"), 3)
    assert "run A (no augmentation) was stopped before it finished" in pairs.pair_state(stopped).sentence
    assert pairs.newest_comparable(runs).number == 1  # the newer pairs are unfinished: Compare opens on pair 1
    # A deleted half: the pair stays listed, and says so.
    import shutil

    shutil.rmtree(ready.second.path)
    state = pairs.pair_state(pairs.find_pair(runs, 1))
    assert not state.comparable and "run-p1-b, is no longer in this workspace" in state.sentence
    assert pairs.newest_comparable(runs) is None


def test_damaged_or_unrelated_pair_records_pair_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    pair = make_pair(runs, ("succeeded", "succeeded"))
    other = make_run(runs, "run-other")  # claims to be pair 1's run B, which run A does not say
    other.file(pairs.PAIR_FILE).write_text(json.dumps({"pair": 1, "kind": "augmentation", "role": "b",
                                                       "label": "x", "partner": "run-p1-a"}))
    (found,) = pairs.find_pairs(runs)
    assert found.run_ids() == ("run-p1-a", "run-p1-b")
    pair.second.file(pairs.PAIR_FILE).write_text("{not json")  # B's record damaged: A alone is no pair
    assert pairs.read_record(pair.second) is None
    assert pairs.find_pairs(runs) == []
    for bad in ([1, 2], {"pair": True, "kind": "augmentation", "role": "a", "label": "x", "partner": "r"},
                {"pair": 1, "kind": "augmentation", "role": "a", "label": "x", "partner": "../../etc"},
                {"pair": 1, "kind": "<b>", "role": "a", "label": "x", "partner": "run-p1-b"}):
        other.file(pairs.PAIR_FILE).write_text(json.dumps(bad))
        assert pairs.read_record(other) is None


def test_stop_the_pair_stops_the_run_training_and_empties_the_queue(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    models, lock = tmp_path / "runs", tmp_path / "lock"
    busy_slot(lock)
    pair = pairs.start_pair("resolution", TrainConfig.from_dict(BASE), models, lock_dir=lock)
    pairs.stop_pair(pair)
    for run in (pair.first, pair.second):
        assert run.read_status()["state"] == "stopped"
    assert not list((lock / jobs.QUEUE).glob("*.json"))
    assert "was stopped before it finished" in pairs.pair_state(pairs.find_pair(models, 1)).sentence


# ----------------------------------------------------------------------------------------- the Train page
def test_train_page_starts_a_pair_with_one_click(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_start(kind, config, models_dir, base_name="", lock_dir=None):
        calls.append((kind, config))
        return make_pair(Path(models_dir), ("running", "queued"), kind=kind)

    monkeypatch.setattr("core.training.pairs.start_pair", fake_start)
    at = AppTest.from_file(APP, default_timeout=30).run()
    pick_folder(at)
    at.switch_page("pages/train.py").run()
    no_exceptions(at)
    assert at.selectbox(key="pair_kind").value == ("transfer" if pairs.BASELINE in BACKBONES else "augmentation")
    at.selectbox(key="pair_kind").set_value("resolution").run()
    at.button(key="start_pair").click().run()
    no_exceptions(at)
    (kind, config), = calls
    assert kind == "resolution" and config.augmentation == "light" and config.seed == 42
    assert at.query_params["run"] in (["run-p1-a"], "run-p1-a")
    assert "Pair 1: 224 vs 288 px: run A (224 px) is training; run B (288 px) is starting." in texts(at)
    assert at.button(key="stop_pair") and at.button(key="start_pair").disabled
    at.button(key="stop_pair").click().run()
    assert RunDir(workspace / "runs" / "run-p1-a").stop_requested()


def test_train_page_offers_compare_when_both_finished_and_says_why_not_otherwise(workspace: Path) -> None:
    make_pair(workspace / "runs", ("succeeded", "failed"), 1)
    at = AppTest.from_file(APP, default_timeout=30).run()
    at.switch_page("pages/train.py").run()
    no_exceptions(at)
    assert "Pair 1: augmentation vs none cannot be compared: run B (augmentation) failed" in texts(at)
    assert not [b for b in at.button if b.key == "compare_pair"]
    make_pair(workspace / "runs", ("succeeded", "succeeded"), 2)
    at.run()
    assert "Pair 2: augmentation vs none: both runs finished" in texts(at)
    at.button(key="compare_pair").click().run()
    no_exceptions(at)
    assert at.query_params["pair"] in (["2"], "2")
    assert at.selectbox(key="compare_pair").value == 2


def test_train_page_trains_the_baseline_with_its_own_epochs_and_the_chosen_optimizer(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require(pairs.BASELINE in BACKBONES, "the baseline_cnn backbone (core.base.backbones)")
    launched = []

    def fake_start(config, models_dir, run_name="", lock_dir=None, after_own=False):
        launched.append(config)
        return make_run(Path(models_dir), "run-scratch", state="running", pid=os.getpid())

    monkeypatch.setattr("core.training.jobs.start_training", fake_start)
    at = AppTest.from_file(APP, default_timeout=30).run()
    pick_folder(at)
    at.switch_page("pages/train.py").run()
    at.selectbox(key="backbone").set_value(pairs.BASELINE).run()
    no_exceptions(at)
    assert "what pretrained weights buy" in texts(at) and "No fine-tuning" in texts(at)
    assert at.number_input(key="scratch_epochs").value == SCRATCH_DEFAULTS["head_epochs"]
    assert not [n for n in at.number_input if n.key == "finetune_epochs"]
    # nothing to fine-tune: no fine-tuning rate or stages, and the one rate is just "Learning rate"
    assert not [s for s in at.select_slider if s.key == "finetune_lr"] and not [s for s in at.slider if s.key == "unfreeze"]
    assert at.select_slider(key="head_lr").label == "Learning rate"
    at.selectbox(key="optimizer").set_value("sgd").run()
    next(b for b in at.button if b.label == "Start training").click().run()
    no_exceptions(at)
    (config,) = launched
    assert (config.backbone, config.weights, config.head_mode, config.finetune_epochs, config.head_epochs,
            config.optimizer) == (pairs.BASELINE, None, "images", 0, SCRATCH_DEFAULTS["head_epochs"], "sgd")
    assert config.early_stopping_patience == SCRATCH_DEFAULTS.get("early_stopping_patience", 3)
    # the image size followed the backbone: the baseline's 128 px, not the 288 px Lite0 had left on the slider
    assert config.image_size == BACKBONES[pairs.BASELINE].recipe_size == 128
    at.selectbox(key="backbone").set_value("efficientnet_lite0").run()
    assert at.select_slider(key="image_size").value == BACKBONES["efficientnet_lite0"].recipe_size
