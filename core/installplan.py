"""Which requirement files this machine should install, and why: `make install-plan`, and what `make` installs.

Why a plan at all: TensorFlow's Linux wheel carries no CUDA libraries, so on a machine with an NVIDIA GPU a plain
install trains on the CPU without a word. The `and-cuda` extra (requirements-gpu.txt) brings the CUDA wheels, held
to exact versions by constraints-gpu.txt. The plan looks for a GPU the way the driver reports one (`nvidia-smi -L`),
before anything is installed, so it runs on the system Python with the standard library only.

Why the venv records its plan: a `.venv` installed before the GPU was visible (driver installed later, a container
started without `--gpus`) would otherwise keep its CPU-only wheels for ever. `make` asks for the plan on every run
(`--stamp`): the file it writes changes only when the plan does, so the install re-runs exactly then, and after
pip succeeds `--record` writes what was installed, which `python -m core doctor` compares with the plan now.

    python3 -m core.installplan               # the files, one a line, then the reason
    python3 -m core.installplan --pip-args    # "-r requirements-train.txt -r requirements-gpu.txt -c ..." for pip
    STUDIO_DEVICE=cpu python3 -m core.installplan   # force the CPU plan
    STUDIO_JAX_CUDA=1 python3 -m core.installplan   # add JAX with CUDA wheels (multi-host training is JAX-only)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

TRAIN = "requirements-train.txt"
GPU = "requirements-gpu.txt"
JAX_CUDA = "requirements-jax-cuda.txt"
DEV = "requirements-dev.txt"
CONSTRAINTS = "constraints-gpu.txt"
PROFILES = {"train": [TRAIN], "dev": [TRAIN, DEV]}
RECORD = "install-plan.json"      # in the venv: the plan pip installed, written after it succeeded
WANTED = "install-plan.wanted"    # in the venv: the plan make would install now, rewritten only when it changes
REPO = Path(__file__).resolve().parent.parent
_GPU_LINE = re.compile(r"^GPU \d+: (?P<name>.+?)(?: \(UUID: [^)]*\))?\s*$")
_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class InstallPlan:
    """The requirement files, in install order, the constraints pip gets with them, and the sentence that says why.

    `jax_cuda` is the opt-in itself, kept even where STUDIO_DEVICE=cpu leaves its file out, so the venv remembers it.
    """

    files: list[str]
    reason: str
    gpus: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    jax_cuda: bool = False

    def pip_args(self) -> str:
        return " ".join([*(f"-r {name}" for name in self.files), *(f"-c {name}" for name in self.constraints)])

    def key(self) -> dict:
        """What decides what pip installs: a change here re-runs the install, a new GPU name alone does not."""
        return {"files": self.files, "constraints": self.constraints}


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


def jax_cuda_wanted(env: Mapping[str, str], recorded: Mapping | None = None) -> bool:
    """STUDIO_JAX_CUDA=1 opts in, =0 out; unset keeps what the venv was installed with, so a later plain `make run`
    neither drops JAX's CUDA wheels from the plan nor re-installs because the variable is gone."""
    value = env.get("STUDIO_JAX_CUDA", "").strip().lower()
    if value in _YES or value in _NO:
        return value in _YES
    if value:
        raise SystemExit(f"error: STUDIO_JAX_CUDA={value!r}; use 1 to add JAX's CUDA wheels or 0 to leave them out.")
    return bool(recorded and recorded.get("jax_cuda"))


def make_plan(profile: str = "train", env: Mapping[str, str] = os.environ,
              gpus: tuple[list[str], str] | None = None, recorded: Mapping | None = None) -> InstallPlan:
    """The plan for a profile ('train' or 'dev'): GPU wheels only where a GPU is listed, unless STUDIO_DEVICE=cpu;
    JAX's CUDA wheels when opted in (STUDIO_JAX_CUDA=1, or the venv's `recorded` plan had them)."""
    if profile not in PROFILES:
        raise SystemExit(f"error: unknown profile {profile!r}; use one of {', '.join(PROFILES)}.")
    files = list(PROFILES[profile])
    jax_cuda = jax_cuda_wanted(env, recorded)
    if env.get("STUDIO_DEVICE", "").strip().lower() == "cpu":
        ignored = f" (STUDIO_JAX_CUDA: {JAX_CUDA} left out too)" if jax_cuda else ""
        return InstallPlan(files, f"STUDIO_DEVICE=cpu asks for the CPU plan, whatever GPU there is{ignored}.",
                           jax_cuda=jax_cuda)
    names, note = gpus if gpus is not None else list_gpus()
    extra = [JAX_CUDA] if jax_cuda else []
    # Where the opt-in runs without a listed GPU (an image built on a CPU machine for GPU hosts) it is still honoured.
    jax_words = f" {JAX_CUDA} adds JAX with CUDA wheels (STUDIO_JAX_CUDA), for multi-host training." if jax_cuda else ""
    if not names:
        return InstallPlan([files[0], *extra, *files[1:]],
                           f"No GPU found ({note}): training runs on the CPU.{jax_words}",
                           constraints=[CONSTRAINTS] if extra else [], jax_cuda=jax_cuda)
    listed = ", ".join(f"{count} x {name}" if count > 1 else name
                       for name, count in _counted(names).items())
    return InstallPlan([files[0], GPU, *extra, *files[1:]],
                       f"nvidia-smi lists {len(names)} GPU{'s' if len(names) > 1 else ''} ({listed}): "
                       f"{GPU} adds TensorFlow's CUDA wheels, pinned by {CONSTRAINTS}.{jax_words}", names,
                       [CONSTRAINTS], jax_cuda)


