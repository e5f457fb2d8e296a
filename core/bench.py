"""`python -m core bench loader|train|recipe|scale|stop|features|health|serve|load|pool`: figures measured side by
side in one run (throughput, memory and disk by dataset size, stop latency, feature sets, the health check, a
serve-profile app's start-up and peak memory, many visitors at once: core.loadbench, and the ways of sharing one
served model: core.poolbench); never asserted in tests."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from core import StudioError


def run(what: str, args: argparse.Namespace) -> dict[str, Any]:
    if what in ("loader", "recipe", "features", "health") and not args.data:
        raise StudioError(f"bench {what} needs --data DIR (a labelled image folder).")
    handlers: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "loader": bench_loader, "train": bench_train, "recipe": bench_recipe, "scale": bench_scale,
        "stop": bench_stop, "features": bench_features, "health": bench_health, "serve": bench_serve,
        "load": bench_load, "pool": bench_pool}
    result = handlers[what](args)
    return {"bench": what, "machine": machine_summary(), **result}


def bench_load(args: argparse.Namespace) -> dict[str, Any]:
    """Many Chromium visitors at once against a served app (core.loadbench, which builds on the serve helpers here)."""
    from core.loadbench import bench_load as measure

    return measure(args)


def bench_pool(args: argparse.Namespace) -> dict[str, Any]:
    """One served model shared by threads classifying at once, each way in a fresh process (core.poolbench)."""
    from core.poolbench import bench_pool as measure

    return measure(args)


def _progress(args: argparse.Namespace) -> Callable[..., None]:
    """The command line's progress for `(stage, done, total)` reports (core.terminal.Stages), or nothing."""
    return getattr(args, "progress", None) or (lambda *report, **words: None)


def machine_summary() -> dict[str, Any]:
    return {"cpu_cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
            "date": time.strftime("%Y-%m-%d")}


def _train_paths(data: str) -> tuple[list[Path], list[int], int]:
    from core.data.datasets import scan, split_samples

    dataset = scan(data)
    split = split_samples(dataset)
    samples = split["train"]
    return [dataset.root / s.path for s in samples], [s.label for s in samples], len(dataset.classes)


# ----------------------------------------------------------------------------------------- loader
def bench_loader(args: argparse.Namespace) -> dict[str, Any]:
    """Ours (decode once + threaded augmentation) vs the tutorial generator, alternating, best of 2 rounds."""
    from core.data.augment import build_pipeline, resolve_spec
    from core.data.loader import ImageBatches, decode_cache, default_threads, tutorial_generator

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

    from core.base.backbones import create_backbone
    from core.network.device import detect_device, precision_policy, use_xla
    from core.network.model import base_of, build_classifier, set_finetune_trainable

    device = detect_device()
    policy = precision_policy(args.mixed_precision, device)
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
    for mode in ("finetune",) if args.finetune_only else ("frozen", "finetune", "unfrozen"):
        compile_for(mode)
        results[f"train_{mode}_images_per_s"] = _timed_fit(model, x, y, batch, steps)
    if not args.finetune_only:
        results["inference_batch1_images_per_s"] = _timed_predict(model, x, 1, repeats=max(8, steps))
        big = min(256, len(x))
        results[f"inference_batch{big}_images_per_s"] = _timed_predict(model, x, big, repeats=2)
    if args.data and not args.synthetic:
        results.update(_end_to_end(model, args, compile_for, device))
        # The pipeline's cost: fine-tune steps fed by the real loader (cached decode, augmentation threads,
        # prefetch) against the same steps and loader fed random pixels already in memory, not augmented.
        results["synthetic_finetune_images_per_s"] = results["loader_synthetic_finetune_images_per_s"]
        results["real_finetune_images_per_s"] = results["end_to_end_finetune_warm_images_per_s"]
        results["real_over_synthetic"] = results["real_finetune_images_per_s"] / \
            results["synthetic_finetune_images_per_s"]
    return {"backbone": args.backbone, "image_size": size, "batch_size": batch, "steps": steps,
            "device": device.to_dict(), "precision": policy, "xla": jit, **results,
            "modes": {"frozen": "base frozen, head trained (images through the base every step)",
                      "finetune": "top 2 stages + top conv unfrozen, BatchNorm frozen (the recipe's phase 2)",
                      "unfrozen": "whole base trainable"}}


