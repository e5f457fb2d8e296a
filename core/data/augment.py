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

# Bounds on what a spec may ask for. A spec can come from a visitor's browser and its preview runs in the server
# process, so no number in it may be large enough to take the server's memory or CPU: a RandomResizedCrop of
# 12000x12000, an Affine scale of 30 with fit_output, or SomeOf with n=100000 each did. The limits are far above
# anything useful for photos of at most 1,024 px (the largest training size).
MAX_ENTRIES = 32           # transforms in a spec, groups' members included
MAX_DEPTH = 3              # groups inside groups
MAX_NUMBER = 1024          # any number in any parameter (sizes in pixels, counts, limits)
PARAM_LIMITS: dict[tuple[str, str], tuple[float, float]] = {  # (transform, parameter) -> allowed range
    ("RandomResizedCrop", "size"): (8, 1024),
    ("Affine", "scale"): (0.1, 4.0),
    ("ShiftScaleRotate", "scale_limit"): (-0.9, 3.0),
    ("Rotate", "limit"): (-360, 360),
    ("Affine", "rotate"): (-360, 360),
    ("CoarseDropout", "num_holes_range"): (1, 64),
    ("GaussianBlur", "blur_limit"): (0, 63),
    ("MotionBlur", "blur_limit"): (3, 63),
    ("GaussianBlur", "sigma_limit"): (0, 20),
    ("CLAHE", "tile_grid_size"): (1, 32),
    ("Perspective", "scale"): (0, 1),
}
FORBIDDEN_PARAMS = {("Affine", "fit_output"): "it makes the output larger than the photo",
                    ("Perspective", "fit_output"): "it makes the output larger than the photo"}

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
    check_bounds(spec)
    return A.Compose([_build_entry(entry, f"transform {i + 1}") for i, entry in enumerate(spec)], seed=seed)


def check_bounds(spec: list[Any]) -> None:
    """Refuse, with the transform and the limit named, a spec too big to be safe to run (see PARAM_LIMITS)."""
    count = 0

    def visit(entry: Any, where: str, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_ENTRIES:
            raise StudioError(f"Augmentation: more than {MAX_ENTRIES} transforms in one spec; use fewer.")
        if not isinstance(entry, dict):
            return  # _build_entry says what is wrong with it
        name = entry.get("name")
        params = entry.get("params") if isinstance(entry.get("params"), dict) else {}
        for key, value in params.items():
            if (name, key) in FORBIDDEN_PARAMS and value:
                raise StudioError(f"Augmentation {where} ({name}): '{key}' is not allowed: "
                                  f"{FORBIDDEN_PARAMS[(name, key)]}.")
            low, high = PARAM_LIMITS.get((name, key), (-MAX_NUMBER, MAX_NUMBER))
            for number in _numbers(value):
                if not low <= number <= high:
                    raise StudioError(f"Augmentation {where} ({name}): {key}={value!r} is out of range; each "
                                      f"value must be from {low:g} to {high:g}.")
        if name in GROUPS:
            if depth > MAX_DEPTH:
                raise StudioError(f"Augmentation {where} ({name}): groups may be nested {MAX_DEPTH} deep at most.")
            children = entry.get("transforms") if isinstance(entry.get("transforms"), list) else []
            n = params.get("n", 1)
            if name == "SomeOf" and isinstance(n, (int, float)) and not 1 <= n <= len(children):
                raise StudioError(f"Augmentation {where} (SomeOf): n={n!r} must be from 1 to the number of its "
                                  f"transforms ({len(children)}).")
            for j, child in enumerate(children):
                visit(child, f"{where}.{j + 1}", depth + 1)

    for i, entry in enumerate(spec):
        visit(entry, f"transform {i + 1}", 1)


def check_output_size(spec: list[dict[str, Any]], image_size: int) -> None:
    """Training stacks augmented images into batches of one size: a crop to any other size cannot train."""
    def visit(entry: dict[str, Any], where: str) -> None:
        size = (entry.get("params") or {}).get("size")
        if entry.get("name") == "RandomResizedCrop" and size is not None and list(size) != [image_size] * 2:
            raise StudioError(f"Augmentation {where} (RandomResizedCrop): size={size} must equal the training "
                              f"image size [{image_size}, {image_size}].")
        for j, child in enumerate(entry.get("transforms") or []):
            visit(child, f"{where}.{j + 1}")

    for i, entry in enumerate(spec):
        visit(entry, f"transform {i + 1}")


def _numbers(value: Any) -> list[float]:
    """Every number in a parameter value (a number, or a list/range of them); booleans are not numbers."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _numbers(item)]
    if isinstance(value, dict):
        return [n for item in value.values() for n in _numbers(item)]
    return []


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
        params = entry.get("params") or {}
        if not isinstance(params, dict) or set(params) - {"n", "replace"}:
            raise StudioError(f"Augmentation {where} ({name}): its 'params' may only hold 'n' (SomeOf) and "
                              f"'replace', not {params!r}.")
        try:
            return GROUPS[name](built, p=float(p), **params)
        except Exception as err:  # e.g. n given as text: a sentence, not a TypeError traceback
            raise StudioError(f"Augmentation {where} ({name}): invalid parameters {params}: {_first_line(err)}") \
                from None
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
