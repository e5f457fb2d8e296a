"""Config defaults: the 'auto' fine-tuning rule is one rule for the CLI and the app."""

from __future__ import annotations

import pytest

from core import StudioError
from core.base.config import GPU_FINETUNE_EPOCHS, TrainConfig
from core.training.jobs import progress, recommended_settings


def test_auto_finetune_depends_on_the_device():
    config = TrainConfig(data="x")
    assert config.finetune_epochs is None
    assert config.resolved_finetune_epochs("cpu") == 0
    assert config.resolved_finetune_epochs("gpu") == GPU_FINETUNE_EPOCHS
    assert TrainConfig(data="x", finetune_epochs=2).resolved_finetune_epochs("cpu") == 2


def test_ui_settings_are_numbers_on_every_device():
    assert recommended_settings("gpu") == {"finetune_epochs": GPU_FINETUNE_EPOCHS}
    assert recommended_settings("cpu") == {"finetune_epochs": 0}


def test_unknown_and_invalid_keys_are_refused():
    with pytest.raises(StudioError, match="did you mean 'head_epochs'"):
        TrainConfig.from_dict({"data": "x", "head_epoch": 3})
    with pytest.raises(StudioError, match="at least one epoch"):
        TrainConfig.from_dict({"data": "x", "head_epochs": 0, "finetune_epochs": 0})