def _end_to_end(model, args: argparse.Namespace, compile_for, device) -> dict[str, Any]:
    """Fine-tune steps fed from JPEG files with the augmentation recipe, through the trainer's loader settings:
    cold (decode included) and warm."""
    from core.data.augment import build_pipeline, resolve_spec
    from core.network.device import loader_workers
    from core.data.loader import ImageBatches, decode_cache

    paths, labels, _ = _train_paths(args.data)
    count = args.batch_size * args.steps  # the same steps as the synthetic measurement
    unique = min(len(paths), count)
    compile_for("finetune")
    pipeline = build_pipeline(resolve_spec(args.augmentation))
    start = time.perf_counter()
    decoded = decode_cache(paths[:unique], args.image_size)
    # A small sample is repeated to fill the steps (a big GPU batch can exceed the whole sample): every repeat is
    # augmented afresh, as in later epochs of a real run.
    cache = decoded if unique == count else np.resize(decoded, (count, *decoded.shape[1:]))
    labels = np.resize(np.asarray(labels[:unique]) % 5, count)
    workers = loader_workers(device)
    real = ImageBatches(cache, labels, 5, args.batch_size, augment=pipeline, shuffle=True, workers=workers,
                        max_queue_size=2 * workers)
    model.fit(real, epochs=1, verbose=0)
    cold = count / (time.perf_counter() - start)
    # Synthetic: the same loader, batches and steps, over random pixels already in memory and not augmented, so
    # the difference is what decoding once and augmenting on the fly cost. Alternated, best of two, warm.
    noise = np.random.default_rng(0).integers(0, 255, cache.shape, dtype=np.uint8)
    synthetic = ImageBatches(noise, labels, 5, args.batch_size, shuffle=True, workers=workers,
                             max_queue_size=2 * workers)
    rates: dict[str, list[float]] = {"real": [], "synthetic": []}
    for _ in range(2):
        for name, batches in (("synthetic", synthetic), ("real", real)):
            begin = time.perf_counter()
            model.fit(batches, epochs=1, verbose=0)
            rates[name].append(count / (time.perf_counter() - begin))
    return {"end_to_end_finetune_cold_images_per_s": cold, "end_to_end_finetune_warm_images_per_s": max(rates["real"]),
            "loader_synthetic_finetune_images_per_s": max(rates["synthetic"]), "end_to_end_images": count,
            "loader_workers": workers}


# ----------------------------------------------------------------------------------------- recipe
def bench_recipe(args: argparse.Namespace) -> dict[str, Any]:
    from core.training.recipes import compare_recipes

    overrides = {}
    for item in args.set or []:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:  # a bare word such as a preset name
            overrides[key] = value
    if args.preset is not None:  # the preset measured against the tutorial (its settings under any --set)
        overrides = {"preset": args.preset, **overrides}
    return compare_recipes(args.data, seeds=args.seeds, backbone=args.recipe_backbone, overrides=overrides,
                           resplit=args.resplit)


# ----------------------------------------------------------------------------------------- features
def bench_features(args: argparse.Namespace) -> dict[str, Any]:
    """Which pooled stages and which head-fit protocol transfer best, over re-splits (core.training.featurestudy)."""
    import tempfile

    from core.base.backbones import get_backbone
    from core.training.featurestudy import study

    backbone = args.recipe_backbone
    size = args.image_size_override or get_backbone(backbone).recipe_size
    work = Path(args.work) if args.work else Path(tempfile.gettempdir()) / "studio-features"
    from core.training.featurestudy import CANDIDATES

    unknown = [name for name in args.candidates or [] if name not in CANDIDATES]
    if unknown:
        raise StudioError(f"Unknown feature set {unknown[0]!r}; choose from {', '.join(CANDIDATES)}.")
    chosen = {name: CANDIDATES[name] for name in args.candidates} if args.candidates else None
    return study(args.data, backbone, size, args.resplits, work, chosen)


