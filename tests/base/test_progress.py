"""Phases, progress, ETA and the one view of a run's state (core.base.progress, core.training.jobs.run_view)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.training import jobs
from core.base import progress
from core.base.config import TrainConfig
from core.base.runs import RunDir


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker_with(phases: list[progress.Phase], clock: FakeClock, stop=lambda: False):
    written: list[dict] = []
    tracker = progress.Tracker(phases, written.append, stop, clock=clock, throttle=0.0)
    return tracker, written


def test_measured_rates_replace_priors_and_scale_later_phases() -> None:
    clock = FakeClock()
    tracker, written = tracker_with([progress.Phase("features", 100),
                                     progress.Phase("evaluate", 50, scale_from="features", factor=2.0)], clock)
    tracker.start("features")
    clock.now += 10
    tracker.advance(50, force=True)  # 0.2 s per image measured
    assert tracker.phase_eta(tracker.phase("features"), clock.now) == pytest.approx(10.0)
    # evaluation has no rate of its own yet: twice the feature rate (mirrored views) for 50 images
    assert tracker.phase_eta(tracker.phase("evaluate"), clock.now) == pytest.approx(20.0)
    assert written[-1]["eta_seconds"] == pytest.approx(30.0)
    assert written[-1]["rate"] == pytest.approx(5.0)
    assert written[-1]["phase"] == "features" and written[-1]["done"] == 50 and written[-1]["total"] == 100
    assert [p["state"] for p in written[-1]["phases"]] == ["running", "pending"]


def test_fraction_is_time_based_and_never_goes_back() -> None:
    clock = FakeClock()
    tracker, written = tracker_with([progress.Phase("decode", 10, seconds_per_unit=1.0),
                                     progress.Phase("features", 10, seconds_per_unit=1.0)], clock)
    tracker.start("decode")
    clock.now += 5
    tracker.advance(5, force=True)
    assert written[-1]["fraction"] == pytest.approx(5 / 20, abs=0.01)
    clock.now += 1  # estimates hold: the bar moves like time spent / total
    tracker.advance(6, force=True)
    assert written[-1]["fraction"] == pytest.approx(6 / 20, abs=0.01)
    clock.now += 20  # decoding turned slow: the ETA grows, yet the bar neither goes back nor stands still
    tracker.advance(7, force=True)
    after_slowdown = written[-1]["fraction"]
    assert after_slowdown > 6 / 20
    clock.now += 1
    tracker.advance(7, force=True)
    assert written[-1]["fraction"] > after_slowdown
    tracker.finish("decode")
    tracker.start("features")
    assert written[-1]["phases"][0]["state"] == "done" and written[-1]["phase_index"] == 2


def test_the_bar_moves_inside_one_long_call() -> None:
    """The ticker's refresh rewrites the fraction as time passes, with no new work reported."""
    clock = FakeClock()
    tracker, written = tracker_with([progress.Phase("prepare", 1, unit="steps", seconds_per_unit=10.0),
                                     progress.Phase("decode", 10, seconds_per_unit=1.0)], clock)
    tracker.start("prepare")
    first = written[-1]["fraction"]
    clock.now += 4
    tracker.refresh()
    assert written[-1]["fraction"] > first


def test_writes_are_rate_limited_but_phase_changes_are_not() -> None:
    clock = FakeClock()
    tracker, written = tracker_with([progress.Phase("decode", 100), progress.Phase("features", 100)], clock)
    tracker.start("decode")
    for i in range(10):
        tracker.advance(i)
    assert len(written) == 1
    clock.now += progress.WRITE_INTERVAL + 0.01
    tracker.advance(11)
    tracker.start("features")
    assert len(written) == 3


def test_a_stop_request_is_seen_by_advance_and_remembered() -> None:
    clock = FakeClock()
    asked = {"stop": False}
    tracker, _ = tracker_with([progress.Phase("decode", 10)], clock, stop=lambda: asked["stop"])
    tracker.start("decode")
    assert tracker.advance(1) is True
    asked["stop"] = True
    assert tracker.advance(2) is False
    asked["stop"] = False
    assert tracker.stop_requested()


def test_caption_reads_like_a_sentence() -> None:
    status = {"phase_index": 3, "phase_count": 7, "phase_label": "Computing frozen-base features", "done": 640,
              "total": 2000, "unit": "images", "rate": 41.2, "eta_seconds": 65}
    assert progress.caption(status) == ("Step 3 of 7 · Computing frozen-base features · 640/2,000 images · "
                                        "41 images/s · about 1:05 left")
    assert progress.format_seconds(3725) == "1:02:05"


