"""How long a run will take, said before Start: the trainer's own plan priced at the rates this machine measured.

The plan is `core.training.train.training_plan`, the list of phases the trainer will go through with how much work
each is (images, fits). Each phase is priced at the seconds per unit that earlier finished runs in the same runs
folder measured for it (their `kind: phase` metric lines), with the same backbone and device kind, scaled by the
pixel count when the image size differs. A phase no earlier run measured falls back to the trainer's priors
(core.base.progress.PRIOR_SECONDS: Lite0 at 288 px on a 2-core CPU), scaled by pixels and cores; on a GPU there is
no prior worth showing, so the estimate says it is unknown until a first run there has been measured.

The trainer writes the estimate it started with into the run folder (`estimate.json`), and the Train page shows
it beside what the run took, so an estimate that drifts is visible rather than trusted.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.base import progress
from core.base.config import TrainConfig
from core.base.runs import RunDir, list_runs, read_json, write_json_atomic

ESTIMATE_FILE = "estimate.json"
RECENT_RUNS = 20  # the newest runs of the folder whose measured rates count (older ones may predate a speed-up)
PRIOR_SIZE = 288  # the image size the priors were measured at (Lite0's recipe size)
PRIOR_CORES = 2  # ... on this many cores
# Phases whose cost grows with the pixels per photo (network passes); decoding is dominated by the files' own size.
OVERHEAD = "overhead"  # the seconds of a run outside its phases, priced like a phase of one unit
OVERHEAD_PRIOR_SECONDS = 4.0  # measured on flowers-mini runs on 2 cores (3-12 s: calibration, files)
PIXEL_BOUND = {progress.FEATURES, progress.HEAD_EPOCHS, progress.FINETUNE, progress.EVALUATE}


@dataclass
class Estimate:
    """Seconds a run is expected to take (phases in the trainer's order) and where the rates came from."""

    seconds: float | None  # None: no measured rate and no prior that holds for this device
    phases: dict[str, float] = field(default_factory=dict)
    measured: list[str] = field(default_factory=list)  # phases priced at rates measured on this machine
    upper_bound: bool = False  # epochs that early stopping may cut short are counted in full

    def describe(self) -> str:
        """'about 4:10 (rates measured here)' or 'unknown until a first run on this GPU'."""
        if self.seconds is None:
            return "unknown until a first run on this device has been measured"
        source = "rates measured on this machine" if self.measured else "typical 2-core CPU rates, scaled"
        bound = "at most " if self.upper_bound else "about "
        return f"{bound}{progress.format_seconds(self.seconds)} ({source})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _phase_lines(run: RunDir) -> list[dict[str, Any]]:
    return [m for m in run.read_metrics() if m.get("kind") == "phase" and isinstance(m.get("seconds"), (int, float))
            and isinstance(m.get("done"), (int, float)) and m["done"] > 0]


def measured_rates(runs_dir: Path | None, backbone: str, image_size: int, accelerator: str) -> dict[str, float]:
    """Median seconds per unit of each phase over the newest finished runs in `runs_dir` of this backbone on this
    kind of device, scaled to `image_size` for the phases that grow with pixels."""
    if runs_dir is None or not Path(runs_dir).is_dir():
        return {}
    samples: dict[str, list[float]] = {}
    finished = [r for r in list_runs(runs_dir) if (r.read_status() or {}).get("state") == "succeeded"]
    for run in finished[:RECENT_RUNS]:
        try:
            config = run.read_config()
        except Exception:  # a damaged run folder only makes the estimate poorer
            continue
        resolved = config.get("resolved") or {}
        device = (resolved.get("device") or {}).get("accelerator")
        size = resolved.get("image_size")
        if config.get("backbone") != backbone or device != accelerator or not isinstance(size, int) or size <= 0:
            continue
        lines = _phase_lines(run)
        for line in lines:
            per_unit = line["seconds"] / line["done"]
            if line["phase"] in PIXEL_BOUND:
                per_unit *= (image_size / size) ** 2
            samples.setdefault(line["phase"], []).append(per_unit)
        status = run.read_status() or {}
        started, finished = status.get("started"), status.get("finished")
        if lines and isinstance(started, (int, float)) and isinstance(finished, (int, float)):
            # What a run spends outside its phases (setting up devices, calibration, writing files): one unit.
            overhead = finished - started - sum(line["seconds"] for line in lines)
            samples.setdefault(OVERHEAD, []).append(max(overhead, 0.0))
    return {phase: statistics.median(values) for phase, values in samples.items()}


def prior_rate(phase: progress.Phase, image_size: int) -> float:
    """The trainer's prior seconds per unit for `phase`, scaled from Lite0 at 288 px on 2 cores."""
    rate = phase.seconds_per_unit if phase.seconds_per_unit is not None else progress.PRIOR_SECONDS.get(phase.name,
                                                                                                          0.0)
    if phase.name in PIXEL_BOUND:
        rate *= (image_size / PRIOR_SIZE) ** 2
    cores = os.cpu_count() or PRIOR_CORES
    return rate * PRIOR_CORES / min(max(cores, 1), 16)


def price_plan(phases: list[progress.Phase], rates: dict[str, float], image_size: int, accelerator: str
               ) -> Estimate:
    """Seconds for each phase of a plan: its own measured rate, else the measured rate of the phase it scales from
    times its factor (fine-tuning costs about FINETUNE_COST frozen passes), else the prior (CPU only)."""
    priced: dict[str, float] = {}
    measured: list[str] = []
    for phase in phases:
        if phase.name in rates:
            rate = rates[phase.name]
            measured.append(phase.name)
        elif phase.scale_from is not None and phase.scale_from in rates:
            rate = rates[phase.scale_from] * phase.factor
            measured.append(phase.name)
        elif accelerator == "cpu":
            rate = prior_rate(phase, image_size)  # the phase's own prior, as the trainer's tracker starts from
        else:
            return Estimate(None, upper_bound=any(p.name in (progress.FINETUNE, progress.HEAD_EPOCHS)
                                                  for p in phases))
        priced[phase.name] = round(phase.total * rate, 1)
    if OVERHEAD in rates:
        priced[OVERHEAD] = round(rates[OVERHEAD], 1)
        measured.append(OVERHEAD)
    else:
        priced[OVERHEAD] = OVERHEAD_PRIOR_SECONDS
    epochs = any(p.name in (progress.FINETUNE, progress.HEAD_EPOCHS) for p in phases)
    return Estimate(round(sum(priced.values()), 1), priced, measured, upper_bound=epochs)


def estimate_run(config: TrainConfig, counts: dict[str, int], accelerator: str, runs_dir: Path | None,
                 cross_validated: bool = True) -> Estimate:
    """What `config` will take on photos split as `counts` (train/val/test as the recipe uses them)."""
    from core.training.plan import training_plan

    finetune_epochs = config.resolved_finetune_epochs(accelerator)
    phases = training_plan(config, counts, finetune_epochs, cross_validated=cross_validated)
    size = config.resolved_image_size
    return price_plan(phases, measured_rates(runs_dir, config.backbone, size, accelerator), size, accelerator)


def planned_counts(config: TrainConfig, accelerator: str) -> tuple[dict[str, int], bool]:
    """The photos per part exactly as the trainer will split them (same seed, same corrections), and whether the
    head's L2 is cross-validated (no val/ folder). Raises StudioError for data that cannot be trained on."""
    from core.training.plan import has_val_folder, prepare_dataset, split_for_recipe

    dataset, split, _ = prepare_dataset(config)
    needs_validation = config.head_mode != "features" or config.resolved_finetune_epochs(accelerator) > 0
    split = split_for_recipe(dataset, split, needs_validation=needs_validation)
    return {part: len(samples) for part, samples in split.items()}, not has_val_folder(dataset)


def write_estimate(run: RunDir, estimate: Estimate) -> None:
    write_json_atomic(run.file(ESTIMATE_FILE), estimate.to_dict())


def estimate_against_actual(run: RunDir) -> tuple[float, float] | None:
    """(estimated seconds, seconds taken) of a finished run that kept an estimate; None otherwise."""
    kept = read_json(run.file(ESTIMATE_FILE), None)
    status = run.read_status() or {}
    if not isinstance(kept, dict) or not isinstance(kept.get("seconds"), (int, float)):
        return None
    started, finished = status.get("started"), status.get("finished")
    if not isinstance(started, (int, float)) or not isinstance(finished, (int, float)) or finished <= started:
        return None
    return float(kept["seconds"]), float(finished - started)
