"""The backbone registry: native sizes, loud failures, and a clear message when weights can't be had."""

from __future__ import annotations

import pytest

from core import StudioError
from core.base.backbones import BACKBONES, create_backbone, get_backbone
from core.network.model import build_classifier, set_finetune_trainable


def test_registry_has_every_variant_at_native_size():
    sizes = {name: b.native_size for name, b in BACKBONES.items()}
    assert [sizes[f"efficientnet_b{i}"] for i in range(8)] == [224, 240, 260, 300, 380, 456, 528, 600]
    assert {n for n in sizes if n.startswith("efficientnet_v2")} == {
        "efficientnet_v2_b0", "efficientnet_v2_b1", "efficientnet_v2_b2", "efficientnet_v2_b3", "efficientnet_v2_s"}
    assert sizes["efficientnet_lite0"] == 224


def test_unknown_backbone_suggests_a_name():
    with pytest.raises(StudioError, match="Did you mean 'efficientnet_b0'"):
        get_backbone("efficientnet-b0")


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_v2_b0"])
def test_random_init_builds_at_small_size(name: str):
    base = create_backbone(name, image_size=64, weights=None)
    assert base.output_shape[1:3] == (2, 2)


def test_missing_imagenet_weights_name_the_file_and_folder(tmp_path, monkeypatch):
    """Offline and not cached: the error says which file, and where to put it; no silent random weights."""
    import keras.src.utils.file_utils as file_utils

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] "
                        "Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(StudioError) as err:
        create_backbone("efficientnet_b0", image_size=64, weights="imagenet")
    message = str(err.value)
    assert "efficientnetb0_notop.h5" in message and str(tmp_path / "keras" / "models") in message
    assert "efficientnet_lite0" in message


def test_finetune_unfreezes_top_stages_but_not_batchnorm():
    import keras

    model = build_classifier(create_backbone("efficientnet_b0", 64, weights=None), 3)
    set_finetune_trainable(model, unfreeze_stages=2)
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert "top_conv" in trainable and any(n.startswith("block7a") for n in trainable)
    assert any(n.startswith("block6") for n in trainable) and not any(n.startswith("block5") for n in trainable)
    assert not any(isinstance(base.get_layer(n), keras.layers.BatchNormalization) for n in trainable)
