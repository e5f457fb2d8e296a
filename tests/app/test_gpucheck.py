"""`make gpu-check` runs on a CPU too (issue 13.5): the same script a GPU machine will run, at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import REPO, require


def test_gpu_check_runs_on_the_cpu_and_writes_its_table(tmp_path: Path, small_dataset: Path) -> None:
    import importlib.util

    require(importlib.util.find_spec("jax") is not None, "the jax package (requirements-dev.txt)")
    out = tmp_path / "check"
    result = subprocess.run(["make", "-s", "gpu-check", f"GPU_CHECK_ARGS=--quick --data {small_dataset} --out {out}"],
                            cwd=REPO, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["backend"] == "jax" and report["doctor"]["devices"][0]["kind"] == "cpu"
    rows = report["throughput"]
    assert {r["precision"] for r in rows} == {"float32", "mixed_bfloat16"}  # bfloat16 on the CPU when asked
    assert all(r["synthetic"] > 0 and r["real"] > 0 and r["real_over_synthetic"] > 0 for r in rows)
    assert 0 <= report["finetune"]["accuracy"] <= 1 and report["finetune"]["epochs"] == 1
    table = (out / "gpu-check.md").read_text()
    assert "| efficientnet_lite0 | 64 | mixed_bfloat16 | 4 |" in table and "Fine-tune of the default recipe" in table
    assert "Training on CPU" in table