# ----------------------------------------------------------------------------------------- health
def bench_health(args: argparse.Namespace) -> dict[str, Any]:
    """The data health check from a cold cache against its own feature pass (decode + features): the issue's bound
    is twice that pass. Both measured inside one run, so the ratio holds whatever the machine's speed."""
    import tempfile

    from core.results.health import health_report

    with tempfile.TemporaryDirectory(prefix="studio-health-") as cache:
        report = health_report(args.data, backbone=args.recipe_backbone, image_size=args.image_size_override,
                               cache_dir=cache, on_progress=_progress(args))
    seconds = report["seconds"]
    feature_pass = seconds["decode"] + seconds["features"]
    return {"data": report["data"], "photos": report["photos"], "seconds": seconds,
            "feature_pass_seconds": round(feature_pass, 2),
            "health_over_feature_pass": round(seconds["total"] / feature_pass, 2),
            "found": {"suspect_labels": len(report["suspect_labels"]),
                      "near_duplicate_groups": len(report["near_duplicates"]), "leaks": len(report["leaks"]),
                      "outliers": len(report["outliers"]), "odd_shapes": len(report["odd_shapes"])}}


# ----------------------------------------------------------------------------------------- scale
def bench_scale(args: argparse.Namespace) -> dict[str, Any]:
    """The default recipe, whole trainer processes, on generated folders of growing size: peak RSS, cache size on
    disk, seconds and images/s per phase. Each size gets a fresh cache (a cold first run)."""
    import shutil
    import tempfile

    from core.data.synthetic import make_dataset

    sizes = args.sizes or [1000, 5000, 20000]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="studio-scale-"))
    rows: list[dict[str, Any]] = []
    try:
        for size in sizes:
            _progress(args)("runs", len(rows), len(sizes))
            data = work / f"data-{size}"
            if not data.is_dir():
                make_dataset(data, size, seed=size)
            rows.append(_scale_row(data, size, work / f"models-{size}", args))
            if not args.keep:
                shutil.rmtree(work / f"models-{size}", ignore_errors=True)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return {"what": "default recipe (CLI `train`, every default) on generated 6-class photo folders",
            "extra_train_args": args.train_args or [], "rows": rows,
            "peak_rss_ratio_largest_over_smallest": rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]}


