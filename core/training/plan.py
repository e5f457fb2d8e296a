"""What a run will do, decided before any network exists: the photos each part gets and the phases it goes through.

Kept free of Keras (the trainer imports it; so does core.training.estimate, which the Train page uses to say how
long a run will take before Start, in the server process that must not load TensorFlow for that).
"""

from __future__ import annotations

from dataclasses import dataclass

from core import StudioError
from core.base import progress
from core.base.config import TrainConfig
from core.data.datasets import Dataset, Sample, scan, split_samples
from core.data.overrides import Applied, apply_overrides, resolve_file

PHASE_HEAD, PHASE_FINETUNE = progress.HEAD_EPOCHS, progress.FINETUNE
PHASE_SCRATCH = "scratch"  # a from-scratch backbone's one phase: every layer trained, from the first epoch
SCRATCH_LABEL = "Training the whole network from scratch"
# Seconds per image of a from-scratch epoch (training and validation images together) before one is measured: the
# baseline CNN at 128 px on 2 CPU cores took 2-3 s per epoch of flowers-mini's 400 photos when the machine was
# otherwise idle (docs/comparisons.md); the measured rate replaces it after the first batch.
SCRATCH_PRIOR_SECONDS = 0.006
# A fine-tuning image costs about 3.5 frozen feature passes on a CPU (forward, then backward through the unfrozen
# top); only the first estimate uses it, the measured rate replaces it after the first batch.
FINETUNE_COST = 3.5


def prepare_dataset(config: TrainConfig) -> tuple[Dataset, dict[str, list[Sample]], Applied]:
    """Scan, apply the user's corrections (core.data.overrides) and split, refusing data that cannot be trained on
    (before any run folder exists)."""
    dataset, applied = scan_with_overrides(config)
    if not dataset.report.trainable:
        raise StudioError(" ".join(dataset.report.errors))
    split = split_samples(dataset, config.val_fraction, config.test_fraction, config.seed)
    if not split["val"]:
        raise StudioError(f"{dataset.root}: no image could be held out for validation; "
                          "each class needs at least 2 images.")
    return dataset, split, applied


def scan_with_overrides(config: TrainConfig) -> tuple[Dataset, Applied]:
    """The dataset as the run sees it: scanned, with the overrides file's relabels and exclusions applied."""
    dataset = scan(config.data)
    return apply_overrides(dataset, resolve_file(config.overrides, dataset.root))


def has_val_folder(dataset: Dataset) -> bool:
    """Whether the user gave a validation split of their own (a val/ folder with images)."""
    return any(s.split == "val" for s in dataset.samples)


def split_for_recipe(dataset: Dataset, split: dict[str, list[Sample]], needs_validation: bool
                     ) -> dict[str, list[Sample]]:
    """Give the photos carved out for validation back to training when nothing needs them.

    A validation split is needed by epoch training and fine-tuning (early stopping, learning-rate schedule). The
    exact head fit chooses its L2 by k-fold cross-validation over the training photos instead (core.network.headfit), so
    when the dataset has its own test/ folder (which scores the run) and no val/ folder, the carved photos would
    only be photos not learned from. With class folders only, the carved share stays: it is the held-out set the
    run is scored on, and no choice is made on it."""
    if needs_validation or has_val_folder(dataset) or not split.get("test") or not split.get("val"):
        return split
    returned = [Sample(s.path, s.label, "train") for s in split["val"]]
    return {**split, "train": split["train"] + returned, "val": []}


def evaluation_part(split: dict[str, list[Sample]]) -> str:
    """The split a run is scored on: test when it has one, else val."""
    return "test" if split.get("test") else "val"


@dataclass
class NamedPhase(progress.Phase):
    """A phase whose words core.base.progress.LABELS does not hold (training from scratch)."""

    title: str = ""

    @property
    def label(self) -> str:
        return self.title or progress.LABELS.get(self.name, self.name)


def training_plan(config: TrainConfig, counts: dict[str, int], finetune_epochs: int,
                  cross_validated: bool = True) -> list[progress.Phase]:
    """The phases this run will go through, with how much work each is (for progress and the ETA)."""
    from core.network.headfit import L2_GRID, RECIPE_SCALING, scaling_candidates

    n_train, n_val = counts.get("train", 0), counts.get("val", 0)
    n_eval = counts.get("test") or n_val
    views = 2.0 if config.tta else 1.0
    phases = [progress.Phase(progress.PREPARE, 1, unit="steps"),
              progress.Phase(progress.DECODE, sum(counts.values()))]
    if config.from_scratch:
        # One phase of epochs over every layer; its first measured batch replaces the prior.
        size_factor = (config.resolved_image_size / 128) ** 2
        phases.append(NamedPhase(PHASE_SCRATCH, config.head_epochs * (n_train + n_val), title=SCRATCH_LABEL,
                                 seconds_per_unit=SCRATCH_PRIOR_SECONDS * size_factor))
    elif config.head_epochs > 0 and config.head_mode == "features":
        # With a val/ folder: one fit per L2 on it; else each L2 is cross-validated (CV_FOLDS fits, warm-started,
        # in the photos' row space) and one refit on all photos follows; the grid runs once per scaling tried
        # (headfit.RECIPE_SCALING). Seconds per unit measured on 2 cores.
        fits = len(scaling_candidates(RECIPE_SCALING)) * len(L2_GRID) + (1 if cross_validated else 0)
        phases += [progress.Phase(progress.FEATURES, n_train + (0 if cross_validated else n_val)),
                   progress.Phase(progress.HEAD_FIT, fits, unit="fits", seconds_per_unit=0.1 + 0.0005 * n_train)]
    elif config.head_epochs > 0:
        # Epoch phases count every image an epoch touches: its training images and its validation pass.
        phases.append(progress.Phase(progress.HEAD_EPOCHS, config.head_epochs * (n_train + n_val),
                                     scale_from=progress.FEATURES, factor=1.3))
    if finetune_epochs > 0:
        phases.append(progress.Phase(progress.FINETUNE, finetune_epochs * (n_train + n_val),
                                     scale_from=progress.FEATURES,
                                     factor=(FINETUNE_COST * n_train + n_val) / max(1, n_train + n_val)))
    phases += [progress.Phase(progress.SAVE, 1, unit="files"),
               progress.Phase(progress.EVALUATE, n_eval, scale_from=progress.FEATURES, factor=views)]
    return phases
