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
