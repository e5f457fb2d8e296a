"""`make gpu-check` (issues 13.5, 29.2): TensorFlow by default, JAX on request, every row kind at tiny sizes on a CPU,
and a budget that skips rows rather than overrun."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

import pytest
from conftest import REPO, require

from core import gpucheck
from core.gpucheck import FULL, QUICK, Plan, Row

ROW_KINDS = {(precision, batch) for precision in ("float32", "mixed_bfloat16") for batch in (4, 8)}


def run_make_quick(out: Path, data: Path, backend_env: str | None) -> subprocess.CompletedProcess:
    """`make gpu-check GPU_CHECK_ARGS=--quick ...` with KERAS_BACKEND as given (None: unset, the default)."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    if backend_env:
        env["KERAS_BACKEND"] = backend_env
    return subprocess.run(["make", "-s", "gpu-check", f"GPU_CHECK_ARGS=--quick --data {data} --out {out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=1200, env=env)


def assert_quick_report(out: Path, backend: str) -> str:
    """Every row kind measured (mixed and float32, two batches, synthetic and real), the fine-tune scored."""
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["backend"] == backend and report["doctor"]["backend"] == backend
    assert report["doctor"]["devices"][0]["kind"] == "cpu"
    rows = report["throughput"]
    assert {(r["precision"], r["batch"]) for r in rows} == ROW_KINDS  # bfloat16 on the CPU when mixed is asked
    for row in rows:
        assert row["backend"] == backend and not row["error"] and not row.get("skipped")
        assert row["synthetic"] > 0 and row["real"] > 0 and row["real_over_synthetic"] > 0
        assert row["real_first_s"] > 0 and row["real_warm_s"] > 0  # the cold pass kept apart from the warm one
    tune = report["finetune"]
    assert 0 <= tune["accuracy"] <= 1 and tune["epochs"] == QUICK.finetune_epochs and tune["seconds"] > 0
    assert tune["first_epoch_s"] > 0 and tune["later_epoch_s"] > 0
    assert report["seconds"] <= QUICK.budget_s
    table = (out / "gpu-check.md").read_text()
    for precision, batch in ROW_KINDS:
        for data in ("synthetic", "real"):
            assert f"| {backend} | CPU only | {precision} | off | efficientnet_lite0 | 64 | {batch} | {data}" in table
    assert "Fine-tune of the default recipe" in table and "Training on CPU" in table
    assert "kernels were being compiled" not in table  # said on a GPU only
    return table


def test_quick_check_runs_with_tensorflow_by_default(tmp_path: Path, small_dataset: Path) -> None:
    require(importlib.util.find_spec("tensorflow") is not None, "the tensorflow package (requirements-train.txt)")
    out = tmp_path / "check"
    result = run_make_quick(out, small_dataset, None)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = assert_quick_report(out, "tensorflow")
    assert table in result.stdout  # what it printed is what it wrote


def test_quick_check_runs_with_jax_when_asked(tmp_path: Path, small_dataset: Path) -> None:
    """The lent GPU machine's path: KERAS_BACKEND=jax, as its prepared command sets it (with --backend jax too)."""
    require(importlib.util.find_spec("jax") is not None, "the jax package (requirements-dev.txt)")
    out = tmp_path / "check"
    result = run_make_quick(out, small_dataset, "jax")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_quick_report(out, "jax")


@pytest.mark.parametrize("flag, environ, expected", [
    (None, {}, "tensorflow"),                             # what `make run` installs
    (None, {"KERAS_BACKEND": "jax"}, "jax"),              # a backend the caller set wins over the default
    ("jax", {}, "jax"),
    ("tensorflow", {"KERAS_BACKEND": "jax"}, "tensorflow"),  # the flag, the more explicit, wins over the environment
    (None, {"KERAS_BACKEND": ""}, "tensorflow"),
])
def test_backend_choice(flag: str | None, environ: dict[str, str], expected: str) -> None:
    assert gpucheck.resolve_backend(flag, environ) == expected
    assert gpucheck.child_env(expected, {"KERAS_BACKEND": "torch"})["KERAS_BACKEND"] == expected


def test_backend_other_than_tensorflow_or_jax_is_refused() -> None:
    with pytest.raises(ValueError, match="tensorflow or jax"):
        gpucheck.resolve_backend(None, {"KERAS_BACKEND": "torch"})


def test_main_passes_the_backend_to_every_process(tmp_path: Path, small_dataset: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--backend jax reaches the measured processes' KERAS_BACKEND; without it, tensorflow does."""
    seen: list[str] = []

    def runner(args: list[str], env: Mapping[str, str], timeout: float) -> tuple[dict[str, Any] | None, str]:
        seen.append(env["KERAS_BACKEND"])
        return fake_result(args), ""

    real_check = gpucheck.check
    monkeypatch.setattr(gpucheck, "backend_missing", lambda backend: "")
    monkeypatch.setattr(gpucheck, "check", lambda *a, **k: real_check(*a, **k, runner=runner))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    for argv, expected in ((["--backend", "jax"], "jax"), ([], "tensorflow")):
        seen.clear()
        assert gpucheck.main(argv + ["--quick", "--data", str(small_dataset), "--out", str(tmp_path)]) == 1
        assert seen and set(seen) == {expected}  # doctor, fine-tune and every row (fine-tune "fails": no run folder)
        assert json.loads((tmp_path / "gpu-check.json").read_text())["backend"] == expected


def test_a_missing_backend_is_said_up_front(tmp_path: Path, small_dataset: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert gpucheck.main(["--quick", "--data", str(small_dataset), "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "tensorflow backend is not installed" in error and "--backend jax" in error
    assert not (tmp_path / "gpu-check.json").exists()


def test_full_plan_has_every_row_kind() -> None:
    kinds = {(r.backbone, r.image_size, r.mixed_precision, r.batch) for r in FULL.rows}
    assert kinds == {(b, s, p, n) for b, s in (("efficientnet_b0", 224), ("efficientnet_lite0", 288))
                     for p in ("on", "off") for n in (128, 256)}
    assert FULL.budget_s <= 8 * 60 - 30 and FULL.finetune_max_s < FULL.budget_s
    assert {(r.mixed_precision, r.batch) for r in QUICK.rows} == {(p, n) for p in ("on", "off") for n in (4, 8)}


# ----------------------------------------------------------------------------------------- the budget, faked
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_result(args: list[str], accelerator: str = "cpu", first_s: float = 2.0) -> dict[str, Any]:
    """What `bench train` prints (rates over 64 images, the real loader's first pass `first_s`), or doctor's JSON."""
    if args[0] != "bench":
        return {"backend": "tensorflow", "devices": [{"kind": accelerator}], "summary": "Training on a test"}
    device = {"backend": "tensorflow", "accelerator": accelerator, "name": "NVIDIA H100" if accelerator == "gpu"
              else "CPU only", "compute_capability": [9, 0] if accelerator == "gpu" else None}
    return {"device": device, "precision": "mixed_bfloat16", "xla": accelerator == "gpu", "end_to_end_images": 64,
            "synthetic_finetune_images_per_s": 64.0, "real_finetune_images_per_s": 32.0, "real_over_synthetic": 0.5,
            "end_to_end_finetune_cold_images_per_s": 64 / first_s}


def test_deadline_skips_rows_instead_of_overrunning(tmp_path: Path) -> None:
    """Each process takes 100 s of a 450 s budget: doctor, fine-tune, two rows; the other six are skipped, and no
    process is given more time than the budget has left."""
    clock = FakeClock()
    timeouts: list[tuple[float, float]] = []

    def runner(args: list[str], env: Mapping[str, str], timeout: float) -> tuple[dict[str, Any] | None, str]:
        timeouts.append((timeout, 450 - (clock.now - 1000)))
        clock.now += 100
        return fake_result(args), ""

    report = gpucheck.check(tmp_path, FULL, "tensorflow", tmp_path / "runs", 300, runner=runner, clock=clock)
    rows = report["throughput"]
    assert len(rows) == len(FULL.rows)
    assert [bool(r.get("skipped")) for r in rows] == [False, False] + [True] * 6
    assert "skipped: 50 s left of the 450 s budget, a row takes ~100 s" in rows[2]["skipped"]
    assert all(timeout <= left for timeout, left in timeouts) and report["seconds"] <= FULL.budget_s
    table = gpucheck.markdown(report)
    assert table.count("| skipped: ") == 6 and "6 rows skipped when the budget ran out" in table


def test_a_hanging_row_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    """A row that would run forever is given only what is left, so the check ends on time."""
    clock = FakeClock()

    def runner(args: list[str], env: Mapping[str, str], timeout: float) -> tuple[dict[str, Any] | None, str]:
        if args[0] == "bench":  # hangs until killed: the timeout passes
            clock.now += timeout
            return None, f"timed out after {timeout:.0f} s"
        clock.now += 5
        return fake_result(args), ""

    plan = Plan("test", (Row("efficientnet_b0", 32, "on", 4),) * 3, steps=2, finetune_epochs=2, image_size=32,
                budget_s=100, row_s=10, finetune_max_s=50, doctor_seconds=1)
    report = gpucheck.check(tmp_path, plan, "tensorflow", tmp_path / "runs", 300, runner=runner, clock=clock)
    assert report["seconds"] == 100  # 10 s of doctor and fine-tune, then the first row ran into the deadline
    first, *rest = report["throughput"]
    assert first["error"] == "timed out after 90 s" and all(r.get("skipped") for r in rest)
    assert "failed: timed out after 90 s" in gpucheck.markdown(report)


# ----------------------------------------------------------------------------------------- what it prints
def gpu_report(first_epoch_s: float, first_pass_s: float, backend: str = "tensorflow") -> dict[str, Any]:
    row = {"backbone": "efficientnet_b0", "image_size": 224, "mixed_precision": "on", "batch": 256, "error": "",
           **gpucheck._bench_summary(fake_result(["bench"], "gpu", first_pass_s))}
    return {"backend": backend, "quick": False, "budget_s": 450, "seconds": 400, "kernel_cache": "/cache/cuda",
            "doctor": fake_result(["doctor"], "gpu"), "doctor_error": "", "throughput": [row],
            "finetune": {"accuracy": 0.9, "epochs": 3, "seconds": 120, "error": "", "precision": "mixed_bfloat16",
                         "xla": True, "batch": 64, "images": 80, "split": "val", "first_epoch_s": first_epoch_s,
                         "later_epoch_s": 5.0}}


def test_a_slow_first_epoch_on_a_gpu_is_said_to_be_compiling() -> None:
    table = gpucheck.markdown(gpu_report(first_epoch_s=90, first_pass_s=20))
    assert "| tensorflow | NVIDIA H100 | mixed_bfloat16 | on | efficientnet_b0 | 224 | 256 | synthetic | 64.0 |" in table
    assert "| real (0.50 of synthetic) | 32.0 | 20.00 | 2.00 |" in table
    assert "first fine-tune epoch 90.0 s, later epochs 5.0 s each" in table
    assert "First epoch slow because kernels were being compiled" in table
    assert "first epoch took 90 s against 5 s" in table and "10x its warm pass" in table
    assert "JIT-compiles its kernels from PTX" in table and "/cache/cuda" in table
    jax = gpucheck.markdown(gpu_report(first_epoch_s=90, first_pass_s=20, backend="jax"))
    assert "kernels were being compiled" in jax and "PTX" not in jax and "JAX_COMPILATION_CACHE_DIR" in jax


def test_no_compile_note_when_the_first_epoch_is_not_slow() -> None:
    assert gpucheck.compile_note(gpu_report(first_epoch_s=6, first_pass_s=4)) == ""