def _scale_row(data: Path, size: int, models: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One trainer process on `data`; its own peak RSS from the kernel (os.wait4's rusage of that child)."""
    import subprocess
    import sys
    import tempfile

    from core.data.imagecache import cache_size
    from core.base.runs import RunDir

    command = [sys.executable, "-m", "core", "--models-dir", str(models), "train", "--data", str(data),
               *(args.train_args or [])]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "STUDIO_CACHE_DIR": str(models / ".cache")}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        raise StudioError(f"bench scale: training on {size} images failed: {last}")
    run = RunDir(stdout.strip().splitlines()[-1])
    phases = {m["phase"]: {"seconds": round(m["seconds"], 2), "per_s": round(m["rate"] or 0, 1), "unit": m["unit"]}
              for m in run.read_metrics() if m.get("kind") == "phase"}
    evaluation = run.read_evaluation() or {}
    return {"images": size, "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "cache_mb": round(cache_size(models / ".cache") / 1024**2), "seconds": round(seconds, 1),
            "accuracy": evaluation.get("accuracy"), "phases": phases}


# ----------------------------------------------------------------------------------------- stop
STOP_PHASES = ("prepare", "decode", "features", "head_fit", "finetune", "save", "evaluate")


def bench_stop(args: argparse.Namespace) -> dict[str, Any]:
    """How long a stop takes in each phase, unthrottled: for each phase a fresh trainer (fresh cache) on a
    generated folder; when its status first shows that phase a stop is requested, and the time until the
    status is final is measured. A phase that ended before it was seen is reported as not caught."""
    import tempfile

    from core.data.synthetic import make_dataset

    size = (args.sizes or [1000])[0]
    with tempfile.TemporaryDirectory(prefix="studio-stop-") as tmp:
        data = make_dataset(Path(tmp) / "data", size, seed=size)
        rows = []
        for phase in STOP_PHASES:
            _progress(args)("runs", len(rows), len(STOP_PHASES))
            rows.append(_stop_row(data, phase, Path(tmp) / f"models-{phase}", args))
    caught = [r["seconds_to_stopped"] for r in rows if r.get("seconds_to_stopped") is not None]
    return {"images": size, "extra_train_args": args.train_args or [], "rows": rows,
            "max_seconds_to_stopped": max(caught) if caught else None}


def _stop_row(data: Path, phase: str, models: Path, args: argparse.Namespace) -> dict[str, Any]:
    import subprocess
    import sys

    from core.base.runs import FINAL_STATES, RunDir

    run = RunDir(models / "stop-run")
    run.path.mkdir(parents=True)
    command = [sys.executable, "-m", "core", "--models-dir", str(models), "train", "--data", str(data),
               "--run-id", "stop-run", *(args.train_args or [])]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "STUDIO_CACHE_DIR": str(models / ".cache")}
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    asked = None
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            status = _read_status_quietly(run)
            state = status.get("state")
            if asked is None and state == "running" and status.get("phase") == phase:
                run.request_stop()
                asked = time.monotonic()
            if state in FINAL_STATES:
                if asked is None:
                    return {"phase": phase, "caught": False, "state": state}
                return {"phase": phase, "caught": True, "state": state, "stopped_in": status.get("stopped_in"),
                        "seconds_to_stopped": round(time.monotonic() - asked, 2), "model_kept": run.has_model(),
                        "evaluated": run.read_evaluation() is not None}
            time.sleep(0.05)
        raise StudioError(f"bench stop: the run for phase {phase} did not end within 15 minutes.")
    finally:
        if child.poll() is None:
            child.wait(timeout=120)


def _read_status_quietly(run) -> dict[str, Any]:
    try:
        return run.read_status() or {}
    except (ValueError, OSError):  # replaced between listing and reading
        return {}


# ----------------------------------------------------------------------------------------- serve
CHROMIUM = "/usr/bin/chromium"  # Debian's package: Playwright's own browser builds would need a download
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TRAIN_PACKAGES = ("tensorflow", "keras", "albumentations")  # what a serve-profile venv must not have
SERVE_PHOTOS = 10  # bench serve's --photos unless typed
BROWSER_TIMEOUT_MS = 120_000  # a page step on a busy 2-core machine; Heroku allows a web process 60 s to bind
# One line per classified photo on the Classify page: "name: class (p%)", or "name: unknown (why); best guess
# class (p%)" below a run's threshold (a demo bundle has none).
SHOWN_ANSWER = re.compile(r"\s*(\S+): (?:unknown \(.*\); best guess )?(\S+) \(([\d.]+)%\)\s*", re.S)


@dataclass
class ServedApp:
    """A running `streamlit run` of the app: its address, its process, and when it started listening."""

    url: str
    process: subprocess.Popen
    started: float  # time.perf_counter() just before the process was started
    seconds_to_port: float


