"""Data health: likely mislabelled photos, near-duplicates and train/test leaks, imbalance, outliers, odd shapes.

All from one pass of the frozen backbone over every photo (the decoded images go to the same cache training
reads, so a run afterwards decodes nothing; the pooled features are cached beside them for the next health check):

- **Suspect labels** (confident learning, Northcutt et al. 2021, written here from the paper; cleanlab is AGPL): every
  photo gets out-of-fold class probabilities from the recipe's own linear head (5-fold, L2 chosen by the same
  cross-validation as training). A class's threshold is the mean probability of that class over the photos labelled
  with it. A photo is suspect when some other class clears its threshold and beats the given label's probability;
  the suggested class is that one, and the score is how far it beats the given label (most suspect first).
- **Near-duplicates**: photos that are each other's nearest neighbour in pooled features and share a layout of
  light and dark (an 8x8 thumbnail): both barely move under resizing, recompression or a small crop, unlike file
  hashes. A group spanning train and val/test is a **leak**.
- **Imbalance, outliers, shapes**: class counts; photos far from every class centre (robust z-score of the distance to
  the nearest centre); photos under TINY_SIDE pixels or with an aspect ratio beyond EXTREME_ASPECT.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.data.datasets import Dataset, scan

# Near-duplicates (since issue 30.4 pairs each among the other's NEIGHBOURS nearest, joined into groups of any size;
# mutual nearest pairs before): centred pooled features with cosine >= SIMILAR and 8x8 blurred grey
# thumbnails correlating >= SAME_LAYOUT. Measured on flowers-mini with 20 planted copies (resized 0.6-0.9x,
# cropped 5-8%, JPEG quality 60-80; tests/results/test_health.py): every copy found, no other pair of its 400 photos
# flagged; the lowest copy scored 0.74 / 0.92.
# A third test, the same colours (hue-saturation histograms intersecting >= SAME_COLOURS), since generated scenes of
# flat backgrounds pass the first two: on the shapes check set all 15 pairs flagged by them were distinct photos,
# their histograms intersecting 0.00-0.40, while the 20 planted copies scored 0.82-0.94 (docs/benchmarks.md).
SIMILAR = 0.6
SAME_LAYOUT = 0.9
# Each photo's candidates: in a burst of 5 every shot links to every other; a longer burst links through shots that
# are among each other's 4 nearest (not measured beyond 5). Issue 30.4, docs/benchmarks.md: with 4 (and colours
# >= 0.7), 4 planted bursts of 5 on flowers-mini whole, no false group on flowers-mini or the shapes set; with 8 a
# distinct pair of the shapes set linked; with 1 (the mutual best, as before) no burst whole.
NEIGHBOURS = 4
# 0.6 until issue 30.4. The recipe's pooled stages (issue 28) moved one distinct pair of the shapes set to 0.62, over
# it; planted copies intersect 0.82-0.97, so 0.7 leaves room on both sides.
SAME_COLOURS = 0.7
THUMB_SIDE = 8
HUE_BINS, SATURATION_BINS = 16, 8
TINY_SIDE = 64
EXTREME_ASPECT = 4.0
OUTLIER_Z = 4.0
HEALTH_FOLDS = 5


def feature_model(backbone: str, image_size: int):
    """Pixels -> the recipe's pooled features (stages 6, 7 and top), as training computes them."""
    from core.base.backbones import create_backbone
    from core.network.model import build_classifier, feature_extractor, with_mid_level_features

    return feature_extractor(build_classifier(with_mid_level_features(create_backbone(backbone, image_size)), 2))


