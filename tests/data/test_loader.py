"""The uint8 decode cache and the PyDataset: every image once, no silent drops, val never augmented."""

from __future__ import annotations

import numpy as np

from conftest import flower_files
from core.data.augment import build_pipeline, resolve_spec
from core.data.images import load_for_model
from core.data.loader import ImageBatches, decode_cache


def test_decode_cache_matches_single_image_path(flowers_dir):
    paths = flower_files(flowers_dir, "roses", 5)
    cache = decode_cache(paths, 48, threads=2)
    assert cache.shape == (5, 48, 48, 3) and cache.dtype == np.uint8
    for i, path in enumerate(paths):
        assert np.array_equal(cache[i], load_for_model(path, 48))


def test_last_partial_batch_is_kept():
    images = np.zeros((10, 8, 8, 3), np.uint8)
    batches = ImageBatches(images, np.arange(10) % 2, 2, batch_size=4)
    assert len(batches) == 3
    sizes = [len(batches[i][0]) for i in range(len(batches))]
    assert sizes == [4, 4, 2]


def test_validation_batches_are_the_cache_untouched():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    val = ImageBatches(images, np.arange(6) % 3, 3, batch_size=4, augment=None, shuffle=False)
    x, y = val[0]
    assert np.array_equal(x, images[:4]) and x.dtype == np.uint8
    assert y.shape == (4, 3) and np.array_equal(y.argmax(1), [0, 1, 2, 0])


def test_training_batches_are_augmented_without_touching_the_cache():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    original = images.copy()
    flip = build_pipeline(resolve_spec([{"name": "HorizontalFlip", "p": 1.0}]))
    train = ImageBatches(images, np.zeros(8, int), 2, batch_size=8, augment=flip, shuffle=False, threads=2)
    x, _ = train[0]
    assert np.array_equal(x, original[:, :, ::-1])
    assert np.array_equal(images, original)


def test_shuffle_covers_every_image_once_per_epoch():
    images = np.arange(7, dtype=np.uint8).reshape(7, 1, 1, 1).repeat(3, axis=3)
    train = ImageBatches(images, np.arange(7) % 2, 2, batch_size=3, shuffle=True, seed=3)
    for _ in range(2):
        seen = np.concatenate([train[i][0][:, 0, 0, 0] for i in range(len(train))])
        assert sorted(seen.tolist()) == list(range(7))
        train.on_epoch_end()


def test_the_order_of_a_pass_depends_on_the_seed_and_the_pass_only():
    """Keras peeks at batches and calls on_epoch_end at different moments on one device and under
    MirroredStrategy; the batches a pass serves must not depend on either, or a seed stops meaning anything."""
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, axis=3)

    def passes(batches: ImageBatches, peek: bool, extra_epoch_ends: int) -> list[list[int]]:
        if peek:  # the TensorFlow adapter reads two batches for the tensor spec before the first epoch
            batches[0], batches[1]
        for _ in range(extra_epoch_ends):
            batches.on_epoch_end()
        walked = []
        for _ in range(3):
            walked.append(np.concatenate([batches[i][0][:, 0, 0, 0] for i in range(len(batches))]).tolist())
            batches.on_epoch_end()
        return walked

    plain = passes(ImageBatches(images, np.arange(10) % 2, 2, batch_size=4, shuffle=True, seed=5), False, 0)
    peeked = passes(ImageBatches(images, np.arange(10) % 2, 2, batch_size=4, shuffle=True, seed=5), True, 1)
    assert plain == peeked
    assert all(sorted(p) == list(range(10)) for p in plain) and plain[0] != plain[1] != plain[2]
    other_seed = passes(ImageBatches(images, np.arange(10) % 2, 2, batch_size=4, shuffle=True, seed=6), False, 0)
    assert other_seed[0] != plain[0]


def test_class_weights_become_sample_weights():
    images = np.zeros((4, 2, 2, 3), np.uint8)
    labels = np.array([0, 0, 0, 1])
    batches = ImageBatches(images, labels, 2, batch_size=4, class_weights=np.array([0.5, 2.0]))
    _, _, weights = batches[0]
    assert weights.tolist() == [0.5, 0.5, 0.5, 2.0]