def serve_env(demo_dir: Path, workspace: Path, port: int) -> dict[str, str]:
    """The environment a Heroku dyno gives the app: PORT and the bundle folder; nothing of this venv leaks in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PORT": str(port), "STUDIO_DEMO_DIR": str(demo_dir), "STUDIO_WORKSPACE": str(workspace),
            "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seconds_until_listening(port: int, process: subprocess.Popen, started: float, timeout: float = 60.0) -> float:
    """Seconds from `started` (process start) until a TCP connect to `port` succeeds."""
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise StudioError(f"The app exited with {process.returncode} before it listened on port {port}.")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return time.perf_counter() - started
        time.sleep(0.05)
    raise StudioError(f"Nothing listened on port {port} within {timeout:.0f} s of starting the app.")


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Block until Streamlit answers its health check: the port opens before the server can serve a page."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StudioError(f"The app exited with {process.returncode} before it answered {url}.")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise StudioError(f"The app did not answer its health check at {url} within {timeout:.0f} s.")


def stop_process(process: subprocess.Popen) -> None:
    """Terminate politely, then for good if it does not exit within 15 s."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def serve_app(python: Path, demo_dir: Path, workspace: Path, log: Path) -> Iterator[ServedApp]:
    """The Procfile's command with `python` (streamlit on $PORT, headless), from the app's folder; stopped after.
    A start that fails raises StudioError with the end of the server's log."""
    from core.launch import APP_SCRIPT, app_script

    port = free_port()
    command = [str(python), "-m", "streamlit", "run", APP_SCRIPT, "--server.port", str(port),
               "--server.headless", "true"]
    with open(log, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=app_script().parent, env=serve_env(demo_dir, workspace, port),
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            seconds = seconds_until_listening(port, process, started)
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(url, process)
        except StudioError as err:
            raise StudioError(f"{err} Its log ends:\n{log.read_text(errors='replace')[-2000:]}") from None
        yield ServedApp(url, process, started, seconds)
    finally:
        stop_process(process)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM in /proc/<pid>/status), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise StudioError(f"/proc/{pid}/status has no VmHWM line (bench serve needs Linux).")


def packages_in(python: Path, names: Sequence[str]) -> list[str]:
    """Which of these top-level modules `python` can import (found, not imported: nothing is loaded)."""
    probe = ("import importlib.util, json; "
             f"print(json.dumps([m for m in {list(names)!r} if importlib.util.find_spec(m)]))")
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise StudioError(f"{python} does not run ({(result.stderr.strip().splitlines() or ['no output'])[-1]}).")
    return json.loads(result.stdout)


def open_page(page, title: str) -> None:
    """Open an app page through the sidebar, as a person would (a click that lands during a rerun is retried)."""
    link = page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title, exact=True)
    heading = page.get_by_role("heading", name=title, exact=True, level=1)
    for _ in range(3):
        link.click()
        try:
            heading.wait_for(timeout=15_000)
            break
        except Exception:  # playwright's TimeoutError: the click landed while a script run was finishing
            continue
    wait_until_idle(page)


def wait_until_idle(page, timeout: float = BROWSER_TIMEOUT_MS) -> None:
    """Wait until Streamlit has finished the current script run (its status widget says 'Running' meanwhile)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=timeout)


def classify_in_browser(page, photos: Sequence[Path], timeout: float = 60.0) -> dict[str, tuple[str, float]]:
    """Upload the photos on Classify in one go and read, per photo, the class and percentage the page shows."""
    open_page(page, "Classify")
    page.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files([str(p) for p in photos])
    page.get_by_text(f"Classified {len(photos)} photo(s)").wait_for(timeout=BROWSER_TIMEOUT_MS)
    wait_until_idle(page)
    # The caption comes first and each photo's line follows as the script goes on: poll until all are drawn.
    deadline = time.monotonic() + timeout
    while True:
        shown: dict[str, tuple[str, float]] = {}
        for text in page.locator('[data-testid="stMarkdownContainer"]').all_inner_texts():
            match = SHOWN_ANSWER.fullmatch(text)
            if match:
                shown[match.group(1)] = (match.group(2), float(match.group(3)))
        if len(shown) >= len(photos) or time.monotonic() > deadline:
            return shown
        page.wait_for_timeout(500)


def round_robin_val_photos(flowers: Path, count: int) -> list[Path]:
    """`count` validation photos of flowers-mini, one class after another (the first of each, then the second...)."""
    by_class = [sorted((flowers / "val" / c.name).glob("*.jpg")) for c in sorted((flowers / "val").iterdir())
                if c.is_dir()]
    picked = [photos[i] for i in range(max(map(len, by_class), default=0)) for photos in by_class if i < len(photos)]
    if len(picked) < count:
        raise StudioError(f"flowers-mini has {len(picked)} validation photos; ask for at most that many (--photos).")
    return picked[:count]


def _serve_inputs(args: argparse.Namespace) -> tuple[Path, Path, list[Path]]:
    """The serve venv's python, the demo folder and the photos, each checked before anything starts."""
    from core.data.samples import flowers_mini_dir, flowers_mini_missing_message
    from core.serving.bundle import find_bundles
    from core.serving.predict import MAX_PHOTOS_PER_BATCH

    if not args.venv or not args.demo:
        raise StudioError("bench serve needs --venv VENV (a serve-profile venv: pip install -r requirements.txt) "
                          "and --demo DIR (the folder holding the demo bundle(s) to serve).")
    python = Path(args.venv) / "bin" / "python"
    if not python.is_file():
        raise StudioError(f"{python}: no such interpreter; --venv takes a virtual environment's folder.")
    demo = Path(args.demo)
    if not find_bundles(demo):
        raise StudioError(f"{demo}: no demo bundle (folder or .zip) in it; make one with "
                          "`python -m core export RUN --format tflite --bundle` and copy its .zip there.")
    photos = SERVE_PHOTOS if args.photos is None else args.photos
    if not 1 <= photos <= MAX_PHOTOS_PER_BATCH:
        raise StudioError(f"--photos takes 1 to {MAX_PHOTOS_PER_BATCH} (one Classify batch), not {photos}.")
    flowers = flowers_mini_dir()
    if flowers is None:
        raise StudioError(flowers_mini_missing_message())
    if not Path(CHROMIUM).is_file():
        raise StudioError(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium).")
    return python, demo, round_robin_val_photos(flowers, photos)


