"""The install plan: GPU wheels exactly when nvidia-smi lists a GPU (issue 13.1), tested with a fake nvidia-smi."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import REPO
from core.installplan import DEV, GPU, TRAIN, list_gpus, make_plan

H200_LINES = "GPU 0: NVIDIA H200 (UUID: GPU-0a1b)\nGPU 1: NVIDIA H200 (UUID: GPU-2c3d)\n"


def fake_nvidia_smi(folder: Path, output: str, code: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\nexit {code}\n")
    script.chmod(0o755)
    return folder


def make_install_plan(path_prefix: Path | None, **env: str) -> str:
    path = os.environ["PATH"] if path_prefix is None else f"{path_prefix}{os.pathsep}{os.environ['PATH']}"
    result = subprocess.run(["make", "-s", "install-plan"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PATH": path, **env}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_listed_gpu_adds_the_gpu_wheels_and_says_which(tmp_path: Path) -> None:
    out = make_install_plan(fake_nvidia_smi(tmp_path / "bin", H200_LINES))
    assert out.splitlines()[:2] == [TRAIN, GPU] and "gpu" in GPU
    assert "2 GPUs (2 x NVIDIA H200)" in out and "requirements-dev.txt" in out


def test_no_gpu_or_a_forced_cpu_plan_installs_no_gpu_wheels(tmp_path: Path) -> None:
    empty = make_install_plan(fake_nvidia_smi(tmp_path / "none", "No devices were found\n", code=6))
    assert GPU not in empty and "No GPU found (nvidia-smi failed: No devices were found)" in empty
    forced = make_install_plan(fake_nvidia_smi(tmp_path / "bin", H200_LINES), STUDIO_DEVICE="cpu")
    assert GPU not in forced and "STUDIO_DEVICE=cpu" in forced


def test_the_makefile_installs_what_the_plan_says() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "core.installplan train --pip-args" in makefile
    assert (REPO / GPU).read_text().count("tensorflow[and-cuda]==2.21.0") == 1
    train_pin = next(line for line in (REPO / TRAIN).read_text().splitlines() if line.startswith("tensorflow=="))
    assert train_pin == "tensorflow==2.21.0"  # the GPU file pins the same TensorFlow, with its CUDA extra


def test_plan_parsing_without_make() -> None:
    def answer(stdout: str, code: int = 0):
        return lambda *a, **k: subprocess.CompletedProcess(a, code, stdout, "")

    names, note = list_gpus(run=answer("GPU 0: Tesla T4 (UUID: GPU-x)\n"), which=lambda _: "/usr/bin/nvidia-smi")
    assert names == ["Tesla T4"] and note == ""
    assert list_gpus(which=lambda _: None) == ([], "nvidia-smi is not installed")
    plan = make_plan("dev", env={}, gpus=(["Tesla T4"], ""))
    assert plan.files == [TRAIN, GPU, DEV] and plan.pip_args() == f"-r {TRAIN} -r {GPU} -r {DEV}"
    assert make_plan("train", env={}, gpus=([], "nvidia-smi lists no GPU")).files == [TRAIN]
