"""The on-disk decoded-image cache: same pixels as decoding in memory, reused, keyed by content, stoppable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import flower_files, write_png
from core.data import imagecache
from core.data.imagecache import StopRequested, open_or_build
from core.data.loader import ImageBatches, decode_cache


def test_rows_hold_exactly_what_in_memory_decoding_gives(tmp_path: Path, flowers_dir: Path) -> None:
    paths = flower_files(flowers_dir, "daisy", 5) + flower_files(flowers_dir, "roses", 4)
    cache, reused = open_or_build(paths, 48, tmp_path / "cache", threads=2)
    assert not reused and cache.shape == (9, 48, 48, 3)
    expected = decode_cache(paths, 48, threads=2)
    np.testing.assert_array_equal(cache.take(np.arange(9)), expected)
    np.testing.assert_array_equal(cache.take([8, 0, 3]), expected[[8, 0, 3]])
    np.testing.assert_array_equal(cache[2:5], expected[2:5])
    np.testing.assert_array_equal(cache[4], expected[4])


def test_a_second_run_decodes_nothing_and_an_edited_photo_makes_a_new_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [write_png(tmp_path / "data" / f"{i}.png", seed=i) for i in range(5)]
    first, _ = open_or_build(paths, 32, tmp_path / "cache")
    monkeypatch.setattr(imagecache, "load_for_model", lambda *a: (_ for _ in ()).throw(AssertionError("decoded")))
    again, reused = open_or_build(paths, 32, tmp_path / "cache")
    assert reused and again.path == first.path
    monkeypatch.undo()
    write_png(paths[2], seed=99)
    os.utime(paths[2], ns=(1, 1))  # a different modification time, whatever the clock's resolution
    edited, reused = open_or_build(paths, 32, tmp_path / "cache")
    assert not reused and edited.path != first.path
    other_size, _ = open_or_build(paths, 40, tmp_path / "cache")
    assert other_size.path != edited.path and other_size.size == 40


def test_a_stop_while_decoding_leaves_no_partial_cache(tmp_path: Path) -> None:
    paths = [write_png(tmp_path / "data" / f"{i}.png", seed=i) for i in range(imagecache.CHUNK + 5)]
    calls = []

    def stop_after_first_chunk() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(StopRequested):
        open_or_build(paths, 32, tmp_path / "cache", should_stop=stop_after_first_chunk)
    assert list((tmp_path / "cache").iterdir()) == []


def test_batches_from_the_cache_equal_batches_from_memory(tmp_path: Path) -> None:
    paths = [write_png(tmp_path / "data" / f"{i}.png", seed=i) for i in range(10)]
    cache, _ = open_or_build(paths, 32, tmp_path / "cache")
    labels = np.arange(10) % 3
    on_disk = ImageBatches(cache, labels, 3, batch_size=4, shuffle=True, seed=1)
    in_memory = ImageBatches(decode_cache(paths, 32), labels, 3, batch_size=4, shuffle=True, seed=1)
    assert len(on_disk) == len(in_memory) == 3
    for i in range(3):
        for a, b in zip(on_disk[i], in_memory[i]):
            np.testing.assert_array_equal(a, b)


def test_prune_drops_the_least_recently_used_and_clear_empties(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    paths = [write_png(tmp_path / "data" / f"{i}.png", seed=i) for i in range(4)]
    old, _ = open_or_build(paths[:2], 32, folder)
    os.utime(old.path, (1, 1))
    new, _ = open_or_build(paths, 32, folder)
    assert imagecache.cache_size(folder) >= old.nbytes + new.nbytes
    freed = imagecache.prune(folder, new.nbytes)
    assert freed == old.nbytes and not old.path.exists() and new.path.exists()
    assert imagecache.clear(folder) == new.nbytes and imagecache.cache_files(folder) == []


def test_not_enough_disk_is_a_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from collections import namedtuple

    from core import StudioError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    paths = [write_png(tmp_path / "data" / "0.png")]
    with pytest.raises(StudioError, match="Not enough disk space for the decoded-image cache"):
        open_or_build(paths, 32, tmp_path / "cache")