def bundle_summary(path: Path) -> dict[str, Any]:
    """A demo bundle (folder or .zip) by its manifest: file name, backbone, image size, format, size on disk."""
    import zipfile

    from core.serving.bundle import MANIFEST

    if path.is_dir():
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    else:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.rsplit("/", 1)[-1] == MANIFEST), None)
            if name is None:
                raise StudioError(f"{path}: no {MANIFEST} inside; this is not a demo bundle.")
            manifest = json.loads(archive.read(name))
        size = path.stat().st_size
    return {"bundle": path.name, "backbone": manifest.get("backbone"), "image_size": manifest.get("image_size"),
            "format": manifest.get("format"), "mb": round(size / 1e6, 1)}


def bench_serve(args: argparse.Namespace) -> dict[str, Any]:
    """Start the app from a serve-profile venv as the Procfile does, on the bundle(s) in --demo; open it in Chromium,
    wait for Evaluate to show the bundle, classify --photos flowers-mini photos on Classify in one upload; report the
    seconds to a listening port and to that first page, and the server's peak RSS after each step."""
    import tempfile

    python, demo, photos = _serve_inputs(args)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise StudioError("bench serve drives Chromium with Playwright: pip install -r requirements-dev.txt.") from None

    train_packages = packages_in(python, TRAIN_PACKAGES)
    with tempfile.TemporaryDirectory(prefix="studio-bench-serve-") as scratch:
        scratch_dir = Path(scratch)
        with serve_app(python, demo, scratch_dir / "workspace", scratch_dir / "server.log") as served, \
                sync_playwright() as playwright:
            after_start = peak_rss_mib(served.process.pid)
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(BROWSER_TIMEOUT_MS)
                page.goto(served.url)
                page.get_by_text("Demo bundle of run").wait_for()  # the serve profile opens on Evaluate
                first_page = time.perf_counter() - served.started
                after_bundle = peak_rss_mib(served.process.pid)
                shown = classify_in_browser(page, photos)
                after_classify = peak_rss_mib(served.process.pid)
            finally:
                browser.close()
    from core.serving.bundle import find_bundles

    return {"venv": str(Path(args.venv).resolve()), "demo": str(demo.resolve()),
            "bundles": [bundle_summary(path) for path in find_bundles(demo)],
            "train_packages_in_venv": train_packages,
            "seconds_to_port": round(served.seconds_to_port, 2),
            "seconds_to_first_page_with_bundle": round(first_page, 2),
            "peak_rss_mib_after_start": round(after_start),
            "peak_rss_mib_after_bundle": round(after_bundle),
            "peak_rss_mib_after_classify": round(after_classify),
            "photos": len(photos), "photos_classified": len(shown)}