def test_the_plan_lists_every_phase_the_run_will_go_through() -> None:
    from core.training.train import training_plan

    config = TrainConfig(data="x", tta=True)
    names = [p.name for p in training_plan(config, {"train": 80, "val": 20, "test": 0}, finetune_epochs=2)]
    assert names == ["prepare", "decode", "features", "head_fit", "finetune", "save", "evaluate"]
    plan = {p.name: p for p in training_plan(config, {"train": 80, "val": 20, "test": 30}, 0)}
    assert "finetune" not in plan and plan["evaluate"].total == 30 and plan["decode"].total == 130
    assert plan["evaluate"].factor == 2.0  # mirrored test-time views cost two passes


# ------------------------------------------------------------------------------------------ one view of a run
def _run(tmp_path: Path, name: str, state: str, evaluation: dict | None = None, model: bool = True,
         stop: bool = False, **status) -> RunDir:
    run = RunDir.create(tmp_path, name)
    run.write_config({"data": "x", "head_epochs": 1})
    run.set_status(state, pid=os.getpid(), **status)
    if state in ("running", "queued"):
        run.file(jobs.JOB).write_text(json.dumps({"pid": os.getpid()}))
    if model:
        run.file("model.keras").write_bytes(b"model")
    if evaluation is not None:
        run.write_evaluation(evaluation)
    if stop:
        run.request_stop()
    return run


def _evaluation(accuracy: float, matrix: list[list[int]]) -> dict:
    return {"split": "val", "accuracy": accuracy, "classes": [f"c{i}" for i in range(len(matrix))],
            "confusion_matrix": matrix}


def test_a_model_is_usable_only_when_evaluated_and_better_than_the_majority_class(tmp_path: Path) -> None:
    good = _run(tmp_path, "good", "succeeded", _evaluation(0.8, [[5, 1], [1, 3]]))
    assert jobs.model_verdict(good).usable
    # 9 of 10 images are c0: 90% is what always answering c0 scores, so 90% is no model at all
    majority = _run(tmp_path, "majority", "succeeded", _evaluation(0.9, [[9, 0], [1, 0]]))
    verdict = jobs.model_verdict(majority)
    assert not verdict.usable and "'c0' (90.0%)" in verdict.reason
    unevaluated = _run(tmp_path, "unevaluated", "stopped")
    assert not jobs.model_verdict(unevaluated).usable and "not evaluated" in jobs.model_verdict(unevaluated).reason
    nothing = _run(tmp_path, "nothing", "stopped", model=False)
    assert "No model was saved" in jobs.model_verdict(nothing).reason


def test_run_view_states_agree_for_every_case(tmp_path: Path) -> None:
    running = _run(tmp_path, "running", "running", phase="features", fraction=0.3, phase_label="Computing",
                   done=10, total=100, unit="images")
    view = jobs.run_view(running)
    assert view.state == "running" and view.active and view.fraction == pytest.approx(0.05 + 0.95 * 0.3) and "10/100 images" in view.caption
    stopping = _run(tmp_path / "b", "stopping", "running", stop=True, phase="decode", fraction=0.1)
    assert jobs.run_view(stopping).state == "stopping" and jobs.run_view(stopping).active
    failed = _run(tmp_path / "c", "failed", "failed", model=False, error="No space left on device")
    assert jobs.run_view(failed).state == "failed" and "No space left" in jobs.run_view(failed).headline
    stopped = _run(tmp_path / "d", "stopped", "stopped", model=False, stopped_in="features")
    view = jobs.run_view(stopped)
    assert not view.active and "Stopped during 'Computing frozen-base features'" in view.headline
    assert "No model was saved" in view.headline
    done = _run(tmp_path / "e", "done", "succeeded", _evaluation(0.8, [[5, 1], [1, 3]]))
    assert jobs.run_view(done).headline.startswith("Training finished. Its model: 80.0%")
    # a trainer that vanished: never shown as running
    dead = _run(tmp_path / "f", "dead", "running")
    dead.file(jobs.JOB).write_text(json.dumps({"pid": 2**22 + 999}))
    assert jobs.run_view(dead).state == "failed"


def test_progress_of_a_queued_and_a_finished_run() -> None:
    fraction, caption = jobs.progress({"state": "queued", "message": "Starting the trainer", "created": 1.0})
    assert fraction == jobs.STARTING_SHARE and caption.startswith("Starting the trainer · ")
    assert jobs.progress({"state": "succeeded"}) == (1.0, "Finished")
    fraction, caption = jobs.progress({"state": "running", "phase": "evaluate", "fraction": 0.97,
                                       "phase_label": "Evaluating the best model", "done": 10, "total": 80,
                                       "unit": "images"})
    assert fraction == pytest.approx(0.05 + 0.95 * 0.97) and "10/80 images" in caption


