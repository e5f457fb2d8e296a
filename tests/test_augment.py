"""Augmentation specs: presets build, bad specs say exactly what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import StudioError
from core.augment import PRESETS, build_pipeline, describe_spec, resolve_spec


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
    ([{"name": "CoarseDropout", "params": {"num_holes_range": [5, -1]}}], "(CoarseDropout): invalid parameters"),
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
