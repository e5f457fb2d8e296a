"""What one visitor may ask of a hosted demo's training slot (STUDIO_HOSTED=1, docs/deploy.md).

A public demo runs on one small box (2 CPUs, 0.7-2.7 GB) with one training slot shared by every visitor, so in
hosted mode a run is bounded in what it may cost: which backbones, how large the images, how many epochs, and how
long it may train. A run asking for more is refused before anything starts, naming the setting and the limit; a
run that reaches its time limit stops like a Stop click (its best model is kept) and is then evaluated, so the
visitor still gets a usable model. Each limit can be changed with the environment variable named beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from core import StudioError
from core.base.workspace import hosted_mode

# Defaults for a 2-CPU box: the backbones that train there in minutes (the baseline CNN too, so a visitor can run
# the pretrained-vs-from-scratch pair), their recipe sizes, and a run short enough that a queue of visitors moves.
HOSTED_BACKBONES = ("efficientnet_lite0", "efficientnet_b0", "baseline_cnn")  # STUDIO_HOSTED_BACKBONES (comma-separated)
HOSTED_MAX_IMAGE_SIZE = 300                                    # STUDIO_HOSTED_MAX_IMAGE_SIZE, pixels per side
HOSTED_MAX_HEAD_EPOCHS = 50  # STUDIO_HOSTED_MAX_HEAD_EPOCHS; the baseline CNN's default (the wall-time limit still holds)
HOSTED_MAX_FINETUNE_EPOCHS = 5                                 # STUDIO_HOSTED_MAX_FINETUNE_EPOCHS
HOSTED_MAX_MINUTES = 20.0                                      # STUDIO_HOSTED_MAX_MINUTES, wall time of one run


@dataclass(frozen=True)
class TrainingLimits:
    """The most one visitor's run may ask for."""

    backbones: tuple[str, ...]
    max_image_size: int
    max_head_epochs: int
    max_finetune_epochs: int
    max_minutes: float

    def describe(self) -> str:
        """One sentence for the Train page."""
        return (f"This is a shared demo: runs use {' or '.join(self.backbones)}, images up to {self.max_image_size} "
                f"px, at most {self.max_head_epochs} head and {self.max_finetune_epochs} fine-tuning epochs, and "
                f"stop after {self.max_minutes:g} minutes with their best model kept.")

    def to_dict(self) -> dict[str, Any]:
        return {"backbones": list(self.backbones), "max_image_size": self.max_image_size,
                "max_head_epochs": self.max_head_epochs, "max_finetune_epochs": self.max_finetune_epochs,
                "max_minutes": self.max_minutes}


def _env(name: str, default: float, whole: bool = True) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value) if whole else float(value)
    except ValueError:
        raise StudioError(f"{name}={value!r} is not a {'whole ' if whole else ''}number; set it to e.g. "
                          f"{default:g}.") from None
    if number <= 0:
        raise StudioError(f"{name}={value!r} must be above 0.")
    return number


def training_limits() -> TrainingLimits | None:
    """The limits in force: None unless hosted mode is on."""
    if not hosted_mode():
        return None
    from core.base.backbones import BACKBONES

    listed = os.environ.get("STUDIO_HOSTED_BACKBONES", "").strip()
    backbones = tuple(b.strip() for b in listed.split(",") if b.strip()) if listed else HOSTED_BACKBONES
    unknown = [b for b in backbones if b not in BACKBONES]
    if unknown:
        raise StudioError(f"STUDIO_HOSTED_BACKBONES names {', '.join(unknown)}, which is not a backbone here; "
                          f"choose from {', '.join(BACKBONES)}.")
    return TrainingLimits(backbones=backbones,
                          max_image_size=int(_env("STUDIO_HOSTED_MAX_IMAGE_SIZE", HOSTED_MAX_IMAGE_SIZE)),
                          max_head_epochs=int(_env("STUDIO_HOSTED_MAX_HEAD_EPOCHS", HOSTED_MAX_HEAD_EPOCHS)),
                          max_finetune_epochs=int(_env("STUDIO_HOSTED_MAX_FINETUNE_EPOCHS",
                                                       HOSTED_MAX_FINETUNE_EPOCHS)),
                          max_minutes=float(_env("STUDIO_HOSTED_MAX_MINUTES", HOSTED_MAX_MINUTES, whole=False)))


def limit_problems(config, limits: TrainingLimits) -> list[str]:
    """Each setting of a TrainConfig over a hosted limit, as a sentence naming the setting and the limit."""
    problems = []
    if config.backbone not in limits.backbones:
        problems.append(f"backbone {config.backbone} is not offered on this shared demo (choose "
                        f"{' or '.join(limits.backbones)})")
    size = config.resolved_image_size
    if size > limits.max_image_size:
        problems.append(f"image_size {size} is over this demo's {limits.max_image_size} px")
    if config.head_epochs > limits.max_head_epochs:
        problems.append(f"head_epochs {config.head_epochs} is over this demo's {limits.max_head_epochs}")
    if (config.finetune_epochs or 0) > limits.max_finetune_epochs:
        problems.append(f"finetune_epochs {config.finetune_epochs} is over this demo's "
                        f"{limits.max_finetune_epochs}")
    return problems


def check_training_limits(config, limits: TrainingLimits | None = None) -> None:
    """Refuse, before anything is created, a run over the hosted limits (nothing to check when not hosted)."""
    limits = limits if limits is not None else training_limits()
    if limits is None:
        return
    problems = limit_problems(config, limits)
    if problems:
        raise StudioError("This run asks for more than a visitor may: " + "; ".join(problems) + ".")


def run_time_limit_seconds() -> float | None:
    """The wall time one run may train in hosted mode (None otherwise)."""
    limits = training_limits()
    return None if limits is None else limits.max_minutes * 60
