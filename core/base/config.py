"""Training configuration: every default in one commented place; unknown keys rejected with a suggestion."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import StudioError
from core.base.backbones import DEFAULT_BACKBONE


# Fine-tuning on a 2-core CPU costs ~3x a frozen pass per epoch and gained nothing measurable on flowers-mini
# (docs/benchmarks.md); on a GPU it is cheap and is where the recipe's second phase pays off.
GPU_FINETUNE_EPOCHS = 3

# Two recipes to choose between before Start (issue 28), each a set of settings: a setting not given takes the
# preset's value (as a from-scratch backbone's do, SCRATCH_DEFAULTS), a setting given wins. "quick" is the config's
# own defaults without fine-tuning: a linear head fitted exactly on frozen features (about a minute for 750 photos on
# a 2-core CPU). "best" fine-tunes the top of the backbone after that head, over augmented photos, with early stopping
# and the plateau schedule; the run keeps the head or a fine-tuned epoch, whichever scores the lower loss on the
# validation photos. On flowers-dev no fine-tune tried on this CPU beat Quick on test/ (docs/benchmarks.md, "The Best
# preset"), so on a CPU Quick is the default; on a GPU, where epochs are cheap, Best is (default_preset).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"finetune_epochs": 0},
    "best": {"finetune_epochs": 8, "unfreeze_stages": 2, "finetune_lr": 1e-4, "label_smoothing": 0.1,
             "early_stopping_patience": 3, "reduce_lr_patience": 2},
}
PRESET_SUMMARIES = {
    "quick": "Fits a linear classifier on the frozen network's features of every photo: minutes on a CPU.",
    "best": "Fits the same classifier, then fine-tunes the network's top stages on augmented photos and keeps whichever model does better "
            "on held-out photos: several times slower; it pays most on a GPU, where it can train longer.",
}


# numpy's legacy seeding (which keras.utils.set_random_seed calls) takes 0..2**32-1; a larger or negative seed
# would fail only after the run folder exists, with a traceback.
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class Rule:
    """What one setting accepts: its kind, its range, and what null means when null is allowed."""

    kind: str                            # "int" | "float" | "bool" | "text" | "choice" | "augmentation"
    low: float | None = None
    high: float | None = None
    low_open: bool = False               # the range excludes `low` (learning rates must be above 0)
    high_open: bool = False              # the range excludes `high` (dropout must stay below 1)
    choices: tuple[Any, ...] = ()
    null: str | None = None              # what null means, when null is allowed ("auto", "one per core")
    unit: str = ""                       # "pixels", "epochs": makes the message read as a sentence


# Every TrainConfig field, with the range it is checked against before anything is created (TrainConfig.validate)
# and the type a saved config.json is read back with (core.base.runs). Upper bounds keep one request from holding a
# shared machine for days or asking for more memory than any GPU has; the app's own widgets stay well inside them.
RULES: dict[str, Rule] = {
    "data": Rule("text"),
    "val_fraction": Rule("float", 0, 1, high_open=True),
    "test_fraction": Rule("float", 0, 1, high_open=True),
    "seed": Rule("int", 0, SEED_MAX),
    "backbone": Rule("text"),
    "weights": Rule("choice", choices=("imagenet",), null="random initialisation"),
    "image_size": Rule("int", 32, 1024, null="the backbone's recipe size", unit="pixels"),
    "batch_size": Rule("int", 1, 4096, null="auto", unit="images"),
    "augmentation": Rule("augmentation"),
    "head_epochs": Rule("int", 0, 1000, unit="epochs"),
    "head_lr": Rule("float", 0, 1, low_open=True, high_open=True),
    "head_mode": Rule("choice", choices=("features", "images")),
    "finetune_epochs": Rule("int", 0, 1000, null="auto", unit="epochs"),
    "finetune_lr": Rule("float", 0, 1, low_open=True, high_open=True),
    "optimizer": Rule("choice", choices=("adam", "sgd")),
    "unfreeze_stages": Rule("int", 0, 16),
    "dropout": Rule("float", 0, 1, high_open=True),
    "multi_level": Rule("bool"),
    "label_smoothing": Rule("float", 0, 1, high_open=True),
    "class_weights": Rule("bool"),
    "early_stopping_patience": Rule("int", 0, 1000, unit="epochs"),
    "reduce_lr_patience": Rule("int", 0, 1000, unit="epochs"),
    "tta": Rule("bool"),
    "mixed_precision": Rule("choice", choices=("auto", "on", "off")),
    "xla": Rule("choice", choices=("auto", "on", "off")),
    "data_parallel": Rule("bool"),
    "threads": Rule("int", 1, 256, null="one per core"),
    "log_every_steps": Rule("int", 1, 1_000_000, unit="steps"),
    "preset": Rule("choice", choices=tuple(PRESETS)),
    "run_name": Rule("text", 0, 200),
    "overrides": Rule("text", 0, 4096, null="no overrides file"),
}


def shown_value(value: Any) -> str:
    """A value as a message quotes it: JSON-like, short, one line (never a whole list or a long text)."""
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        from core.base.safetext import shorten

        return json.dumps(shorten(value, 40), ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):
        return "an infinite number" if math.isinf(value) else "NaN"
    return json.dumps(value) if value is None or isinstance(value, (bool, int, float)) else type(value).__name__


def is_number(value: Any) -> bool:
    """A finite int or float (JSON's true/false are not numbers here, though Python counts bool as int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def type_problem(name: str, value: Any) -> str | None:
    """Why `value` has the wrong type for setting `name` (None when the type is right or `name` is not a setting).

    Only the type: a saved run's config.json is read back with this, and a range may have widened since."""
    rule = RULES.get(name)
    if rule is None or (value is None and rule.null is not None):
        return None
    ok = {"int": is_whole(value), "float": is_number(value), "bool": isinstance(value, bool),
          "text": isinstance(value, str), "choice": isinstance(value, str),
          "augmentation": isinstance(value, (str, list))}[rule.kind]
    return None if ok else f"{name} must be {_expected(rule)}, not {shown_value(value)}"


def setting_problem(name: str, value: Any) -> str | None:
    """Why `value` is not allowed for setting `name` (type or range), as the end of a sentence; None when it is."""
    rule = RULES.get(name)
    if rule is None or (value is None and rule.null is not None):
        return None
    problem = type_problem(name, value)
    if problem is not None:
        return problem
    if rule.kind == "choice" and value not in rule.choices:
        return f"{name} must be {_expected(rule)}, not {shown_value(value)}"
    if rule.kind == "text" and rule.high is not None and len(value) > rule.high:
        return f"{name} must be at most {_number(rule.high)} characters long, not {len(value):,}"
    if rule.kind in ("int", "float") and not _in_range(rule, value):
        return f"{name} must be {_expected(rule)}, not {shown_value(value)}"
    return None


def _in_range(rule: Rule, value: float) -> bool:
    above = value > rule.low if rule.low_open else value >= rule.low
    below = value < rule.high if rule.high_open else value <= rule.high
    return above and below


def _number(value: float) -> str:
    """4294967295 as written, not 4.29497e+09."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _expected(rule: Rule) -> str:
    """'at least 1 and at most 4096 (a whole number of images, or null for auto)' and the like."""
    null = f", or null for {rule.null}" if rule.null else ""
    if rule.kind == "bool":
        return "true or false"
    if rule.kind == "text":
        return "text"
    if rule.kind == "augmentation":
        return "a preset name or a list of transforms"
    if rule.kind == "choice":
        named = " or ".join(f"'{c}'" for c in rule.choices) if len(rule.choices) < 3 else \
            "one of " + ", ".join(f"'{c}'" for c in rule.choices)
        return named + (f" (or null for {rule.null})" if rule.null else "")
    low = f"above {_number(rule.low)}" if rule.low_open else f"at least {_number(rule.low)}"
    high = f"below {_number(rule.high)}" if rule.high_open else f"at most {_number(rule.high)}"
    what = "a whole number" if rule.kind == "int" else "a number"
    return f"{low} and {high} ({what}{' of ' + rule.unit if rule.unit else ''}{null})"


OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9  # "sgd" is SGD with this momentum (the CIFAR baselines' optimizer)

# A from-scratch backbone (core.base.backbones: `from_scratch`) has no pretrained base to freeze, to take features
# from or to fine-tune: the whole network trains over (augmented) images from the first epoch, with early stopping
# and ReduceLROnPlateau, at head_lr (1e-3: Adam's usual rate for a network trained from scratch). These settings
# follow the backbone: a key not given takes this value for it, and a given value that contradicts it is refused
# (TrainConfig.validate). `head_epochs` is the number of epochs then: an upper bound, as a small CNN from random
# weights needs many more of them than a head does. Its validation loss jumps about in the first epochs (BatchNorm
# statistics still settling), so early stopping waits longer. Measured on flowers-mini at 128 px (one run each):
# patience 3 stopped after 4 epochs at 25% (chance is 20%); patience 8 trained all 40 epochs to 61%, still rising;
# patience 10 with the learning rate halved only after 5 epochs (not 2) stopped after 25 at 42.5%.
SCRATCH_DEFAULTS: dict[str, Any] = {"weights": None, "head_mode": "images", "finetune_epochs": 0, "head_epochs": 50,
                                    "early_stopping_patience": 8}


def default_preset(accelerator: str) -> str:
    """The preset a run starts from when none is chosen: Best where there is a GPU, Quick on a CPU."""
    return "best" if accelerator == "gpu" else "quick"


def preset_settings(preset: str, backbone: str) -> dict[str, Any]:
    """The settings `preset` sets for `backbone`: none for a from-scratch backbone (it has no frozen base to fit a
    head on or fine-tune), whose own defaults decide; an unknown name sets none (validate() refuses it)."""
    from core.base.backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    if spec is not None and spec.from_scratch:
        return {}
    return dict(PRESETS.get(preset, {}))


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
    backbone: str = DEFAULT_BACKBONE    # a name from core.base.backbones.BACKBONES
    weights: str | None = "imagenet"    # "imagenet" (pretrained) or None (random init, only when asked for)
    image_size: int | None = None       # pixels per side; None = the backbone's recipe size (Lite0: 288, else native)
    batch_size: int | None = None       # images per step per device; None = auto: 32 on a CPU, on a GPU the
                                        # largest power of two that fits its memory (core.network.device.choose_batch_size)
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
    optimizer: str = "adam"             # gradient optimizer of every epoch phase (head_mode "images", fine-tuning,
                                        # from scratch): "adam" | "sgd" (momentum SGD_MOMENTUM; usually wants a
                                        # ~10x higher rate); the exact head fit ("features") uses none
    unfreeze_stages: int = 2            # top EfficientNet stages (plus the top conv) to unfreeze
    # Regularisation and schedule.
    dropout: float = 0.5                # dropout before the classifier (0.5 measured better than 0.2 with few images)
    multi_level: bool = True            # pool stages 4-7 with the top features (measured better; see benchmarks)
    label_smoothing: float = 0.1        # 0 disables
    class_weights: bool = True          # weight the loss by inverse class frequency (imbalanced data)
    early_stopping_patience: int = 3    # epochs without val_loss improvement before stopping a phase
    reduce_lr_patience: int = 2         # epochs without improvement before halving the learning rate
    # Evaluate and predict on the image and its mirror, averaged. Off by default since issue 15: measured +0.1
    # points on the shapes set, -1.2 on flowers-mini (one photo), +-0 on textures, for 11% more time on 2,020/501
    # photos (docs/benchmarks.md); the hidden sets moved < 0.8 points either way. On for symmetric subjects.
    tta: bool = False
    # Hardware.
    mixed_precision: str = "auto"       # auto (on with a GPU) | on | off
    xla: str = "auto"                   # auto (on with a GPU) | on | off
    data_parallel: bool = True          # use every visible GPU (batch_size is per device; LR scales with devices)
    threads: int | None = None          # augmentation threads; None = one per core
    log_every_steps: int = 5            # write a step line to metrics.jsonl this often
    preset: str = "quick"               # the recipe the run started from (PRESETS): its settings fill the keys not
                                        # given; recorded so the run says which it was
    run_name: str = ""                  # optional label shown in the UI
    # The cleaning loop's corrections (core.data.overrides): "auto" = the <folder>.overrides.json beside the dataset
    # when there is one, a path = that file, None = train on the folders as they are.
    overrides: str | None = "auto"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Settings as given; a setting not given takes its default for the chosen backbone (backbone_defaults)."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise StudioError(f"Unknown config key '{key}'{hint}.")
        backbone = values.get("backbone", DEFAULT_BACKBONE)
        preset = values.get("preset", cls.preset)
        implied = {**preset_settings(preset, backbone), **backbone_defaults(backbone)} \
            if isinstance(backbone, str) and isinstance(preset, str) else {}
        config = cls(**{**implied, **values})
        config.validate()
        return config

    def with_backbone(self, backbone: str) -> "TrainConfig":
        """The same settings for another backbone (an experiment pair: pretrained against from scratch). A setting
        left at the old backbone's default takes the new one's (weights, head_mode, ...); one set by hand is kept,
        and validate() refuses it if it contradicts the new backbone."""
        old, new = all_defaults(self.backbone, self.preset), all_defaults(backbone, self.preset)
        values = self.to_dict()
        changed = {key: new[key] for key in set(backbone_defaults(self.backbone)) | set(backbone_defaults(backbone))
                   if values[key] == old[key]}
        config = dataclasses.replace(self, **{**changed, "backbone": backbone})
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: Path | str) -> "TrainConfig":
        return cls.from_dict(read_config_file(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check every field's type and range up front, before any model is built or file written."""
        from core.base.backbones import get_backbone

        for item in dataclasses.fields(self):  # types first: the checks below compare numbers
            problem = setting_problem(item.name, getattr(self, item.name))
            if problem is not None:
                raise StudioError(f"Invalid config: {problem}.")
        if not self.data:
            raise StudioError("No dataset given: set 'data' (or --data) to a folder of class folders.")
        if get_backbone(self.backbone).from_scratch:
            self._check_from_scratch()
        checks = [
            (self.head_epochs + (self.finetune_epochs or 0) >= 1 or self.finetune_epochs is None,
             "at least one epoch (head or fine-tune) is needed"),
            (self.val_fraction + self.test_fraction < 1,
             f"val_fraction plus test_fraction must stay below 1, not {self.val_fraction + self.test_fraction:g}"),
        ]
        for ok, message in checks:
            if not ok:
                raise StudioError(f"Invalid config: {message}.")

    def _check_from_scratch(self) -> None:
        """A from-scratch backbone: refuse every setting that only makes sense for a pretrained base."""
        problems = []
        if self.weights is not None:
            problems.append(f"weights {shown_value(self.weights)}: it has no pretrained weights (set weights to null, "
                            "--weights none, or leave it out)")
        if self.head_mode != "images":
            problems.append(f"head_mode {shown_value(self.head_mode)}: a random base gives no features worth fitting "
                            "a head on; the whole network trains over images from the first epoch (set head_mode "
                            "to 'images' or leave it out)")
        if self.finetune_epochs:
            problems.append(f"finetune_epochs {self.finetune_epochs}: there is no frozen phase to fine-tune after, "
                            "every layer trains from the first epoch (set finetune_epochs to 0 or leave it out; "
                            "head_epochs sets its epochs)")
        if self.head_epochs < 1:
            problems.append("head_epochs 0: its epochs over the whole network are all the training it gets (set "
                            "head_epochs to 1 or more)")
        if problems:
            raise StudioError(f"Invalid config: {self.backbone} trains from random initialisation, "
                              "so it cannot take " + "; ".join(problems) + ".")

    @property
    def from_scratch(self) -> bool:
        """Whether the backbone trains whole from random initialisation (no frozen base, no fine-tuning)."""
        from core.base.backbones import get_backbone

        return get_backbone(self.backbone).from_scratch

    def resolved_finetune_epochs(self, accelerator: str) -> int:
        """Fine-tuning epochs for this device ("cpu" or "gpu") when left on auto (never any from scratch)."""
        if self.finetune_epochs is not None:
            return int(self.finetune_epochs)
        return 0 if self.from_scratch else default_finetune_epochs(accelerator)

    @property
    def resolved_image_size(self) -> int:
        from core.base.backbones import get_backbone

        return int(self.image_size or get_backbone(self.backbone).recipe_size)


def backbone_defaults(backbone: str) -> dict[str, Any]:
    """The settings whose default depends on the backbone, for this one: SCRATCH_DEFAULTS for a from-scratch
    backbone, nothing for a pretrained one (or an unknown name, which validate() refuses with a suggestion)."""
    from core.base.backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    return dict(SCRATCH_DEFAULTS) if spec is not None and spec.from_scratch else {}


def all_defaults(backbone: str, preset: str = TrainConfig.preset) -> dict[str, Any]:
    """Every setting's default for this backbone under `preset` (what a form should start from)."""
    return {**TrainConfig().to_dict(), **preset_settings(preset, backbone), **backbone_defaults(backbone),
            "backbone": backbone, "preset": preset}


def read_config_file(path: Path | str) -> dict[str, Any]:
    """A config file's settings (a run's saved config.json works too: its records of what ran are dropped)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudioError(f"{path}: config file not found.") from None
    except json.JSONDecodeError as err:
        raise StudioError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}).") from None
    except (UnicodeDecodeError, RecursionError):
        raise StudioError(f"{path}: not a JSON text file (or nested too deeply).") from None
    except OSError as err:
        raise StudioError(f"{path}: cannot be read ({err.strerror or type(err).__name__}).") from None
    if not isinstance(values, dict):
        raise StudioError(f"{path}: the config must be a JSON object.")
    values.pop("versions", None)
    values.pop("resolved", None)
    return values