def pooled_features(dataset: Dataset, backbone: str, image_size: int, cache_dir: Path,
                    on_progress: Callable[[str, int, int], None] | None = None
                    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], dict[str, float]]:
    """Features of every photo of `dataset` (N, D), their layouts and colours (core.results.health.thumbnails) and the
    seconds spent
    decoding and computing them. Features are cached in
    `cache_dir` by the decoded images' key and the backbone, so a second health check costs no feature pass."""
    from core.data.imagecache import cache_key, open_or_build
    from core.network.model import predict_in_batches

    paths = [dataset.root / s.path for s in dataset.samples]
    cache_dir = Path(cache_dir)
    key = hashlib.sha1(f"{cache_key(paths, image_size)}|{backbone}|features-v1".encode()).hexdigest()[:16]
    stored = cache_dir / f"health-features-{key}.npy"
    seconds = {"decode": 0.0, "features": 0.0}
    start = time.perf_counter()
    images, _ = open_or_build(paths, image_size, cache_dir,
                              progress=(lambda done, total: on_progress("decode", done, total))
                              if on_progress else None)
    seconds["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    layouts, colours = thumbnails(images)
    seconds["thumbnails"] = time.perf_counter() - start
    if stored.is_file():
        features = np.load(stored, allow_pickle=False)
        if features.shape[0] == len(paths):
            return features, (layouts, colours), seconds
    start = time.perf_counter()
    model = feature_model(backbone, image_size)
    features = predict_in_batches(model, images, 8, on_batch=(lambda done: on_progress("features", done, len(paths)))
                                  if on_progress else None)
    seconds["features"] = time.perf_counter() - start
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = stored.with_suffix(".partial.npy")
    np.save(partial, features)
    partial.replace(stored)
    return features, (layouts, colours), seconds


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0,
                              epsilon: float = 1e-3) -> tuple[np.ndarray, float]:
    """Each photo's class probabilities from a head that never saw it (5 folds), at the L2 the recipe would choose
    by cross-validation over these photos: the cross-validation's own held-out predictions, so the check costs no
    fits beyond the recipe's. Returns (probabilities (N, C), L2)."""
    from core.network.headfit import fit_head_cv, single_threaded_blas

    by_l2: dict[float, np.ndarray] = {}
    with single_threaded_blas():
        head, _ = fit_head_cv(features, labels, num_classes, epsilon, seed=seed, folds=HEALTH_FOLDS,
                              out_of_fold=by_l2)
    return by_l2[head.l2], head.l2


def suspect_labels(probabilities: np.ndarray, labels: np.ndarray) -> list[tuple[int, int, float, bool]]:
    """(row, suggested class, score, confident), most suspect first. First confident learning's off-diagonal
    photos (another class clears its per-class threshold and beats the given label), then the rest of the photos
    the out-of-fold head gets wrong, each group by how far the suggested class beats the given one. Measured on the
    planted flowers-mini set: the confident ones alone held 15 of the 20 planted errors among 20 suspects."""
    num_classes = probabilities.shape[1]
    thresholds = np.array([probabilities[labels == c, c].mean() if (labels == c).any() else 1.0
                           for c in range(num_classes)])
    given = probabilities[np.arange(len(labels)), labels]
    confident_rows, other_rows = [], []
    for row in range(len(labels)):
        others = probabilities[row].copy()
        others[labels[row]] = -1.0
        clearing = np.flatnonzero(others >= thresholds)
        if len(clearing):
            suggested = int(clearing[np.argmax(others[clearing])])
            if others[suggested] > given[row]:
                confident_rows.append((row, suggested, float(others[suggested] - given[row]), True))
                continue
        suggested = int(np.argmax(others))
        if others[suggested] > given[row]:
            other_rows.append((row, suggested, float(others[suggested] - given[row]), False))
    return sorted(confident_rows, key=lambda item: -item[2]) + sorted(other_rows, key=lambda item: -item[2])


