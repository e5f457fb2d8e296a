"""Pictures for the pages: example images per class, and augmented copies of them."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.data.datasets import Dataset
from core.data.images import ImageError, read_image


def examples_per_class(dataset: Dataset, per_class: int = 6, seed: int = 0) -> dict[str, list[str]]:
    """Up to `per_class` relative image paths of each class, chosen reproducibly by `seed`."""
    rng = random.Random(seed)
    chosen: dict[str, list[str]] = {}
    for index, name in enumerate(dataset.classes):
        paths = [s.path for s in dataset.samples if s.label == index]
        chosen[name] = sorted(rng.sample(paths, min(per_class, len(paths))))
    return chosen


def thumbnail(path: Path | str, size: int = 160) -> np.ndarray | None:
    """A square `size` x `size` thumbnail cropped from the centre (tidy grids), or None when unreadable."""
    import cv2

    try:
        image = read_image(path, target_size=size)
    except ImageError:
        return None
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top:top + side, left:left + side]
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


def augmented_copies(image: np.ndarray, spec: list[dict[str, Any]], count: int, seed: int) -> list[np.ndarray]:
    """`count` augmented versions of one image with the training pipeline; the same seed draws the same copies."""
    from core.data.augment import build_pipeline

    pipeline = build_pipeline(spec, seed=seed)
    return [pipeline(image=image)["image"] for _ in range(count)]


def preview_images(dataset: Dataset, rows: int, seed: int) -> list[str]:
    """Relative paths of `rows` images for the augmentation preview, spread over the classes."""
    per_class = examples_per_class(dataset, per_class=max(1, -(-rows // max(1, len(dataset.classes)))), seed=seed)
    interleaved = [paths[i] for i in range(max(map(len, per_class.values()), default=0))
                   for paths in per_class.values() if i < len(paths)]
    return interleaved[:rows]


def mistakes_with_images(mistakes: Sequence[dict[str, Any]], root: Path | None) -> list[dict[str, Any]]:
    """Mistakes whose image file still exists, with its absolute path added (moved datasets show no picture)."""
    if root is None:
        return []
    found = []
    for mistake in mistakes:
        path = Path(root) / mistake["path"]
        if path.is_file():
            found.append({**mistake, "file": path})
    return found


# The transforms the Augment page offers as switches, with the one or two parameters worth a slider each:
# parameter -> (default, minimum, maximum, step). Everything else stays at albumentations' defaults; any spec
# (groups such as OneOf included) can still be given as JSON.
EDITABLE_TRANSFORMS: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "HorizontalFlip": {},
    "VerticalFlip": {},
    "Rotate": {"limit": (15, 0, 90, 5)},
    "RandomBrightnessContrast": {"brightness_limit": (0.2, 0.0, 0.5, 0.05), "contrast_limit": (0.2, 0.0, 0.5, 0.05)},
    "HueSaturationValue": {"hue_shift_limit": (10, 0, 50, 5), "sat_shift_limit": (20, 0, 60, 5)},
    "GaussianBlur": {"sigma_limit": (1.5, 0.5, 5.0, 0.5)},
    "GaussNoise": {},
    "CoarseDropout": {},
    "Perspective": {"scale": (0.08, 0.02, 0.2, 0.02)},
    "ToGray": {},
    "Sharpen": {},
    "CLAHE": {},
}


def editable_state(spec: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Switch values for the editor from a spec: {name: {"enabled", "p", "params"}} for each editable transform."""
    given = {entry.get("name"): entry for entry in spec}
    state = {}
    for name, params in EDITABLE_TRANSFORMS.items():
        entry = given.get(name, {})
        values = {key: entry.get("params", {}).get(key, default[0]) for key, default in params.items()}
        values = {k: (v if isinstance(v, (int, float)) else default_of(name, k)) for k, v in values.items()}
        state[name] = {"enabled": name in given, "p": float(entry.get("p", 0.5)), "params": values}
    return state


def default_of(name: str, param: str) -> float:
    """The editor's default for one parameter (used when a spec gives a range the slider cannot show)."""
    return EDITABLE_TRANSFORMS[name][param][0]


def spec_from_editor(choices: dict[str, dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A spec from the editor's switches, keeping `extra` entries (e.g. OneOf groups) it cannot show."""
    spec = []
    for name, choice in choices.items():
        if choice["enabled"]:
            entry: dict[str, Any] = {"name": name, "p": round(float(choice["p"]), 3)}
            if choice["params"]:
                entry["params"] = dict(choice["params"])
            spec.append(entry)
    return spec + list(extra)
