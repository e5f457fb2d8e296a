"""Training configuration: every default in one commented place; unknown keys rejected with a suggestion."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import StudioError
from core.backbones import DEFAULT_BACKBONE


# Fine-tuning on a 2-core CPU costs ~3x a frozen pass per epoch and gained nothing measurable on flowers-mini
# (docs/benchmarks.md); on a GPU it is cheap and is where the recipe's second phase pays off.
GPU_FINETUNE_EPOCHS = 3


def default_finetune_epochs(accelerator: str) -> int:
    """The 'auto' number of fine-tuning epochs for a device kind."""
    return GPU_FINETUNE_EPOCHS if accelerator == "gpu" else 0


@dataclass
class TrainConfig:
    """What a run needs; saved verbatim (plus versions) as the run's config.json."""

    data: str = ""                      # dataset folder: class sub-folders, or train/ (val/ test/) holding them
    val_fraction: float = 0.2           # share of each class held out for validation when no val/ folder exists
    test_fraction: float = 0.0          # share held out for a final test (0 = none)
    seed: int = 42                      # one seed for the split, shuffling, augmentation and initialisation
    backbone: str = DEFAULT_BACKBONE    # a name from core.backbones.BACKBONES
    weights: str | None = "imagenet"    # "imagenet" (pretrained) or None (random init, only when asked for)
    image_size: int | None = None       # pixels per side; None = the backbone's recipe size (Lite0: 288, else native)
    batch_size: int | None = None       # images per step per device; None = auto: 32 on a CPU, on a GPU the
                                        # largest power of two that fits its memory (core.device.choose_batch_size)
    augmentation: Any = "light"         # preset name (none|light|seed) or an explicit albumentations spec list
    # Phase 1: the head on a frozen base.
    head_epochs: int = 15               # "images" mode: upper bound, early stopping ends sooner; "features" mode:
                                        # any number > 0 fits the head (0 skips phase 1)
    head_lr: float = 1e-3               # Adam learning rate for the head ("images" mode)
    head_mode: str = "features"         # "features": cache frozen-base features once and fit the head on them
                                        # exactly (L2 logistic regression, strength chosen on val; seconds);
                                        # "images": Adam on the frozen base over (augmented) images every epoch
    # Phase 2: unfreeze the top of the base, BatchNorm kept frozen, at a ~100x lower rate.
    finetune_epochs: int | None = None  # None = auto: 0 on a CPU (measured: no gain worth its time there),
                                        # GPU_FINETUNE_EPOCHS on a GPU; 0 skips fine-tuning
    finetune_lr: float = 1e-5           # Adam learning rate when fine-tuning
    unfreeze_stages: int = 2            # top EfficientNet stages (plus the top conv) to unfreeze
    # Regularisation and schedule.
    dropout: float = 0.5                # dropout before the classifier (0.5 measured better than 0.2 with few images)
    multi_level: bool = True            # pool the previous stage's output too (measured better; see benchmarks)
    label_smoothing: float = 0.1        # 0 disables
    class_weights: bool = True          # weight the loss by inverse class frequency (imbalanced data)
    early_stopping_patience: int = 3    # epochs without val_loss improvement before stopping a phase
    reduce_lr_patience: int = 2         # epochs without improvement before halving the learning rate
    tta: bool = True                    # evaluate and predict on the image and its mirror, averaged
    # Hardware.
    mixed_precision: str = "auto"       # auto (on with a GPU) | on | off
    xla: str = "auto"                   # auto (on with a GPU) | on | off
    data_parallel: bool = True          # use every visible GPU (batch_size is per device; LR scales with devices)
    threads: int | None = None          # augmentation threads; None = one per core
    log_every_steps: int = 5            # write a step line to metrics.jsonl this often
    run_name: str = ""                  # optional label shown in the UI

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise StudioError(f"Unknown config key '{key}'{hint}.")
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: Path | str) -> "TrainConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StudioError(f"{path}: config file not found.") from None
        except json.JSONDecodeError as err:
            raise StudioError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}).") from None
        if not isinstance(values, dict):
            raise StudioError(f"{path}: the config must be a JSON object.")
        values.pop("versions", None)  # a run's saved config.json can be fed back in
        values.pop("resolved", None)
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check ranges up front, before any model is built or file written."""
        from core.backbones import get_backbone

        if not self.data:
            raise StudioError("No dataset given: set 'data' (or --data) to a folder of class folders.")
        get_backbone(self.backbone)
        checks = [
            (self.batch_size is None or self.batch_size >= 1, f"batch_size must be at least 1, not {self.batch_size}"),
            (self.head_epochs >= 0 and (self.finetune_epochs or 0) >= 0, "epochs cannot be negative"),
            (self.head_epochs + (self.finetune_epochs or 0) >= 1 or self.finetune_epochs is None,
             "at least one epoch (head or fine-tune) is needed"),
            (0 < self.head_lr < 1 and 0 < self.finetune_lr < 1, "learning rates must be between 0 and 1"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), not {self.dropout}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), not {self.label_smoothing}"),
            (self.unfreeze_stages >= 0, "unfreeze_stages cannot be negative"),
            (self.image_size is None or 32 <= int(self.image_size) <= 1024, "image_size must be 32..1024"),
            (self.head_mode in ("features", "images"), f"head_mode must be 'features' or 'images'"),
            (self.mixed_precision in ("auto", "on", "off"), "mixed_precision must be auto, on or off"),
            (self.xla in ("auto", "on", "off"), "xla must be auto, on or off"),
            (self.weights in ("imagenet", None), "weights must be 'imagenet' or null"),
        ]
        for ok, message in checks:
            if not ok:
                raise StudioError(f"Invalid config: {message}.")

    def resolved_finetune_epochs(self, accelerator: str) -> int:
        """Fine-tuning epochs for this device ("cpu" or "gpu") when left on auto."""
        if self.finetune_epochs is not None:
            return int(self.finetune_epochs)
        return default_finetune_epochs(accelerator)

    @property
    def resolved_image_size(self) -> int:
        from core.backbones import get_backbone

        return int(self.image_size or get_backbone(self.backbone).recipe_size)
