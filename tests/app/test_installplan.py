"""The install plan: GPU wheels exactly when nvidia-smi lists a GPU (issue 13.1), tested with a fake nvidia-smi;
recorded in the venv and re-planned when it changes, the CUDA wheels pinned, JAX's CUDA wheels on request, and
doctor's install section (issue 29.5). No network and no GPU: make runs in a scratch copy with a fake venv Python
that logs what pip would have been asked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import REPO
from core import installplan
from core.installplan import (CONSTRAINTS, DEV, GPU, JAX_CUDA, RECORD, TRAIN, WANTED, and_cuda_names, install_report,
                              list_gpus, make_plan, read_pins, write_record, write_stamp)

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
    assert "PLAN = $(PYTHON) -m core.installplan --venv $(VENV)" in makefile
    assert "$(PLAN) train --pip-args" in makefile and "$(PLAN) train --record" in makefile
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
    assert plan.files == [TRAIN, GPU, DEV] and plan.pip_args() == f"-r {TRAIN} -r {GPU} -r {DEV} -c {CONSTRAINTS}"
    assert make_plan("train", env={}, gpus=([], "nvidia-smi lists no GPU")).files == [TRAIN]


# ----------------------------------------------------------------------------------------- issue 29.5
NO_GPU = "No devices were found\n"
SCRATCH_FILES = ["Makefile", "requirements.txt", TRAIN, GPU, JAX_CUDA, DEV, CONSTRAINTS, "core/__init__.py",
                 "core/installplan.py"]


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A copy of what `make install` reads, with a venv whose `python` only logs its arguments (pip's included)."""
    root = tmp_path / "repo"
    for name in SCRATCH_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/../pip.log"\n')
    python.chmod(0o755)
    (root / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.7\n")
    return root


def make_in(root: Path, gpus: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["make", *args], cwd=root, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PATH": f"{gpus}{os.pathsep}{os.environ['PATH']}", **env})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def pip_calls(root: Path) -> list[str]:
    log = root / ".venv" / "pip.log"
    return [line for line in log.read_text().splitlines() if line.startswith("-m pip")] if log.exists() else []


def test_make_records_the_plan_and_reinstalls_only_when_it_changes(scratch: Path, tmp_path: Path) -> None:
    none, h200 = fake_nvidia_smi(tmp_path / "none", NO_GPU, code=6), fake_nvidia_smi(tmp_path / "gpu", H200_LINES)
    make_in(scratch, none, "install")
    assert pip_calls(scratch) == [f"-m pip install --quiet -r {TRAIN}"]
    record = json.loads((scratch / ".venv" / RECORD).read_text())
    assert record["files"] == [TRAIN] and record["gpus"] == [] and record["python"] == "3.11.7"
    assert "No GPU found" in record["reason"] and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:]{8}Z", record["installed_at"])
    # nothing changed: no install, and a dry run says so too
    make_in(scratch, none, "install")
    assert "pip install" not in make_in(scratch, none, "-n", "install").stdout
    assert len(pip_calls(scratch)) == 1
    # a GPU now listed: the dry run shows the install would run, and make runs it with the pins
    dry = make_in(scratch, h200, "-n", "install").stdout
    assert "pip install" in dry and "The install plan changed" in dry
    make_in(scratch, h200, "install")
    assert pip_calls(scratch)[1:] == [f"-m pip install --quiet -r {TRAIN} -r {GPU} -c {CONSTRAINTS}"]
    record = json.loads((scratch / ".venv" / RECORD).read_text())
    assert record["files"] == [TRAIN, GPU] and record["gpus"] == ["NVIDIA H200", "NVIDIA H200"]
    make_in(scratch, h200, "install")
    assert len(pip_calls(scratch)) == 2
    assert "installed with this plan" in make_in(scratch, h200, "-s", "install-plan").stdout
    # STUDIO_DEVICE=cpu is a plan of its own
    make_in(scratch, h200, "install", STUDIO_DEVICE="cpu")
    assert pip_calls(scratch)[2:] == [f"-m pip install --quiet -r {TRAIN}"]


def test_the_stamp_is_written_only_when_the_plan_changes(tmp_path: Path) -> None:
    stamp = tmp_path / "venv" / WANTED
    cpu = make_plan("train", env={}, gpus=([], "nvidia-smi lists no GPU"))
    assert not write_stamp(cpu, stamp) and not stamp.exists()  # no venv yet (make -n on a fresh checkout)
    stamp.parent.mkdir()
    assert write_stamp(cpu, stamp)
    os.utime(stamp, ns=(1, 1))
    assert not write_stamp(make_plan("train", env={}, gpus=([], "nvidia-smi is not installed")), stamp)
    assert stamp.stat().st_mtime_ns == 1  # another reason, the same files: untouched, so make installs nothing
    assert write_stamp(make_plan("train", env={}, gpus=(["NVIDIA H200"], "")), stamp)
    assert json.loads(stamp.read_text()) == {"files": [TRAIN, GPU], "constraints": [CONSTRAINTS]}


def test_the_constraints_pin_every_cuda_wheel_of_tensorflows_and_cuda_extra() -> None:
    """Read from the installed TensorFlow's METADATA: a TensorFlow bump that forgets constraints-gpu.txt fails."""
    from importlib import metadata

    pinned = next(line for line in (REPO / GPU).read_text().splitlines() if line.startswith("tensorflow["))
    assert pinned == f"tensorflow[and-cuda]=={metadata.version('tensorflow')}"
    assert f"-c {CONSTRAINTS}" in (REPO / GPU).read_text().splitlines()  # a hand `pip install -r` gets the pins too
    pins = read_pins(REPO / CONSTRAINTS)
    extra = [Requirement(r) for r in metadata.requires("tensorflow") if "and-cuda" in r]
    assert len(extra) >= 10 and sorted(and_cuda_names()) == sorted(installplan._normalised(r.name) for r in extra)
    for requirement in extra:
        name = installplan._normalised(requirement.name)
        assert name in pins, f"{CONSTRAINTS} does not pin {name}"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"
    assert make_plan("train", env={}, gpus=(["Tesla T4"], "")).constraints == [CONSTRAINTS]
    assert "not yet run on a GPU" in (REPO / CONSTRAINTS).read_text()


def test_the_jax_cuda_opt_in_adds_jax_with_cuda_wheels_and_is_remembered() -> None:
    dev_jax = next(line for line in (REPO / DEV).read_text().splitlines() if line.startswith("jax=="))
    jax_version = dev_jax.split("==")[1]
    lines = (REPO / JAX_CUDA).read_text().splitlines()
    assert f"jax[cuda12]=={jax_version}" in lines and f"-c {CONSTRAINTS}" in lines
    assert read_pins(REPO / CONSTRAINTS)["jax-cuda12-plugin"] == jax_version
    gpu = (["NVIDIA H200"], "")
    plan = make_plan("dev", env={"STUDIO_JAX_CUDA": "1"}, gpus=gpu)
    assert plan.files == [TRAIN, GPU, JAX_CUDA, DEV] and plan.constraints == [CONSTRAINTS] and plan.jax_cuda
    assert "multi-host" in plan.reason
    assert make_plan("train", env={"STUDIO_JAX_CUDA": "1"}, gpus=([], "x")).files == [TRAIN, JAX_CUDA]
    assert JAX_CUDA not in make_plan("train", env={}, gpus=gpu).files
    assert JAX_CUDA in make_plan("train", env={}, gpus=gpu, recorded={"jax_cuda": True}).files  # remembered
    assert JAX_CUDA not in make_plan("train", env={"STUDIO_JAX_CUDA": "0"}, gpus=gpu, recorded={"jax_cuda": True}).files
    forced = make_plan("train", env={"STUDIO_JAX_CUDA": "1", "STUDIO_DEVICE": "cpu"}, gpus=gpu)
    assert forced.files == [TRAIN] and forced.jax_cuda and "left out too" in forced.reason
    with pytest.raises(SystemExit, match="STUDIO_JAX_CUDA"):
        make_plan("train", env={"STUDIO_JAX_CUDA": "maybe"}, gpus=gpu)


def test_doctor_install_section_reports_a_mismatch_and_what_to_run(tmp_path: Path, monkeypatch, capsys) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    write_record(make_plan("train", env={}, gpus=([], "nvidia-smi lists no GPU")), venv, "train", env={})
    pins = read_pins(REPO / CONSTRAINTS)
    gpu = (["NVIDIA H200"], "")
    report = install_report(venv, env={}, gpus=gpu, version=lambda name: None)
    assert report["installed_with"]["files"] == [TRAIN] and report["plan_now"]["files"] == [TRAIN, GPU]
    assert not report["matches"] and "`make install` (or `make run`) re-plans and adds requirements-gpu.txt" \
        in report["next"]
    assert report["cuda_wheels"]["state"] == "absent" and report["cuda_wheels"]["jax_cuda"] == "absent"
    # the GPU plan installed, at the pins: nothing to run; the GPU gone again: pip never uninstalls, make clean
    write_record(make_plan("train", env={}, gpus=gpu), venv, "train", env={})
    report = install_report(venv, env={}, gpus=gpu, version=pins.get)
    assert report["matches"] and report["cuda_wheels"]["state"] == "pinned" and report["next"].startswith("Nothing")
    report = install_report(venv, env={"STUDIO_DEVICE": "cpu"}, gpus=gpu, version=pins.get)
    assert not report["matches"] and "`make clean && make install`" in report["next"]
    # wheels from the extra's ranges (a venv from before the pins) are named
    report = install_report(venv, env={}, gpus=gpu, version=lambda name: "9.3.0.75" if "cudnn" in name else None)
    assert report["cuda_wheels"]["state"] == "unpinned" and "make clean" in report["next"]
    assert install_report(tmp_path / "bare", env={}, gpus=gpu)["next"].startswith("No install record")

    # through `python -m core doctor`, with the device report stubbed (no TensorFlow start): the existing keys stay
    import core.network.device as device
    from core.cli import main

    monkeypatch.setattr(device, "doctor", lambda seconds: {"backend": "tensorflow", "devices": [{"kind": "cpu"}],
                                                           "gpus_seen_by_driver": [], "smoke_test": {}})
    monkeypatch.setattr(installplan, "this_venv", lambda: venv)
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin', NO_GPU, code=6)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("STUDIO_DEVICE", raising=False)
    monkeypatch.delenv("STUDIO_JAX_CUDA", raising=False)
    assert main(["doctor", "--seconds", "0.1"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert {"backend", "devices", "gpus_seen_by_driver", "smoke_test", "install"} <= set(report)
    assert report["install"]["installed_with"]["files"] == [TRAIN, GPU] and not report["install"]["matches"]
    assert "note: The plan now leaves out requirements-gpu.txt" in out.err and "make clean" in out.err
