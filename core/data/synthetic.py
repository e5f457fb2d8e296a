"""Generated labelled photo folders, for scale benchmarks and tests that need thousands of files.

The images are deliberately unlike ImageNet: each class is a family of textures (stripes at a class-specific
angle and frequency, blobs of a class-specific palette) with noise, random crops, sizes and aspect ratios, saved as
JPEG like camera photos. Classes overlap (shared palettes, random contrast), so a classifier has work to do and a
folder of 20,000 of them decodes like a real one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

DEFAULT_CLASSES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")


def synthetic_image(class_index: int, num_classes: int, rng: np.random.Generator,
                    width: int = 320, height: int = 240) -> np.ndarray:
    """One BGR uint8 image of class `class_index`: class-specific stripes and blobs over noise."""
    import cv2

    angle = np.pi * class_index / num_classes + rng.normal(0, 0.15)
    frequency = 0.04 + 0.02 * (class_index % 3) + rng.normal(0, 0.004)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * frequency * 2 * np.pi + rng.uniform(0, 6.3))
    hue = (class_index * 180 // num_classes + rng.integers(-12, 13)) % 180
    base = np.empty((height, width, 3), np.uint8)
    base[..., 0] = hue
    base[..., 1] = rng.integers(60, 200)
    base[..., 2] = np.clip(128 + rng.uniform(30, 90) * stripes, 0, 255).astype(np.uint8)
    image = cv2.cvtColor(base, cv2.COLOR_HSV2BGR)
    for _ in range(int(rng.integers(2, 7))):  # blobs: palette of a neighbouring class now and then
        other = (class_index + int(rng.integers(0, 2))) % num_classes
        colour = tuple(int(c) for c in rng.integers(0, 256, 3)) if rng.random() < 0.3 else \
            tuple(int(c) for c in cv2.cvtColor(np.uint8([[[other * 180 // num_classes, 200, 220]]]),
                                               cv2.COLOR_HSV2BGR)[0, 0])
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(8, width // 3)), int(rng.integers(8, height // 3)))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    noise = rng.normal(0, 18, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def make_dataset(root: Path | str, images: int, classes: tuple[str, ...] = DEFAULT_CLASSES, seed: int = 0,
                 imbalance: float = 0.0, threads: int | None = None) -> Path:
    """Write `images` JPEGs into `root/<class>/`; with `imbalance` > 0 later classes get fewer (geometric).

    Deterministic for a seed. Returns `root`.
    """
    import cv2

    root = Path(root)
    shares = np.array([(1.0 - imbalance) ** i for i in range(len(classes))])
    counts = np.floor(shares / shares.sum() * images).astype(int)
    counts[0] += images - counts.sum()
    jobs = [(c, i) for c, n in enumerate(counts) for i in range(n)]
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)

    def write(job: tuple[int, int]) -> None:
        class_index, i = job
        rng = np.random.default_rng([seed, class_index, i])
        width = int(rng.integers(200, 420))
        height = int(rng.integers(160, 360))
        picture = synthetic_image(class_index, len(classes), rng, width, height)
        cv2.imwrite(str(root / classes[class_index] / f"{classes[class_index]}_{i:05d}.jpg"), picture,
                    [cv2.IMWRITE_JPEG_QUALITY, 85])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(write, jobs))
    return root


SHAPE_CLASSES = ("circle", "triangle", "square", "star", "cross", "ring")


def _shape_outline(kind: str, centre: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Polygon vertices (K, 2) of one shape; circles and rings are many-sided polygons."""
    sides = {"triangle": 3, "square": 4}.get(kind)
    if kind == "star":
        steps = np.arange(10)
        radii = np.where(steps % 2 == 0, radius, radius * 0.45)
        theta = angle + steps * np.pi / 5
    elif kind == "cross":
        arm = 0.33
        unit = np.array([(-arm, -1), (arm, -1), (arm, -arm), (1, -arm), (1, arm), (arm, arm), (arm, 1), (-arm, 1),
                         (-arm, arm), (-1, arm), (-1, -arm), (-arm, -arm)], np.float64) * radius
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        return unit @ rotation.T + np.asarray(centre)
    elif sides is not None:
        theta = angle + np.arange(sides) * 2 * np.pi / sides
        radii = np.full(sides, radius)
    else:  # circle, ring
        theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        radii = np.full(48, radius)
    return np.stack([centre[0] + radii * np.cos(theta), centre[1] + radii * np.sin(theta)], axis=1)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random BGR texture (stripes, blotches or flat colour with noise), independent of any class."""
    import cv2

    kind = rng.integers(0, 3)
    colour = rng.integers(0, 256, 3).astype(np.float32)
    if kind == 0:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle, frequency = rng.uniform(0, np.pi), rng.uniform(0.02, 0.15)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * frequency * 2 * np.pi)[..., None]
        other = rng.integers(0, 256, 3).astype(np.float32)
        image = colour * (wave + 1) / 2 + other * (1 - wave) / 2
    elif kind == 1:
        small = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3)).astype(np.uint8)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    else:
        image = np.broadcast_to(colour, (height, width, 3)).astype(np.float32)
    return np.clip(image + rng.normal(0, rng.uniform(4, 25), (height, width, 3)), 0, 255)


def shape_image(class_index: int, rng: np.random.Generator, width: int = 320, height: int = 240) -> np.ndarray:
    """One BGR uint8 image of a shape class: a textured shape on a textured background, lit unevenly, partly
    covered, with a smaller shape of another class as a distractor. Colour and texture say nothing about the class;
    only the outline does (the opposite of the texture set)."""
    import cv2

    background = _texture(rng, height, width)
    fill = _texture(rng, height, width)
    side = min(width, height)

    def stamp(kind: str, radius: float) -> None:
        centre = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
        outline = _shape_outline(kind, centre, radius, rng.uniform(0, 2 * np.pi))
        outline[:, 1] = centre[1] + (outline[:, 1] - centre[1]) * rng.uniform(0.75, 1.0)  # a little perspective
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 255)
        if kind == "ring":
            inner = _shape_outline("circle", centre, radius * rng.uniform(0.45, 0.65), 0.0)
            inner[:, 1] = outline[:, 1].mean() + (inner[:, 1] - centre[1]) * 0.9
            cv2.fillPoly(mask, [np.round(inner).astype(np.int32)], 0)
        inside = mask.astype(bool)
        background[inside] = fill[inside]

    others = [k for i, k in enumerate(SHAPE_CLASSES) if i != class_index % len(SHAPE_CLASSES)]
    if rng.random() < 0.6:
        stamp(others[int(rng.integers(0, len(others)))], side * rng.uniform(0.07, 0.13))
    stamp(SHAPE_CLASSES[class_index % len(SHAPE_CLASSES)], side * rng.uniform(0.2, 0.42))
    for _ in range(int(rng.integers(0, 3))):  # occluders
        cv2.ellipse(background, (int(rng.integers(0, width)), int(rng.integers(0, height))),
                    (int(rng.integers(5, side // 7)), int(rng.integers(5, side // 7))), float(rng.uniform(0, 180)),
                    0, 360, tuple(float(c) for c in rng.integers(0, 256, 3)), -1)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 0.6 + 0.6 * (xx * rng.uniform(-1, 1) / width + yy * rng.uniform(-1, 1) / height + 0.5)
    image = cv2.GaussianBlur(background * np.clip(light, 0.3, 1.4)[..., None], (0, 0), rng.uniform(0.3, 1.6))
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def make_shapes_dataset(root: Path | str, images: int, seed: int = 0, imbalance: float = 0.0,
                        threads: int | None = None) -> Path:
    """Write `images` JPEGs of six shape classes into `root/<class>/` (later classes fewer with `imbalance`).

    The second generated check set: where the texture set is told apart by colour and texture (mid-level
    features), this one only by outline under random textures (high-level features), so a feature choice that
    suits one and not the other shows. Deterministic for a seed."""
    import cv2

    root = Path(root)
    classes = SHAPE_CLASSES
    shares = np.array([(1.0 - imbalance) ** i for i in range(len(classes))])
    counts = np.floor(shares / shares.sum() * images).astype(int)
    counts[0] += images - counts.sum()
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)

    def write(job: tuple[int, int]) -> None:
        class_index, i = job
        rng = np.random.default_rng([seed, 7, class_index, i])
        picture = shape_image(class_index, rng, int(rng.integers(200, 420)), int(rng.integers(160, 360)))
        cv2.imwrite(str(root / classes[class_index] / f"{classes[class_index]}_{i:05d}.jpg"), picture,
                    [cv2.IMWRITE_JPEG_QUALITY, 85])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(write, [(c, i) for c, n in enumerate(counts) for i in range(n)]))
    return root
