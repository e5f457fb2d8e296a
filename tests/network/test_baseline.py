"""The from-scratch baseline CNN (issue 20): it builds like any backbone, trains whole from random initialisation
through the same recipe, data and run folder, and the optimizer choice reaches the compiled model."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core import StudioError
from core.base.backbones import BACKBONES, create_backbone
from core.base.config import TrainConfig
from core.base.runs import RunDir
from core.network.model import build_classifier


@pytest.mark.parametrize("size", [32, 64, 128])
def test_builds_at_a_few_sizes_and_takes_pixels_0_to_255(size: int):
    base = create_backbone("baseline_cnn", size, weights=None)
    assert base.output_shape[1:] == (size // 8, size // 8, 256)  # three pools; the last block keeps its grid
    assert base.layers[1].name == "rescale" and base.layers[1].scale == pytest.approx(1 / 255)
    assert not any(layer.name.startswith("block") for layer in base.layers)  # no EfficientNet stage to find
    model = build_classifier(base, 3)
    pixels = np.random.default_rng(size).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    probs = np.asarray(model(pixels, training=False))
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_is_in_the_registry_and_has_no_pretrained_weights():
    spec = BACKBONES["baseline_cnn"]
    assert spec.from_scratch and spec.notes == ("a small CNN trained from scratch: the baseline that shows what "
                                                "pretrained weights buy")
    with pytest.raises(StudioError, match="no pretrained weights"):
        create_backbone("baseline_cnn", 64, weights="imagenet")
    with pytest.raises(StudioError, match="too small"):
        create_backbone("baseline_cnn", 16, weights=None)


def test_its_settings_follow_the_backbone_and_contradictions_are_refused():
    config = TrainConfig.from_dict({"data": "photos", "backbone": "baseline_cnn"})
    assert (config.weights, config.head_mode, config.finetune_epochs, config.head_epochs,
            config.early_stopping_patience) == (None, "images", 0, 50, 8)
    assert config.resolved_finetune_epochs("gpu") == 0
    for wrong, said in (({"weights": "imagenet"}, "no pretrained weights"),
                        ({"head_mode": "features"}, "no features worth fitting a head on"),
                        ({"finetune_epochs": 3}, "no frozen phase to fine-tune after"),
                        ({"head_epochs": 0}, "set head_epochs to 1 or more"),
                        ({"optimizer": "rmsprop"}, "optimizer must be 'adam' or 'sgd'")):
        with pytest.raises(StudioError, match=said):
            TrainConfig.from_dict({"data": "photos", "backbone": "baseline_cnn", **wrong})
    # A pair's other half: settings left at one backbone's defaults take the other's, hand-set ones stay.
    transfer = TrainConfig.from_dict({"data": "photos", "seed": 7, "optimizer": "sgd"})
    scratch = transfer.with_backbone("baseline_cnn")
    assert (scratch.weights, scratch.head_mode, scratch.seed, scratch.optimizer) == (None, "images", 7, "sgd")
    assert scratch.with_backbone("efficientnet_lite0") == transfer


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory, flowers_dir: Path) -> RunDir:
    """The baseline trained from scratch on flowers-mini at 64 px for 3 epochs, through run_training."""
    from core.training.train import run_training

    config = TrainConfig.from_dict({"data": str(flowers_dir), "backbone": "baseline_cnn", "image_size": 64,
                                    "head_epochs": 3})
    return run_training(config, models_dir=tmp_path_factory.mktemp("models"))


def _compiled_optimizer(run: RunDir) -> dict:
    """The optimizer model.keras was compiled with (its saved compile config)."""
    with zipfile.ZipFile(run.file("model.keras")) as archive:
        return json.loads(archive.read("config.json"))["compile_config"]["optimizer"]


def test_trains_from_scratch_into_a_normal_run_folder(scratch_run: RunDir):
    run = scratch_run
    assert run.read_status()["state"] == "succeeded"
    for name in ("model.keras", "evaluation.json", "classes.json", "split.json", "metrics.jsonl"):
        assert run.file(name).is_file(), name
    evaluation = run.read_evaluation()
    assert evaluation["images"] == 80 and evaluation["split"] == "val"
    config = run.read_config()
    resolved = config["resolved"]
    assert (config["backbone"], config["weights"], config["head_mode"]) == ("baseline_cnn", None, "images")
    assert resolved["recipe"] == "from scratch" and resolved["weights"] is None and resolved["finetune_epochs"] == 0
    assert resolved["optimizer"] == {"name": "adam", "phases": ["scratch"], "learning_rate": 1e-3}
    # One phase of epochs over every layer: no frozen features, no head fit, no fine-tuning.
    kinds = {(m.get("kind"), m.get("phase")) for m in run.read_metrics()}
    assert ("epoch", "scratch") in kinds and not any(phase in ("head", "finetune", "head_fit", "features")
                                                     for kind, phase in kinds if kind != "phase")
    assert [p["name"] for p in run.read_status()["phases"]] == ["prepare", "decode", "scratch", "save", "evaluate"]
    assert run.read_status()["phases"][2]["label"] == "Training the whole network from scratch"
    assert _compiled_optimizer(run)["class_name"] == "Adam"


def test_every_layer_trained_and_the_heatmap_is_exact(scratch_run: RunDir, flowers_dir: Path):
    """BatchNorm of the first block learned this data's statistics (a frozen base would keep 0 and 1), and the class
    activation map of the saved model averages to its logits, as for an EfficientNet."""
    from core.data.images import load_for_model
    from core.results.cam import class_activation_maps
    from core.results.evaluate import load_run_model
    from core.network.model import base_of

    model = load_run_model(scratch_run)
    bn = base_of(model).get_layer("stage1_bn")
    assert np.abs(np.asarray(bn.moving_mean)).max() > 1e-3
    assert np.abs(np.asarray(bn.moving_variance) - 1).max() > 1e-3
    image = load_for_model(next((flowers_dir / "val" / "roses").glob("*.jpg")), 64)
    maps = class_activation_maps(model, image)
    assert maps.shape == (5, 8, 8)
    logits = maps.mean(axis=(1, 2))
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.allclose(softmax, np.asarray(model(image[None], training=False))[0], atol=1e-4)


def test_sgd_with_momentum_reaches_the_compiled_model(tmp_path: Path, small_dataset: Path):
    from core.training.train import run_training

    config = TrainConfig.from_dict({"data": str(small_dataset), "backbone": "baseline_cnn", "image_size": 32,
                                    "head_epochs": 1, "optimizer": "sgd", "head_lr": 0.01})
    run = run_training(config, models_dir=tmp_path)
    optimizer = _compiled_optimizer(run)
    assert optimizer["class_name"] == "SGD"
    assert optimizer["config"]["momentum"] == pytest.approx(0.9)
    assert optimizer["config"]["learning_rate"] == pytest.approx(0.01)
    assert run.read_config()["resolved"]["optimizer"] == {"name": "sgd", "momentum": 0.9, "phases": ["scratch"],
                                                          "learning_rate": 0.01}


def test_the_transfer_recipe_records_where_the_optimizer_acts():
    """The exact head fit uses no gradient optimizer: config.json says so rather than name one that never ran."""
    from core.training.train import recipe_record

    fitted = recipe_record(TrainConfig.from_dict({"data": "photos", "optimizer": "sgd"}), finetune_epochs=0)
    assert fitted["recipe"] == "transfer" and fitted["optimizer"]["phases"] == []
    assert "not used" in fitted["optimizer"]["note"]
    tuned = recipe_record(TrainConfig.from_dict({"data": "photos", "head_mode": "images"}), finetune_epochs=2)
    assert tuned["optimizer"] == {"name": "adam", "phases": ["head", "finetune"]}
    assert tuned["trainable"].endswith("then the top 2 stages (BatchNorm frozen)")