def thumbnails(images, side: int = THUMB_SIDE, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Two looks at each decoded image that a resize, a recompression or a few percent of crop barely move:
    its layout of light and dark (blurred grey side x side thumbnail, zero-mean and unit-length, (N, side*side))
    and its colours wherever they are (hue-saturation histogram summing to 1, (N, HUE_BINS*SATURATION_BINS))."""
    import cv2

    from core.data.loader import take_rows

    layouts = np.empty((len(images), side * side), np.float32)
    colours = np.empty((len(images), HUE_BINS * SATURATION_BINS), np.float32)
    for start in range(0, len(images), chunk):
        batch = take_rows(images, np.arange(start, min(start + chunk, len(images))))
        for offset, image in enumerate(batch):
            grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 3)
            small = cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA).ravel()
            small -= small.mean()
            layouts[start + offset] = small / (np.linalg.norm(small) + 1e-6)
            histogram = cv2.calcHist([cv2.cvtColor(image, cv2.COLOR_RGB2HSV)], [0, 1], None,
                                     [HUE_BINS, SATURATION_BINS], [0, 180, 0, 256]).ravel()
            colours[start + offset] = histogram / max(float(histogram.sum()), 1.0)
    return layouts, colours


def near_duplicate_groups(features: np.ndarray, layouts: np.ndarray, colours: np.ndarray, block: int = 1024,
                          neighbours: int = NEIGHBOURS) -> list[tuple[list[int], float]]:
    """Pairs of photos each among the other's `neighbours` nearest in pooled features (centred cosine >= SIMILAR),
    whose thumbnails correlate >= SAME_LAYOUT and whose colour histograms intersect >= SAME_COLOURS, joined into
    groups of any size; each group with its highest feature similarity.

    Why two tests: pooled features alone rank a copy's original first but cannot tell a copy from two photos of the
    same flower at one threshold (measured on flowers-mini with 20 planted copies: altered copies 0.74-0.95, the
    closest distinct pair 0.89). The thumbnail adds where things are in the frame. Why a few neighbours, not the
    mutual best: in a burst of five near-copies each photo's best match is one of the other four, so mutual best
    pairs split it into pairs and leave the fifth out (issue 30.4). Why each among the other's: a link one way only
    joined distinct photos on flat backgrounds (docs/benchmarks.md). Computed a block of rows at a time, keeping
    each row's nearest few, so memory stays at block x photos."""
    centred = features - features.mean(axis=0, keepdims=True)
    unit = (centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    count = len(unit)
    keep = max(1, min(neighbours, count - 1))
    nearest = np.zeros((count, keep), np.int64)
    nearest_similarity = np.zeros((count, keep), np.float32)
    for start in range(0, count, block):
        similarity = unit[start:start + block] @ unit.T
        rows = np.arange(len(similarity))
        similarity[rows, rows + start] = -np.inf  # not oneself
        top = np.argpartition(-similarity, keep - 1, axis=1)[:, :keep]
        nearest[start:start + block] = top
        nearest_similarity[start:start + block] = np.take_along_axis(similarity, top, axis=1)
    near = [set(map(int, row)) for row in nearest]
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    links: list[tuple[int, float]] = []
    for a in range(count):
        for b, value in zip(map(int, nearest[a]), map(float, nearest_similarity[a])):
            if a < b and a in near[b] and value >= SIMILAR and float(layouts[a] @ layouts[b]) >= SAME_LAYOUT \
                    and float(np.minimum(colours[a], colours[b]).sum()) >= SAME_COLOURS:
                parent[root(b)] = root(a)
                links.append((a, value))
    strongest: dict[int, float] = {}
    for a, value in links:
        strongest[root(a)] = max(strongest.get(root(a), 0.0), value)
    groups: dict[int, list[int]] = {}
    for i in range(count):
        groups.setdefault(root(i), []).append(i)
    found = [(members, strongest[top]) for top, members in groups.items() if len(members) > 1]
    return sorted(found, key=lambda item: -item[1])


def outliers(features: np.ndarray, labels: np.ndarray) -> list[tuple[int, float]]:
    """Rows far from every class centre: robust z-score (median / MAD over all photos) of the distance to the
    nearest centre, in standardised feature space. (row, z), farthest first."""
    z = (features - features.mean(0)) / (features.std(0) + 1e-6)
    centres = np.stack([z[labels == c].mean(0) for c in np.unique(labels)])
    squared = (z ** 2).sum(1)[:, None] - 2 * z @ centres.T + (centres ** 2).sum(1)[None, :]
    nearest = np.sqrt(np.maximum(squared.min(axis=1), 0))
    median = np.median(nearest)
    spread = 1.4826 * np.median(np.abs(nearest - median)) + 1e-9
    scores = (nearest - median) / spread
    rows = np.flatnonzero(scores > OUTLIER_Z)
    return sorted(((int(r), float(scores[r])) for r in rows), key=lambda item: -item[1])


def odd_shapes(dataset: Dataset) -> list[dict[str, Any]]:
    """Photos with a side under TINY_SIDE pixels or an aspect ratio beyond EXTREME_ASPECT (header reads only)."""
    from PIL import Image

    found = []
    for sample in dataset.samples:
        try:
            with Image.open(dataset.root / sample.path) as image:
                width, height = image.size
        except OSError:
            continue  # scan already reported unreadable files
        problems = []
        if min(width, height) < TINY_SIDE:
            problems.append(f"tiny: {width}x{height} pixels")
        if max(width, height) / max(1, min(width, height)) > EXTREME_ASPECT:
            problems.append(f"extreme aspect ratio {max(width, height) / max(1, min(width, height)):.1f}:1")
        if problems:
            found.append({"path": sample.path, "width": width, "height": height, "problem": "; ".join(problems)})
    return found


def health_report(data: str | Path, backbone: str | None = None, image_size: int | None = None,
                  cache_dir: Path | str | None = None, seed: int = 0,
                  on_progress: Callable[[str, int, int], None] | None = None,
                  overrides: str | None = "auto") -> dict[str, Any]:
    """Everything above for the dataset at `data`, as JSON-ready data with paths relative to it. The user's
    corrections (core.data.overrides; `overrides` as TrainConfig.overrides) are applied first, as training will:
    a relabelled photo is judged under its new class and an excluded one is left out."""
    from core import StudioError
    from core.base.backbones import DEFAULT_BACKBONE, get_backbone
    from core.data.imagecache import default_cache_dir

    from core.data.overrides import apply_overrides, resolve_file

    started = time.perf_counter()
    scanned = scan(data)
    dataset, applied = apply_overrides(scanned, resolve_file(overrides, scanned.root))
    if not dataset.report.trainable:
        raise StudioError(" ".join(dataset.report.errors))
    from core.network.distribute import share_gpu_memory

    backbone = backbone or DEFAULT_BACKBONE
    size = int(image_size or get_backbone(backbone).recipe_size)
    share_gpu_memory()  # beside a trainer and the server on one GPU
    # Features of every scanned photo (the cached pass stays valid whatever is excluded), then the kept rows.
    features, (layouts, colours), seconds = pooled_features(scanned, backbone, size,
                                                            Path(cache_dir or default_cache_dir()), on_progress)
    row_of = {s.path: i for i, s in enumerate(scanned.samples)}
    kept = np.asarray([row_of[s.path] for s in dataset.samples], np.int64)
    features, layouts, colours = features[kept], layouts[kept], colours[kept]
    labels = np.asarray([s.label for s in dataset.samples], np.int64)
    classes = dataset.classes
    fit_start = time.perf_counter()
    probabilities, l2 = out_of_fold_probabilities(features, labels, len(classes), seed)
    seconds["out_of_fold"] = time.perf_counter() - fit_start
    samples = dataset.samples
    split_of = [s.split or "train" for s in samples]
    similar_start = time.perf_counter()
    groups = near_duplicate_groups(features, layouts, colours)
    seconds["near_duplicates"] = time.perf_counter() - similar_start
    counts = {name: int((labels == i).sum()) for i, name in enumerate(classes)}
    smallest, largest = min(counts.values()), max(counts.values())
    report = {
        "data": str(dataset.root), "backbone": backbone, "image_size": size, "photos": len(samples),
        "classes": classes, "l2": l2, "corrections": applied.count,
        "suspect_labels": [{"path": samples[row].path, "label": classes[labels[row]], "suggested": classes[suggested],
                            "score": round(score, 4),
                            "label_probability": round(float(probabilities[row, labels[row]]), 4),
                            "suggested_probability": round(float(probabilities[row, suggested]), 4),
                            "confident": confident}
                           for row, suggested, score, confident in suspect_labels(probabilities, labels)],
        "near_duplicates": [{"paths": [samples[i].path for i in members], "similarity": round(best, 4),
                             "splits": sorted({split_of[i] for i in members}),
                             "classes": sorted({classes[labels[i]] for i in members})}
                            for members, best in groups],
        "class_counts": counts,
        "imbalance": {"largest_over_smallest": round(largest / max(1, smallest), 2),
                      "smallest": min(counts, key=counts.get), "largest": max(counts, key=counts.get)},
        "outliers": [{"path": samples[row].path, "label": classes[labels[row]], "z": round(score, 2)}
                     for row, score in outliers(features, labels)],
        "odd_shapes": odd_shapes(dataset),
    }
    report["leaks"] = [group for group in report["near_duplicates"] if len(group["splits"]) > 1]
    report["out_of_fold_accuracy"] = round(float((probabilities.argmax(1) == labels).mean()), 4)
    seconds["total"] = time.perf_counter() - started
    report["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return report


def saved_report_path(data: str | Path, cache_dir: Path | str) -> Path:
    """Where the app keeps the last health report of a dataset folder (in the workspace's cache)."""
    key = hashlib.sha1(str(Path(data).resolve()).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"health-report-{key}.json"


def load_saved_report(data: str | Path, cache_dir: Path | str) -> dict[str, Any] | None:
    import json

    path = saved_report_path(data, cache_dir)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_in_own_process(data: str | Path, cache_dir: Path | str, overrides: Path | str | None = None,
                         timeout: float = 3600) -> dict[str, Any]:
    """Run `python -m core health` as its own process (TensorFlow never enters the app's server process, as for
    training), keep its report beside the cache, and return it. A failure becomes one StudioError line."""
    import json
    import subprocess
    import sys

    from core import StudioError
    from core.base.runs import write_json_atomic

    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "core", "health", str(data), "--cache-dir", str(cache_dir)]
    command += ["--overrides", str(overrides)] if overrides else []
    done = subprocess.run(command, capture_output=True, text=True, cwd=repo, timeout=timeout)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise StudioError(lines[-1] if lines else f"the health check ended with code {done.returncode}")
    report = json.loads(done.stdout)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved_report_path(data, cache_dir), report)
    return report
