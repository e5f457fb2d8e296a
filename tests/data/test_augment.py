"""Augmentation specs: presets build, bad specs say exactly what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import StudioError
from core.data.augment import PRESETS, build_pipeline, describe_spec, resolve_spec


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_build_and_keep_shape(preset: str):
    spec = resolve_spec(preset)
    assert json.loads(json.dumps(spec)) == spec  # JSON-serialisable, as saved in config.json
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    out = build_pipeline(spec, seed=1)(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.uint8


def test_seed_preset_matches_the_recipe():
    names = [entry["name"] for entry in resolve_spec("seed")]
    assert names == ["HorizontalFlip", "Rotate", "OneOf", "CoarseDropout"]
    one_of = resolve_spec("seed")[2]
    assert [t["name"] for t in one_of["transforms"]] == ["Sharpen", "Emboss", "RandomBrightnessContrast"]
    dropout = resolve_spec("seed")[3]
    assert dropout["params"]["num_holes_range"] == [5, 5]


def test_pipeline_changes_images_when_p_is_one():
    spec = [{"name": "HorizontalFlip", "p": 1.0}]
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    assert np.array_equal(build_pipeline(spec)(image=image)["image"], image[:, ::-1])


@pytest.mark.parametrize("spec, message", [
    ("strong", "Unknown augmentation preset 'strong'"),
    ([{"name": "Rotat", "p": 0.5}], "unknown transform 'Rotat' (did you mean 'Rotate'?)"),
    ([{"name": "Rotate", "params": {"limt": 10}}], "(Rotate): unknown parameter 'limt' (did you mean 'limit'?)"),
    ([{"name": "Rotate", "p": 1.5}], "(Rotate): probability p=1.5 must be a number from 0 to 1"),
    ([{"name": "CoarseDropout", "params": {"num_holes_range": [5, -1]}}], "(CoarseDropout): num_holes_range=[5, -1] is out of range"),
    ([{"name": "OneOf", "transforms": []}], "(OneOf): needs a non-empty 'transforms' list"),
    ([{"name": "OneOf", "transforms": [{"name": "Nope"}]}], "transform 1.1: unknown transform 'Nope'"),
    ([{"p": 0.5}], "expected an object with a 'name'"),
    ({"name": "Rotate"}, "must be a preset name or a list"),
])
def test_invalid_specs_name_the_transform_and_parameter(spec, message):
    with pytest.raises(StudioError) as err:
        resolve_spec(spec)
    assert message in str(err.value)


def test_arbitrary_classes_cannot_be_named():
    with pytest.raises(StudioError, match="unknown transform 'Lambda'"):
        resolve_spec([{"name": "Lambda", "params": {"image": "os.system"}}])


def test_describe_spec():
    assert describe_spec([]) == "no augmentation"
    assert describe_spec(resolve_spec("light")).startswith("HorizontalFlip p=0.5")


@pytest.mark.parametrize("spec, message", [
    ([{"name": "RandomResizedCrop", "p": 1, "params": {"size": [12000, 12000]}}], "from 8 to 1024"),
    ([{"name": "Affine", "p": 1, "params": {"scale": [30, 30], "fit_output": True}}], "from 0.1 to 4"),
    ([{"name": "Affine", "p": 1, "params": {"scale": [1, 1], "fit_output": True}}], "'fit_output' is not allowed"),
    ([{"name": "SomeOf", "p": 1, "params": {"n": 100000}, "transforms": [{"name": "HorizontalFlip"}]}],
     "out of range"),
    ([{"name": "SomeOf", "p": 1, "params": {"n": 3}, "transforms": [{"name": "HorizontalFlip"}]}],
     "n=3 must be from 1 to the number of its transforms (1)"),
    ([{"name": "SomeOf", "p": 1, "params": {"n": "two"}, "transforms": [{"name": "HorizontalFlip"}]}],
     "SomeOf): invalid parameters"),
    ([{"name": "OneOf", "p": 1, "params": {"bogus": 1}, "transforms": [{"name": "HorizontalFlip"}]}],
     "may only hold 'n'"),
    ([{"name": "HorizontalFlip"}] * 33, "more than 32 transforms"),
    ([{"name": "OneOf", "transforms": [{"name": "OneOf", "transforms": [{"name": "OneOf", "transforms": [
        {"name": "OneOf", "transforms": [{"name": "HorizontalFlip"}]}]}]}]}], "nested 3 deep at most"),
])
def test_specs_too_big_to_run_safely_are_refused_in_words(spec, message):
    """Each of these once ran in the server's preview: 12000 px crops and scale-30 affines took the server's
    memory, SomeOf n=100000 seconds of CPU per visit, bad group params a TypeError traceback."""
    with pytest.raises(StudioError) as err:
        resolve_spec(spec)
    assert message in str(err.value)


def test_a_crop_must_keep_the_training_size():
    from core.data.augment import check_output_size

    spec = resolve_spec([{"name": "RandomResizedCrop", "p": 1, "params": {"size": [224, 224]}}])
    check_output_size(spec, 224)
    with pytest.raises(StudioError, match=r"must equal the training image size \[288, 288\]"):
        check_output_size(spec, 288)
