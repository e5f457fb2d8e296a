"""Augmentation specs: plain JSON lists <-> albumentations pipelines, built once per run."""

from __future__ import annotations

import copy
import difflib
import inspect
from typing import Any

import albumentations as A

from core import StudioError

# Only these transforms may be named in a spec: a spec can come from a browser, so it never names arbitrary classes.
ALLOWED_TRANSFORMS: dict[str, type] = {
    cls.__name__: cls for cls in (
        A.HorizontalFlip, A.VerticalFlip, A.Rotate, A.Affine, A.ShiftScaleRotate, A.RandomBrightnessContrast,
        A.HueSaturationValue, A.ColorJitter, A.Sharpen, A.Emboss, A.CoarseDropout, A.GaussianBlur,
        A.GaussNoise, A.MotionBlur, A.CLAHE, A.ToGray, A.RandomGamma, A.Perspective, A.RandomResizedCrop,
    )
}
GROUPS = {"OneOf": A.OneOf, "SomeOf": A.SomeOf}

PRESETS: dict[str, list[dict[str, Any]]] = {
    "none": [],
    # Small geometric and photometric changes that keep every class recognisable.
    "light": [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "Affine", "p": 0.5, "params": {"scale": [0.9, 1.1], "translate_percent": [-0.05, 0.05],
                                                   "rotate": [-10, 10]}},
        {"name": "RandomBrightnessContrast", "p": 0.5, "params": {"brightness_limit": 0.15, "contrast_limit": 0.15}},
    ],
    # The recipe from the seed notebooks: flip, rotate up to 15 degrees, one texture change, cut-out holes.
    "seed": [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "Rotate", "p": 0.5, "params": {"limit": 15}},
        {"name": "OneOf", "p": 0.5, "transforms": [
            {"name": "Sharpen", "p": 1.0},
            {"name": "Emboss", "p": 1.0},
            {"name": "RandomBrightnessContrast", "p": 1.0},
        ]},
        {"name": "CoarseDropout", "p": 0.5, "params": {"num_holes_range": [5, 5], "hole_height_range": [0.04, 0.1],
                                                          "hole_width_range": [0.04, 0.1]}},
    ],
}


def resolve_spec(spec: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """A preset name or an explicit list -> an explicit, validated list (what gets saved in the run)."""
    if spec is None:
        return []
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise StudioError(f"Unknown augmentation preset '{spec}'{_did_you_mean(spec, PRESETS)}; "
                              f"choose one of {', '.join(PRESETS)}.")
        spec = PRESETS[spec]
    if not isinstance(spec, list):
        raise StudioError("An augmentation spec must be a preset name or a list of transforms.")
    spec = copy.deepcopy(spec)
    build_pipeline(spec)  # validates every entry with albumentations' own checks
    return spec


def build_pipeline(spec: list[dict[str, Any]], seed: int | None = None) -> A.Compose:
    """Build the albumentations pipeline once; raises StudioError naming the bad transform and parameter."""
    return A.Compose([_build_entry(entry, f"transform {i + 1}") for i, entry in enumerate(spec)], seed=seed)


def _build_entry(entry: Any, where: str) -> A.BasicTransform:
    if not isinstance(entry, dict) or "name" not in entry:
        raise StudioError(f"Augmentation {where}: expected an object with a 'name', got {entry!r}.")
    name = entry["name"]
    unknown_keys = set(entry) - {"name", "p", "params", "transforms", "enabled"}
    if unknown_keys:
        raise StudioError(f"Augmentation {where} ({name}): unknown key(s) {sorted(unknown_keys)}; "
                          "use 'name', 'p', 'params' and, for OneOf/SomeOf, 'transforms'.")
    p = entry.get("p", 0.5)
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= float(p) <= 1.0:
        raise StudioError(f"Augmentation {where} ({name}): probability p={p!r} must be a number from 0 to 1.")
    if name in GROUPS:
        children = entry.get("transforms")
        if not isinstance(children, list) or not children:
            raise StudioError(f"Augmentation {where} ({name}): needs a non-empty 'transforms' list.")
        built = [_build_entry(child, f"{where}.{j + 1}") for j, child in enumerate(children)]
        params = dict(entry.get("params") or {})
        return GROUPS[name](built, p=float(p), **params)
    if name not in ALLOWED_TRANSFORMS:
        raise StudioError(f"Augmentation {where}: unknown transform '{name}'"
                          f"{_did_you_mean(name, list(ALLOWED_TRANSFORMS) + list(GROUPS))}.")
    cls = ALLOWED_TRANSFORMS[name]
    params = entry.get("params") or {}
    if not isinstance(params, dict):
        raise StudioError(f"Augmentation {where} ({name}): 'params' must be an object of parameter values.")
    allowed = [k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "p")]
    for key in params:
        if key not in allowed:
            raise StudioError(f"Augmentation {where} ({name}): unknown parameter '{key}'"
                              f"{_did_you_mean(key, allowed)}; it accepts {', '.join(allowed)}.")
    try:
        return cls(p=float(p), **{k: _tuples(v) for k, v in params.items()})
    except Exception as err:  # albumentations validates with pydantic and raises its own errors
        raise StudioError(f"Augmentation {where} ({name}): invalid parameters {params}: {_first_line(err)}") from None


def _tuples(value: Any) -> Any:
    """JSON has no tuples; albumentations wants ranges as tuples."""
    return tuple(value) if isinstance(value, list) else value


def _did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # pydantic puts the useful part ("Input should be ...") on the second or third line
    return "; ".join(lines[:3])[:300] if lines else type(err).__name__


def describe_spec(spec: list[dict[str, Any]]) -> str:
    """A one-line human summary, e.g. 'HorizontalFlip p=0.5, Rotate p=0.5'."""
    return ", ".join(f"{e['name']} p={e.get('p', 0.5)}" for e in spec) or "no augmentation"
