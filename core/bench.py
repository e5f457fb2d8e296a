"""`python -m core bench loader|train|recipe`: throughput measured side by side in one process."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core import StudioError


def run(what: str, args: argparse.Namespace) -> dict[str, Any]:
    if what in ("loader", "recipe") and not args.data:
        raise StudioError(f"bench {what} needs --data DIR (a labelled image folder).")
    handlers: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "loader": bench_loader, "train": bench_train, "recipe": bench_recipe}
    result = handlers[what](args)
    return {"bench": what, "machine": machine_summary(), **result}


def machine_summary() -> dict[str, Any]:
    return {"cpu_cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
            "date": time.strftime("%Y-%m-%d")}


def _train_paths(data: str) -> tuple[list[Path], list[int], int]:
    from core.datasets import scan, split_samples

    dataset = scan(data)
    split = split_samples(dataset)
    samples = split["train"]
    return [dataset.root / s.path for s in samples], [s.label for s in samples], len(dataset.classes)


# ----------------------------------------------------------------------------------------- loader
def bench_loader(args: argparse.Namespace) -> dict[str, Any]:
    """Ours (decode once + threaded augmentation) vs the tutorial generator, alternating, best of 2 rounds."""
    from core.augment import build_pipeline, resolve_spec
    from core.loader import ImageBatches, decode_cache, default_threads, tutorial_generator

    paths, labels, num_classes = _train_paths(args.data)
    spec = resolve_spec(args.augmentation)
    size, batch, epochs = args.image_size, args.batch_size, args.epochs
    n_images = len(paths) * epochs

    def baseline() -> float:
        start = time.perf_counter()
        for _ in range(epochs):
            for _x, _y in tutorial_generator(paths, labels, num_classes, size, batch, lambda: build_pipeline(spec)):
                pass
        return time.perf_counter() - start

    def ours() -> tuple[float, float]:
        start = time.perf_counter()
        cache = decode_cache(paths, size)
        decoded = time.perf_counter()
        batches = ImageBatches(cache, np.asarray(labels), num_classes, batch, augment=build_pipeline(spec),
                               shuffle=True)
        for _ in range(epochs):
            for i in range(len(batches)):
                batches[i]
            batches.on_epoch_end()
        batches.close()
        return time.perf_counter() - start, time.perf_counter() - decoded

    rounds = [(baseline(), *ours()) for _ in range(2)]
    base_s = min(r[0] for r in rounds)
    ours_s = min(r[1] for r in rounds)
    warm_s = min(r[2] for r in rounds)
    return {
        "images": len(paths), "epochs": epochs, "image_size": size, "batch_size": batch,
        "augmentation": args.augmentation, "threads": default_threads(),
        "baseline_images_per_s": n_images / base_s,
        "ours_images_per_s": n_images / ours_s,
        "ours_warm_cache_images_per_s": n_images / warm_s,
        "speedup": base_s / ours_s,
        "speedup_warm_cache": base_s / warm_s,
        "baseline": "per image cv2.imread + resize + a new A.Compose per call, one thread",
        "ours": "decode once into a uint8 cache (threads), augmentation in a thread pool; includes the decode",
    }


# ----------------------------------------------------------------------------------------- training
def _timed_fit(model, x: np.ndarray, y: np.ndarray, batch: int, steps: int) -> float:
    """Images/s of train steps after one warm-up step (which pays tracing/compilation)."""
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(x[:batch * steps], y[:batch * steps], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    return batch * steps / (time.perf_counter() - start)


def _timed_predict(model, x: np.ndarray, batch: int, repeats: int) -> float:
    model.predict(x[:batch], batch_size=batch, verbose=0)
    start = time.perf_counter()
    for _ in range(repeats):
        model.predict(x[:batch], batch_size=batch, verbose=0)
    return batch * repeats / (time.perf_counter() - start)


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train-step throughput of one backbone: frozen base, fine-tune recipe, fully unfrozen; and inference."""
    import keras

    from core.backbones import create_backbone
    from core.device import detect_device, precision_policy, use_xla
    from core.model import base_of, build_classifier, set_finetune_trainable

    device = detect_device()
    policy = precision_policy("auto", device)
    keras.config.set_dtype_policy(policy)
    jit = use_xla("auto", device)
    size, batch, steps = args.image_size, args.batch_size, args.steps
    weights = None if args.weights.lower() in ("none", "random") else args.weights
    model = build_classifier(create_backbone(args.backbone, size, weights), 5)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (batch * steps, size, size, 3), dtype=np.uint8)
    y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, batch * steps)]

    def compile_for(mode: str) -> None:
        if mode == "frozen":
            base_of(model).trainable = False
        elif mode == "finetune":
            set_finetune_trainable(model, 2)
        else:
            base_of(model).trainable = True
        model.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy", jit_compile=jit)

    results: dict[str, Any] = {}
    for mode in ("frozen", "finetune", "unfrozen"):
        compile_for(mode)
        results[f"train_{mode}_images_per_s"] = _timed_fit(model, x, y, batch, steps)
    results["inference_batch1_images_per_s"] = _timed_predict(model, x, 1, repeats=max(8, steps))
    big = min(256, len(x))
    results[f"inference_batch{big}_images_per_s"] = _timed_predict(model, x, big, repeats=2)
    if args.data:
        results.update(_end_to_end(model, args, compile_for))
    return {"backbone": args.backbone, "image_size": size, "batch_size": batch, "steps": steps,
            "device": device.to_dict(), "precision": policy, "xla": jit, **results,
            "modes": {"frozen": "base frozen, head trained (images through the base every step)",
                      "finetune": "top 2 stages + top conv unfrozen, BatchNorm frozen (the recipe's phase 2)",
                      "unfrozen": "whole base trainable"}}


def _end_to_end(model, args: argparse.Namespace, compile_for) -> dict[str, Any]:
    """Fine-tune steps fed from JPEG files with the augmentation recipe: cold (decode included) and warm."""
    from core.augment import build_pipeline, resolve_spec
    from core.loader import ImageBatches, decode_cache

    paths, labels, _ = _train_paths(args.data)
    count = min(len(paths), args.batch_size * args.steps)
    paths, labels = paths[:count], np.asarray(labels[:count]) % 5
    compile_for("finetune")
    pipeline = build_pipeline(resolve_spec(args.augmentation))
    start = time.perf_counter()
    cache = decode_cache(paths, args.image_size)
    batches = ImageBatches(cache, labels, 5, args.batch_size, augment=pipeline, shuffle=True)
    model.fit(batches, epochs=1, verbose=0)
    cold = count / (time.perf_counter() - start)
    start = time.perf_counter()
    model.fit(batches, epochs=1, verbose=0)
    warm = count / (time.perf_counter() - start)
    return {"end_to_end_finetune_cold_images_per_s": cold, "end_to_end_finetune_warm_images_per_s": warm,
            "end_to_end_images": count}


# ----------------------------------------------------------------------------------------- recipe
def bench_recipe(args: argparse.Namespace) -> dict[str, Any]:
    from core.recipes import compare_recipes

    overrides = {}
    for item in args.set or []:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:  # a bare word such as a preset name
            overrides[key] = value
    return compare_recipes(args.data, seeds=args.seeds, backbone=args.recipe_backbone, overrides=overrides)
