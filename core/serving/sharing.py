"""Model objects shared by every visitor of one server, used safely from their threads.

Streamlit runs each browser session's script in a thread of one process, and `st.cache_resource` hands every session
the same loaded model. A LiteRT Interpreter keeps its input and output tensors inside itself: two threads invoking it
at once overwrite each other's input (one visitor gets the other's answer) or trip its own check ("There is at least
1 reference to internal data in the interpreter…"). Keras models keep per-call state too, and their class-activation
maps (core.results.cam) read the same layers. So:

- `RunnerPool` lends each thread a runner of its own, made on first need up to a fixed count and reused after; the
  model file is read once (LiteRT maps it), each runner adds only its working memory, and memory stops growing at
  the pool's size however many visitors come (measured in docs/benchmarks.md, "One model, many visitors").
- A Keras model (train profile) is not copied: core.serving.predict.Classifier uses it under its own lock, since
  it is large and TensorFlow already spreads one call over every core.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Generic, Iterator, TypeVar

Runner = TypeVar("Runner")

POOL_SIZE_ENV = "STUDIO_RUNNERS_PER_MODEL"


def default_pool_size(cores: int | None = None) -> int:
    """Runners per served model: one per core, at most 4 (STUDIO_RUNNERS_PER_MODEL overrides). Each runner works on
    one core (LiteRT's default), so more than the cores only adds memory, and four cover a small server's visitors
    while a fifth waits a few tenths of a second."""
    named = os.environ.get(POOL_SIZE_ENV, "").strip()
    if named:
        try:
            value = int(named)
        except ValueError:
            value = 0
        if value < 1:
            from core import StudioError

            raise StudioError(f"{POOL_SIZE_ENV}={named!r}: give a whole number of runners per model, 1 or more.")
        return value
    return max(1, min(4, cores if cores is not None else (os.cpu_count() or 1)))


class RunnerPool(Generic[Runner]):
    """Up to `size` runners made by `make`, each lent to one thread at a time.

    The first runner is made at once, so a model that cannot load fails where it is loaded, not at a visitor's first
    photo. A thread that finds every runner lent out and the pool full waits for one to come back.
    """

    def __init__(self, make: Callable[[], Runner], size: int):
        if size < 1:
            raise ValueError(f"a runner pool needs at least one runner, not {size}")
        self._make = make
        self.size = size
        self._idle: list[Runner] = [make()]
        self._made = 1
        self._changed = threading.Condition()

    @property
    def made(self) -> int:
        """How many runners exist now (lent or idle)."""
        return self._made

    @contextlib.contextmanager
    def borrowed(self) -> Iterator[Runner]:
        """A runner for this thread alone until the block ends."""
        runner = self._take()
        try:
            yield runner
        finally:
            with self._changed:
                self._idle.append(runner)
                self._changed.notify()

    def _take(self) -> Runner:
        with self._changed:
            while not self._idle and self._made >= self.size:
                self._changed.wait()
            if self._idle:
                return self._idle.pop()  # the most recently used: its memory is the likeliest to be warm
            self._made += 1  # counted before making it, so two threads never both make the last one
        try:
            return self._make()
        except BaseException:
            with self._changed:
                self._made -= 1
                self._changed.notify()
            raise


__all__ = ["POOL_SIZE_ENV", "RunnerPool", "default_pool_size"]
