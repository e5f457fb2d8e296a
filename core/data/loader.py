"""Batches for Keras: decode every image once into a uint8 cache, augment in parallel threads.

Why threads: albumentations and OpenCV release the GIL in their C++ kernels, so threads scale across cores
without pickling whole images to worker processes. Why uint8: a batch is 4x smaller than float32 and the
model normalises on the device (its first layers rescale), so the same batches serve every backbone.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.data.images import load_for_model

try:  # the serve profile (no Keras) only needs decode_cache
    import keras

    _PyDataset = keras.utils.PyDataset
except ImportError:  # pragma: no cover - exercised on the serve profile
    _PyDataset = object  # type: ignore[assignment,misc]


def default_threads() -> int:
    """Augmentation threads: one per core (albumentations/OpenCV release the GIL), or the share the app's launcher
    gave a trainer beside its server (core.base.cpushare)."""
    from core.base.cpushare import threads_from_environment

    return threads_from_environment() or max(1, os.cpu_count() or 1)


def decode_cache(paths: Sequence[Path | str], image_size: int, threads: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Decode and resize every image once into one (N, S, S, 3) uint8 array."""
    cache = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)

    def fill(i: int) -> None:
        cache[i] = load_for_model(paths[i], image_size)

    with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
        for done, _ in enumerate(pool.map(fill, range(len(paths))), start=1):
            if progress and (done % 64 == 0 or done == len(paths)):
                progress(done, len(paths))
    return cache


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def take_rows(images, rows: np.ndarray) -> np.ndarray:
    """A new array of the images at `rows`, from an in-memory array or an on-disk core.data.imagecache.ImageCache."""
    if isinstance(images, np.ndarray):
        return images[rows]  # fancy indexing copies
    return images.take(rows)


class ImageBatches(_PyDataset):
    """A keras.utils.PyDataset over uint8 images (an array, or an on-disk ImageCache read a batch at a time);
    shuffles and augments the training split only.

    The last partial batch is kept (len = ceil(N / batch_size)), so no image is silently dropped.

    With `shard=(index, count)` (one of several processes, core.network.distribute) each batch is this process's slice
    of the global batch of `batch_size`: every process walks the same shuffled order (same seed) and yields the
    same number of equal slices. The last global batch is padded to a multiple of `count` with rows of weight 0,
    so its slices are equal too and no padding row counts in a loss or a metric.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int,
                 augment: Callable[..., dict] | None = None, shuffle: bool = False, seed: int = 0,
                 threads: int | None = None, class_weights: np.ndarray | None = None,
                 shard: tuple[int, int] = (0, 1), **pydataset_kwargs):
        super().__init__(**pydataset_kwargs)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.targets = one_hot(self.labels, num_classes)
        # Per-sample loss weights from class weights: works on every backend, unlike fit(class_weight=...).
        self.weights = None if class_weights is None else np.asarray(class_weights, np.float32)[self.labels]
        self.shard_index, self.shard_count = shard
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard {shard}: the index must be from 0 to count - 1")
        if self.shard_count > 1 and int(batch_size) % self.shard_count:
            raise ValueError(f"a batch of {batch_size} does not split over {self.shard_count} processes")
        if self.shard_count > 1 and self.weights is None:
            self.weights = np.ones(len(self.labels), np.float32)  # so padding rows can weigh 0
        self.batch_size, self.augment, self.shuffle = int(batch_size), augment, shuffle
        self.seed, self.passes, self.served_last = seed, 0, False
        self.pass_lock = threading.Lock()  # Keras may fetch batches from several threads
        self.order = self.order_of_pass(0)
        self.pool = ThreadPoolExecutor(max_workers=threads or default_threads()) if augment else None

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def order_of_pass(self, number: int) -> np.ndarray:
        """The rows in the order pass `number` walks them: a function of the seed and the pass alone."""
        if not self.shuffle:
            return np.arange(len(self.images))
        return np.random.default_rng([self.seed, number]).permutation(len(self.images))

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        rows = self._rows_for(index)
        weights = None if self.weights is None else self.weights[rows]
        if self.shard_count > 1:
            rows, weights = self._local_slice(rows, weights)
        batch = take_rows(self.images, rows)  # a copy, so augmenting in place never touches the cache
        if self.augment is not None:
            def apply(i: int) -> None:
                batch[i] = self.augment(image=batch[i])["image"]

            list(self.pool.map(apply, range(len(batch))))
        if weights is not None:
            return batch, self.targets[rows], weights
        return batch, self.targets[rows]

    def _local_slice(self, rows: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This process's equal share of a global batch, the short last one padded (repeating its first row, at
        weight 0) to a multiple of the process count."""
        padding = -len(rows) % self.shard_count
        if padding:
            rows = np.concatenate([rows, np.repeat(rows[:1], padding)])
            weights = np.concatenate([weights, np.zeros(padding, np.float32)])
        share = len(rows) // self.shard_count
        keep = slice(self.shard_index * share, (self.shard_index + 1) * share)
        return rows[keep], weights[keep]

    def _rows_for(self, index: int) -> np.ndarray:
        """A new pass (a new order) begins when batch 0 is asked for after the last batch was served.

        Not on Keras' on_epoch_end: Keras calls it at different moments on different paths (once after peeking
        at two batches for the tensor spec on one device, not under MirroredStrategy), so counting its calls gave
        one device and two devices different batches from the same seed (tests/network/test_distribute.py)."""
        with self.pass_lock:
            if index == 0 and self.served_last:
                self.passes += 1
                self.order, self.served_last = self.order_of_pass(self.passes), False
            if index == len(self) - 1:
                self.served_last = True
            return self.order[index * self.batch_size:(index + 1) * self.batch_size]

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(wait=False)


def tutorial_generator(paths: Sequence[Path | str], labels: Sequence[int], num_classes: int, image_size: int,
                       batch_size: int, build_transform: Callable[[], Callable[..., dict]]):
    """The loader in common tutorials, kept as the benchmark baseline: per image cv2.imread, and a new
    A.Compose built on every call, all on one thread."""
    import cv2

    for start in range(0, len(paths), batch_size):
        images, targets = [], []
        for path, label in zip(paths[start:start + batch_size], labels[start:start + batch_size]):
            image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            image = cv2.resize(image, (image_size, image_size))
            image = build_transform()(image=image)["image"]
            images.append(image)
            targets.append(label)
        yield np.stack(images), one_hot(np.asarray(targets), num_classes)
