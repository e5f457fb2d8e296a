"""Which requirement files this machine should install, and why: `make install-plan`, and what `make` installs.

Why a plan at all: TensorFlow's Linux wheel carries no CUDA libraries, so on a machine with an NVIDIA GPU a plain
install trains on the CPU without a word. The `and-cuda` extra (requirements-gpu.txt) brings the pinned CUDA
wheels. The plan looks for a GPU the way the driver reports one (`nvidia-smi -L`), before anything is installed,
so it runs on the system Python with the standard library only.

    python3 -m core.installplan               # the files, one a line, then the reason
    python3 -m core.installplan --pip-args    # "-r requirements-train.txt -r requirements-gpu.txt" for pip
    STUDIO_DEVICE=cpu python3 -m core.installplan   # force the CPU plan
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

TRAIN = "requirements-train.txt"
GPU = "requirements-gpu.txt"
DEV = "requirements-dev.txt"
PROFILES = {"train": [TRAIN], "dev": [TRAIN, DEV]}
_GPU_LINE = re.compile(r"^GPU \d+: (?P<name>.+?)(?: \(UUID: [^)]*\))?\s*$")


@dataclass(frozen=True)
class InstallPlan:
    """The requirement files, in install order, and the sentence that says why."""

    files: list[str]
    reason: str
    gpus: list[str] = field(default_factory=list)

    def pip_args(self) -> str:
        return " ".join(f"-r {name}" for name in self.files)


def list_gpus(run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
              which: Callable[[str], str | None] = shutil.which) -> tuple[list[str], str]:
    """GPU names as `nvidia-smi -L` lists them, and a note when it could not be asked."""
    if which("nvidia-smi") is None:
        return [], "nvidia-smi is not installed"
    try:
        result = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as err:
        return [], f"nvidia-smi could not run ({type(err).__name__})"
    if result.returncode != 0:
        first = (result.stderr or result.stdout).strip().splitlines()[:1]
        return [], f"nvidia-smi failed: {first[0] if first else 'exit code ' + str(result.returncode)}"
    names = [m.group("name") for m in map(_GPU_LINE.match, result.stdout.splitlines()) if m]
    return names, "" if names else "nvidia-smi lists no GPU"


def make_plan(profile: str = "train", env: Mapping[str, str] = os.environ,
              gpus: tuple[list[str], str] | None = None) -> InstallPlan:
    """The plan for a profile ('train' or 'dev'): GPU wheels only where a GPU is listed, unless STUDIO_DEVICE=cpu."""
    if profile not in PROFILES:
        raise SystemExit(f"error: unknown profile {profile!r}; use one of {', '.join(PROFILES)}.")
    files = list(PROFILES[profile])
    if env.get("STUDIO_DEVICE", "").strip().lower() == "cpu":
        return InstallPlan(files, "STUDIO_DEVICE=cpu asks for the CPU plan, whatever GPU there is.")
    names, note = gpus if gpus is not None else list_gpus()
    if not names:
        return InstallPlan(files, f"No GPU found ({note}): training runs on the CPU.")
    listed = ", ".join(f"{count} x {name}" if count > 1 else name
                       for name, count in _counted(names).items())
    return InstallPlan([files[0], GPU, *files[1:]],
                       f"nvidia-smi lists {len(names)} GPU{'s' if len(names) > 1 else ''} ({listed}): "
                       f"{GPU} adds TensorFlow's CUDA wheels.", names)


def _counted(names: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m core.installplan",
                                     description="Print the requirement files this machine gets, and why.")
    parser.add_argument("profile", nargs="?", default="train", choices=list(PROFILES),
                        help="train: the app and training (make run); dev: plus test tools (make test)")
    parser.add_argument("--pip-args", action="store_true", help="print only pip's -r arguments, for the Makefile")
    args = parser.parse_args(argv)
    plan = make_plan(args.profile)
    if args.pip_args:
        print(plan.pip_args())
    else:
        print("\n".join(plan.files))
        print(f"why: {plan.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