def test_the_ticker_refreshes_while_time_passes_and_never_after_it_is_closed() -> None:
    import time as real_time

    written: list[dict] = []
    tracker = progress.Tracker([progress.Phase("prepare", 1, unit="steps")], written.append, throttle=0.0)
    tracker.start("prepare")
    ticks: list[int] = []
    with progress.Ticker(tracker, interval=0.05, on_tick=lambda: ticks.append(1)):
        waited = real_time.monotonic() + 60  # a wait for 4 beats, however loaded the machine; not a speed claim
        while len(ticks) < 4 and real_time.monotonic() < waited:
            real_time.sleep(0.01)
    count = len(written)
    assert count >= 4 and len(ticks) >= 4
    tracker.refresh()  # what a ticker beat in flight would do after close: dropped
    real_time.sleep(0.1)
    assert len(written) == count
    tracker.advance(1, force=True)  # the trainer itself still writes
    assert len(written) == count + 1


def test_a_phase_without_a_rate_counts_its_time_off_the_estimate() -> None:
    clock = FakeClock()
    tracker, _ = tracker_with([progress.Phase("prepare", 1, unit="steps", seconds_per_unit=6.0)], clock)
    tracker.start("prepare")
    clock.now += 4
    assert tracker.eta() == pytest.approx(2.0)
    clock.now += 10  # far past the prior: still a second left, never zero or negative while it runs
    assert tracker.eta() == pytest.approx(1.0)


def test_device_line_names_the_gpu_precision_and_xla() -> None:
    from core.network.device import DeviceInfo, device_line, precision_policy, use_xla

    h200 = DeviceInfo("jax", "gpu", "NVIDIA H200", 1, (9, 0))
    assert precision_policy("auto", h200) == "mixed_bfloat16" and use_xla("auto", h200)
    assert device_line(h200, "mixed_bfloat16", True) == "Training on NVIDIA H200 · bfloat16 · XLA"
    t4 = DeviceInfo("tensorflow", "gpu", "Tesla T4", 4, (7, 5))
    assert precision_policy("auto", t4) == "mixed_float16"
    assert device_line(t4, "mixed_float16", False) == "Training on 4 x Tesla T4 · float16"
    cpu = DeviceInfo("tensorflow", "cpu", "CPU only", 1)
    assert precision_policy("auto", cpu) == "float32" and not use_xla("auto", cpu)
    assert device_line(cpu, "float32", False).endswith("no GPU found — see README")


def test_the_rate_leaves_out_the_first_batch_and_its_one_time_costs() -> None:
    clock = FakeClock()
    tracker, _ = tracker_with([progress.Phase("features", 100)], clock)
    tracker.start("features")
    clock.now += 10  # the first batch of 10 images also traced and compiled the model
    tracker.advance(10)
    clock.now += 8  # then 1 s per 10 images
    tracker.advance(90)
    assert tracker.phase_eta(tracker.phase("features"), clock.now) == pytest.approx(1.0)


def test_the_batch_size_follows_the_device_memory_and_precision() -> None:
    from core.network.device import DeviceInfo, choose_batch_size, loader_workers

    cpu = DeviceInfo("tensorflow", "cpu", "CPU only", 1)
    assert choose_batch_size(cpu, 288, "float32") == 32 and loader_workers(cpu) == 1
    h200 = DeviceInfo("jax", "gpu", "NVIDIA H200", 1, (9, 0), memory_mb=143_771)
    assert choose_batch_size(h200, 224, "mixed_bfloat16") == 512  # capped
    t4 = DeviceInfo("tensorflow", "gpu", "Tesla T4", 1, (7, 5), memory_mb=15_360)
    assert choose_batch_size(t4, 224, "mixed_float16") == 256  # 0.6 * 15,360 / 22 = 418
    assert choose_batch_size(t4, 224, "float32") == 128  # / 40 = 230
    assert choose_batch_size(t4, 456, "mixed_float16") == 64  # 4.1x the pixels of 224
    assert choose_batch_size(DeviceInfo("tensorflow", "gpu", "GPU", 1), 224, "float32") == 64  # memory unknown
    assert loader_workers(t4) >= 2


def test_one_time_costs_inside_a_phase_are_left_out_of_its_rate() -> None:
    """Tracing the validation step at the first epoch's end is paid once; counted in the rate, it made the time
    left at epoch 2 of a small run twice the truth (tests/training/test_dynamics.py)."""
    clock = FakeClock()
    tracker, _ = tracker_with([progress.Phase("finetune", 100)], clock)
    tracker.start("finetune")
    clock.now += 5  # the first batch: compiling the training step
    tracker.advance(10, force=True)
    clock.now += 9  # 40 more images at 0.1 s, then 5 s tracing the validation step
    tracker.phase("finetune").one_time_seconds += 5.0
    tracker.advance(50, force=True)
    assert tracker.phase_eta(tracker.phase("finetune"), clock.now) == pytest.approx(50 * 0.1)
    tracker.start("finetune")  # a phase started again measures afresh
    assert tracker.phase("finetune").one_time_seconds == 0.0


def test_a_run_stopped_while_training_from_scratch_says_so_in_words(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path)
    run.set_status("stopped", stopped_in="scratch", finished=1.0)
    assert "Stopped during 'Training the whole network from scratch'." in jobs.run_view(run).headline