def _counted(names: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts


# ----------------------------------------------------------------------------------------- the venv's record
def read_json(path: Path) -> dict | None:
    """A record or stamp, or None when there is none or it cannot be read (a half-written file is no record)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_record(venv: Path | None) -> dict | None:
    return read_json(venv / RECORD) if venv is not None else None


def write_stamp(plan: InstallPlan, path: Path) -> bool:
    """Write the plan's key to `path` only when it differs from what is there, so make's timestamps see a change of
    plan and nothing else. False (nothing written) when unchanged or when the venv folder is not made yet: then
    the install runs anyway, and `make -n` writes nothing before the venv exists."""
    text = json.dumps(plan.key(), sort_keys=True) + "\n"
    if not path.parent.is_dir():
        return False
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    path.write_text(text, encoding="utf-8")
    return True


def _venv_python_version(venv: Path) -> str:
    """The venv's Python (pyvenv.cfg says), which is what pip installed for; this interpreter's when unreadable."""
    try:
        for line in (venv / "pyvenv.cfg").read_text(encoding="utf-8").splitlines():
            name, _, value = line.partition("=")
            if name.strip() in ("version", "version_info"):
                return value.strip()
    except OSError:
        pass
    return ".".join(map(str, sys.version_info[:3]))


def write_record(plan: InstallPlan, venv: Path, profile: str, env: Mapping[str, str] = os.environ) -> dict:
    """What was installed into the venv, after pip succeeded: the plan, why, the GPUs listed, when, which Python."""
    record = {"profile": profile, **plan.key(), "pip_args": plan.pip_args(), "reason": plan.reason,
              "gpus": plan.gpus, "jax_cuda": plan.jax_cuda,
              "studio_device": env.get("STUDIO_DEVICE", ""), "python": _venv_python_version(venv),
              "installed_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    (venv / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


# ----------------------------------------------------------------------------------------- doctor's install section
def read_pins(path: Path) -> dict[str, str]:
    """A constraints file's `name==version` lines, names normalised as pip does (PEP 503)."""
    pins: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return pins
    for line in lines:
        name, sep, version = line.split("#")[0].replace(" ", "").partition("==")
        if sep and name:
            pins[_normalised(name)] = version
    return pins


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _installed_requires(name: str) -> list[str]:
    from importlib import metadata

    try:
        return metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []


def and_cuda_names(requires: Callable[[str], list[str]] = _installed_requires) -> list[str]:
    """The nvidia-* wheels the installed TensorFlow's `and-cuda` extra asks for (its METADATA), normalised."""
    names = []
    for line in requires("tensorflow"):
        spec, _, marker = line.partition(";")
        if re.search(r"extra\s*==\s*[\"']and-cuda[\"']", marker):
            names.append(_normalised(re.split(r"[\s<>=!~\[(]", spec.strip(), maxsplit=1)[0]))
    return names


def cuda_wheels(pins: Mapping[str, str], version: Callable[[str], str | None] = _installed_version,
                requires: Callable[[str], list[str]] = _installed_requires) -> dict:
    """Which CUDA wheels this environment has. `state` is TensorFlow's set (its and-cuda extra): 'absent',
    'pinned' (every one at the pin of constraints-gpu.txt), 'partial' (some missing) or 'unpinned' (some at other
    versions, e.g. installed from the extra's ranges before the pins). `jax_cuda`: JAX's CUDA plugin or not."""
    wanted = and_cuda_names(requires)
    present = {name: v for name in wanted if (v := version(name)) is not None}
    off_pin = {name: f"{v} (pin {pins.get(name, 'none')})" for name, v in present.items() if v != pins.get(name)}
    state = ("absent" if not present else "unpinned" if off_pin else
             "pinned" if len(present) == len(wanted) else "partial")
    jax_plugin = version("jax-cuda12-plugin")
    return {"state": state, "present": len(present), "of": len(wanted), "off_pin": off_pin,
            "cudnn": present.get("nvidia-cudnn-cu12"), "jax_cuda12_plugin": jax_plugin,
            "jax_cuda": "absent" if jax_plugin is None else "present"}


def plan_for(recorded: Mapping | None, env: Mapping[str, str] = os.environ,
             gpus: tuple[list[str], str] | None = None) -> InstallPlan:
    """The plan make would install now into a venv with this record (same profile; its JAX opt-in kept)."""
    return make_plan(recorded.get("profile", "train") if recorded else "train", env, gpus, recorded)


def same_plan(recorded: Mapping | None, plan: InstallPlan) -> bool:
    return recorded is not None and {"files": recorded.get("files"),
                                     "constraints": recorded.get("constraints", [])} == plan.key()


def next_step(recorded: Mapping | None, now: InstallPlan, wheels: Mapping) -> str:
    """What to run so this venv has the plan `make` would install now, in words a person can paste."""
    if recorded is None:
        return (f"No install record in this venv (installed before plans were recorded, or not by make): `make "
                f"install` (or `make run`) installs and records the plan now ({', '.join(now.files)}).")
    had, want = set(recorded.get("files", [])), set(now.files)
    added, dropped = sorted(want - had), sorted(had - want)
    if added:
        return (f"The plan changed since this venv was installed (now: {now.reason}) `make install` (or `make run`) "
                f"re-plans and adds {', '.join(added)}.")
    if dropped:
        return (f"The plan now leaves out {', '.join(dropped)} ({now.reason}) but pip never uninstalls: "
                f"`make clean && make install` rebuilds the venv without it.")
    if recorded.get("constraints", []) != now.constraints:
        return "The constraints changed: `make install` re-plans."
    if GPU in want and wheels.get("state") != "pinned":
        return (f"The plan has {GPU} but the CUDA wheels are {wheels.get('state')}: `make clean && make install` "
                f"reinstalls them at the pins of {CONSTRAINTS}.")
    if JAX_CUDA in want and wheels.get("jax_cuda") != "present":
        return f"The plan has {JAX_CUDA} but jax-cuda12-plugin is missing: `make clean && make install`."
    return "Nothing to run: this venv has the plan make would install now."


def this_venv() -> Path | None:
    """The virtual environment this Python runs in (where make records its plan), or None outside one."""
    return Path(sys.prefix) if sys.prefix != sys.base_prefix else None


def install_report(venv: Path | None = None, env: Mapping[str, str] = os.environ,
                   gpus: tuple[list[str], str] | None = None,
                   version: Callable[[str], str | None] = _installed_version,
                   requires: Callable[[str], list[str]] = _installed_requires) -> dict:
    """doctor's "install" section: the plan this venv was built with, whether it is still the plan, the CUDA
    wheels it has, and what to run."""
    venv = this_venv() if venv is None else venv
    recorded = read_record(venv)
    now = plan_for(recorded, env, gpus)
    wheels = cuda_wheels(read_pins(REPO / CONSTRAINTS), version, requires)
    if venv is None:
        step = "This Python runs in no virtual environment: `make run` builds .venv with the plan and records it."
    else:
        step = next_step(recorded, now, wheels)
    options = [] if now.jax_cuda else [
        "Multi-host training is JAX-only: `STUDIO_JAX_CUDA=1 make install` adds JAX with CUDA wheels "
        "(docs/distributed.md)."]
    return {"venv": str(venv) if venv else None, "record": str(venv / RECORD) if recorded and venv else None,
            "installed_with": ({name: recorded.get(name) for name in
                                ("files", "constraints", "reason", "gpus", "jax_cuda", "python", "installed_at")}
                               if recorded else None),
            "plan_now": {"files": now.files, "constraints": now.constraints, "reason": now.reason},
            "matches": same_plan(recorded, now), "cuda_wheels": wheels, "next": step, "options": options}


# ----------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m core.installplan",
                                     description="Print the requirement files this machine gets, and why.")
    parser.add_argument("profile", nargs="?", default="train", choices=list(PROFILES),
                        help="train: the app and training (make run); dev: plus test tools (make test)")
    parser.add_argument("--venv", type=Path, default=None,
                        help="the venv make installs into: its recorded plan keeps the STUDIO_JAX_CUDA opt-in")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--pip-args", action="store_true", help="print only pip's -r/-c arguments, for the Makefile")
    what.add_argument("--stamp", action="store_true",
                      help=f"write VENV/{WANTED} only when the plan changed (make re-installs when it is newer)")
    what.add_argument("--record", action="store_true", help=f"write VENV/{RECORD}: the plan pip just installed")
    args = parser.parse_args(argv)
    if (args.stamp or args.record) and args.venv is None:
        parser.error("--stamp and --record need --venv")
    recorded = read_record(args.venv)
    plan = make_plan(args.profile, recorded=recorded)
    if args.pip_args:
        print(plan.pip_args())
    elif args.stamp:
        if write_stamp(plan, args.venv / WANTED) and recorded is not None:
            print(f"The install plan changed since this venv was installed: {plan.reason}")
    elif args.record:
        write_record(plan, args.venv, args.profile)
    else:
        print("\n".join(plan.files))
        print(f"why: {plan.reason}")
        if plan.constraints:
            print(f"pinned by: {', '.join(plan.constraints)}")
        if recorded is not None:
            print(f"this venv: {_venv_words(recorded)}")
    return 0


def _venv_words(recorded: Mapping) -> str:
    """`make install-plan`'s line on the venv: installed with the plan make would install now, or which one."""
    when = recorded.get("installed_at", "?")
    if same_plan(recorded, plan_for(recorded)):
        return f"installed with this plan on {when}"
    return f"installed on {when} with {recorded.get('pip_args', '?')}; `make install` re-plans"


if __name__ == "__main__":
    sys.exit(main())
