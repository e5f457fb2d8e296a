"""Config defaults: the 'auto' fine-tuning rule is one rule for the CLI and the app."""

from __future__ import annotations

import pytest

from core import StudioError
from core.base.config import GPU_FINETUNE_EPOCHS, PRESETS, TrainConfig, default_preset
from core.training.jobs import progress


def test_auto_finetune_depends_on_the_device():
    config = TrainConfig(data="x")
    assert config.finetune_epochs is None
    assert config.resolved_finetune_epochs("cpu") == 0
    assert config.resolved_finetune_epochs("gpu") == GPU_FINETUNE_EPOCHS
    assert TrainConfig(data="x", finetune_epochs=2).resolved_finetune_epochs("cpu") == 2


def test_a_preset_fills_the_settings_not_given_and_a_setting_given_wins():
    quick = TrainConfig.from_dict({"data": "x"})
    assert quick.preset == "quick" and quick.finetune_epochs == 0  # Quick never fine-tunes, on any device
    best = TrainConfig.from_dict({"data": "x", "preset": "best"})
    assert best.finetune_epochs == PRESETS["best"]["finetune_epochs"] > 0
    assert all(getattr(best, key) == value for key, value in PRESETS["best"].items())
    assert TrainConfig.from_dict({"data": "x", "preset": "best", "finetune_epochs": 2}).finetune_epochs == 2
    # a from-scratch backbone has nothing to fine-tune: its own defaults decide, and the preset is only recorded
    scratch = TrainConfig.from_dict({"data": "x", "preset": "best", "backbone": "baseline_cnn"})
    assert scratch.finetune_epochs == 0 and scratch.head_mode == "images"
    with pytest.raises(StudioError, match="preset must be 'quick' or 'best', not \"fast\""):
        TrainConfig.from_dict({"data": "x", "preset": "fast"})


def test_best_is_the_default_preset_on_a_gpu_and_quick_on_a_cpu():
    assert default_preset("gpu") == "best" and default_preset("cpu") == "quick"


def test_unknown_and_invalid_keys_are_refused():
    with pytest.raises(StudioError, match="did you mean 'head_epochs'"):
        TrainConfig.from_dict({"data": "x", "head_epoch": 3})
    with pytest.raises(StudioError, match="at least one epoch"):
        TrainConfig.from_dict({"data": "x", "head_epochs": 0, "finetune_epochs": 0})
