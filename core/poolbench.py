"""`python -m core bench pool --demo BUNDLE`: how one served model should be shared by visitors who classify at once.

Each way of sharing runs in a fresh process (so its peak memory is its own): V visitor threads start together, each
classifying its M photos with the one loaded demo bundle, as Streamlit's session threads do on the Classify page.
Reported per way: every visitor's seconds (median, max) against one visitor alone, wrong or failed answers, runners
made and the process's peak RSS. The ways: `unguarded` (one runner used by every thread at once: what main did before
issue 27), `lock` (one runner, one thread at a time) and `pool-N` (core.serving.sharing.RunnerPool of N runners).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core import StudioError

DEFAULT_WAYS = ("unguarded", "lock", "pool-1", "pool-2", "pool-4", "pool-8")
WAY = re.compile(r"unguarded|lock|pool-[1-9][0-9]*")
DEFAULT_PHOTOS = 8  # per visitor, unless --photos is typed


def bench_pool(args: argparse.Namespace) -> dict[str, Any]:
    """Every way side by side, one fresh process each, in one run."""
    from core.serving.bundle import find_bundles

    if not args.demo:
        raise StudioError("bench pool needs --demo BUNDLE (a demo bundle folder or .zip, or a folder holding one).")
    demo = Path(args.demo)
    bundle = demo if (demo / "manifest.json").is_file() or demo.suffix == ".zip" else next(iter(find_bundles(demo)),
                                                                                           None)
    if bundle is None or not bundle.exists():
        raise StudioError(f"{demo}: no demo bundle there; make one with `python -m core export RUN --bundle`.")
    ways = args.ways or list(DEFAULT_WAYS)
    unknown = [way for way in ways if not WAY.fullmatch(way)]
    if unknown:
        raise StudioError(f"--ways: {unknown[0]!r} is not a way; give unguarded, lock or pool-N (N runners, 1 or more).")
    photos = DEFAULT_PHOTOS if args.photos is None else args.photos
    if not 1 <= args.visitors <= 64 or not 1 <= photos <= 64:
        raise StudioError(f"--visitors and --photos take 1 to 64, not {args.visitors} and {photos}.")
    rows = [_measure_in_fresh_process(bundle, way, args.visitors, photos, args.threads_per_runner)
            for way in ways]
    return {"bundle": str(bundle), "visitors": args.visitors, "photos_each": photos,
            "threads_per_runner": args.threads_per_runner, "ways": rows}


def _measure_in_fresh_process(bundle: Path, way: str, visitors: int, photos: int, threads: int | None) -> dict:
    command = [sys.executable, "-m", "core.poolbench", str(bundle), way, str(visitors), str(photos), str(threads or 0)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise StudioError(f"bench pool, way {way}: {(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _visitor_photos(size: int, visitors: int, photos: int) -> list[np.ndarray]:
    """Each visitor's photos at the model's size: flowers-mini's validation photos, a different set each."""
    from core.data.images import load_for_model
    from core.data.samples import flowers_mini_dir, flowers_mini_missing_message

    flowers = flowers_mini_dir()
    if flowers is None:
        raise StudioError(flowers_mini_missing_message())
    paths = sorted((flowers / "val").glob("*/*.jpg"))
    return [np.stack([load_for_model(paths[(v * photos + i) % len(paths)], size) for i in range(photos)])
            for v in range(visitors)]


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_way(bundle: Path, way: str, visitors: int, photos: int, threads: int | None) -> dict[str, Any]:
    """One way of sharing, in this process: one visitor alone (best of 3), then all at once."""
    from core.serving.bundle import load_demo_bundle

    runners = int(way.split("-")[1]) if way.startswith("pool-") else 1
    classifier = load_demo_bundle(bundle, threads=threads, runners=runners).classifier
    batches = _visitor_photos(classifier.image_size, visitors, photos)
    expected = [classifier.probabilities(batch) for batch in batches]  # one thread: the right answers
    lock = threading.Lock()
    only_runner = classifier.runners._idle[0]

    def classify(batch: np.ndarray) -> np.ndarray:
        if way == "unguarded":  # the old code: the same runner from every thread, nothing in between
            return np.concatenate([only_runner(batch[i:i + 1]) for i in range(len(batch))])
        if way == "lock":
            with lock:
                return classifier.probabilities(batch)
        return classifier.probabilities(batch)

    alone = []
    for _ in range(3):
        started = time.perf_counter()
        classify(batches[0])
        alone.append(time.perf_counter() - started)
    seconds: list[float | None] = [None] * visitors
    wrong = [0] * visitors
    failures: list[str] = []
    start_together = threading.Barrier(visitors)

    def visitor(index: int) -> None:
        start_together.wait()
        started = time.perf_counter()
        try:
            got = classify(batches[index])
        except Exception as err:  # what a visitor would see as a traceback
            failures.append(f"{type(err).__name__}: {str(err)[:120]}")
            return
        seconds[index] = time.perf_counter() - started
        wrong[index] = int(np.sum(np.argmax(got, axis=1) != np.argmax(expected[index], axis=1))
                           + np.sum(np.abs(got - expected[index]).max(axis=1) > 1e-4))

    threads_list = [threading.Thread(target=visitor, args=(i,)) for i in range(visitors)]
    for thread in threads_list:
        thread.start()
    for thread in threads_list:
        thread.join()
    done = [s for s in seconds if s is not None]
    one = min(alone)
    return {"way": way, "answered": len(done), "visitors": visitors, "failures": len(failures),
            "first_failure": failures[0] if failures else None, "wrong_answers": int(sum(wrong)),
            "one_visitor_s": round(one, 3),
            "median_s": round(statistics.median(done), 3) if done else None,
            "max_s": round(max(done), 3) if done else None,
            "median_vs_alone": round(statistics.median(done) / one, 2) if done else None,
            "max_vs_alone": round(max(done) / one, 2) if done else None,
            "runners_made": classifier.runners.made, "peak_rss_mib": round(_peak_rss_mib())}


def main(argv: Sequence[str]) -> None:
    bundle, way, visitors, photos, threads = argv
    print(json.dumps(measure_way(Path(bundle), way, int(visitors), int(photos), int(threads) or None)))


if __name__ == "__main__":
    main(sys.argv[1:])
