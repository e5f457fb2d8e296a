"""One served model, many visitors at once (issue 27): the runner pool lends each thread a runner of its own, makes
no more than its size, and a runner that keeps its input inside itself (as LiteRT's Interpreter does) gives every
visitor their own answers. The real LiteRT/ONNX/Keras models are checked the same way in test_export.py."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from core import StudioError
from core.serving.bundle import BundleClassifier
from core.serving.sharing import POOL_SIZE_ENV, RunnerPool, default_pool_size

VISITORS = 8


class StatefulRunner:
    """A runner shaped like LiteRT's Interpreter: set the input, invoke, read the output, all state inside it. Two
    threads in it at once either trip its reference check (as LiteRT does) or read each other's input."""

    def __init__(self) -> None:
        self.input: np.ndarray | None = None
        self.busy = False

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.busy:
            raise RuntimeError("There is at least 1 reference to internal data in the interpreter")
        self.busy = True
        try:
            self.input = images.copy()
            time.sleep(0.005)  # invoke(): the window in which another thread could overwrite the input
            mean = self.input.reshape(len(self.input), -1).mean(axis=1)
            return np.stack([mean, 255.0 - mean], axis=1) / 255.0
        finally:
            self.busy = False


def visitors_at_once(work, count: int = VISITORS) -> tuple[list, list[BaseException]]:
    """Run `work(i)` on `count` threads started together; their results in order, and what they raised."""
    results: list = [None] * count
    errors: list[BaseException] = []
    start_together = threading.Barrier(count)

    def visitor(index: int) -> None:
        start_together.wait()
        try:
            results[index] = work(index)
        except BaseException as err:  # noqa: BLE001 (a visitor's traceback is what this test looks for)
            errors.append(err)

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results, errors


def photos_of(visitor: int) -> np.ndarray:
    """Eight 'photos' per visitor, each a different flat grey, so every answer says whose photo it was."""
    return np.stack([np.full((8, 8, 3), 10 * visitor + i, np.uint8) for i in range(8)])


def fake_bundle_classifier(monkeypatch: pytest.MonkeyPatch, runners: int) -> tuple[BundleClassifier, list]:
    made: list[StatefulRunner] = []

    def make(path, threads=None):
        made.append(StatefulRunner())
        return made[-1]

    monkeypatch.setattr("core.serving.bundle.open_runner", make)
    return BundleClassifier("model.tflite", ["dark", "light"], 8, runners=runners), made


@pytest.mark.parametrize("runners", [1, 2, 4])
def test_visitors_classifying_at_once_each_get_their_own_answers(monkeypatch: pytest.MonkeyPatch,
                                                                 runners: int) -> None:
    classifier, made = fake_bundle_classifier(monkeypatch, runners)
    expected = [classifier.probabilities(photos_of(v)) for v in range(VISITORS)]  # one at a time: the truth
    results, errors = visitors_at_once(lambda v: classifier.probabilities(photos_of(v)))
    assert errors == []
    for visitor, (got, want) in enumerate(zip(results, expected)):
        np.testing.assert_allclose(got, want, err_msg=f"visitor {visitor} got another visitor's answers")
    assert 1 <= len(made) <= runners and classifier.runners.made == len(made)


def test_the_old_way_one_runner_for_every_thread_fails_visitors() -> None:
    """What the pool prevents, shown on the same runner: used from every thread at once, visitors get errors."""
    shared = StatefulRunner()
    _, errors = visitors_at_once(lambda v: [shared(photos_of(v)[i:i + 1]) for i in range(8)])
    assert errors and "reference to internal data" in str(errors[0])


def test_the_pool_never_makes_more_runners_than_its_size_however_many_visitors() -> None:
    made = []
    at_once = {"now": 0, "most": 0}
    guard = threading.Lock()

    def make():
        made.append(object())
        return made[-1]

    pool = RunnerPool(make, 3)

    def use(_visitor: int) -> None:
        for _ in range(5):
            with pool.borrowed():
                with guard:
                    at_once["now"] += 1
                    at_once["most"] = max(at_once["most"], at_once["now"])
                time.sleep(0.002)
                with guard:
                    at_once["now"] -= 1

    _, errors = visitors_at_once(use, 16)
    assert errors == [] and len(made) == 3 == pool.made and at_once["most"] <= 3


def test_a_runner_that_cannot_be_made_fails_at_load_or_frees_its_place() -> None:
    with pytest.raises(StudioError, match="cannot load"):
        RunnerPool(lambda: (_ for _ in ()).throw(StudioError("model.tflite: LiteRT cannot load this model")), 2)
    attempts = []

    def make():
        attempts.append(1)
        if len(attempts) == 2:
            raise MemoryError("no memory for a second runner")
        return len(attempts)

    pool = RunnerPool(make, 2)
    first = pool._take()  # the first runner is lent out, so the next borrower must make one
    with pytest.raises(MemoryError):
        with pool.borrowed():
            pass
    assert pool.made == 1  # the failed one does not hold a place: the next borrower may try again
    with pool.borrowed() as runner:
        assert runner == 3
    assert first == 1


def test_pool_size_is_one_per_core_up_to_four_or_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POOL_SIZE_ENV, raising=False)
    assert [default_pool_size(cores) for cores in (1, 2, 3, 4, 16)] == [1, 2, 3, 4, 4]
    monkeypatch.setenv(POOL_SIZE_ENV, "6")
    assert default_pool_size(2) == 6
    monkeypatch.setenv(POOL_SIZE_ENV, "none")
    with pytest.raises(StudioError, match=POOL_SIZE_ENV):
        default_pool_size(2)
