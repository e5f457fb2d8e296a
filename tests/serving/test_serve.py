"""The serve profile end to end (issue 6, "Done when"): a fresh virtual environment built from requirements.txt
alone starts the app on $PORT, loads a demo bundle that the train profile produced, and classifies photos in a
real browser with the same top-1 as the train profile's `python -m core predict`; the training pages say they
need the train profile.

How fast it starts and how much memory it takes are benchmark figures, not test outcomes (this machine is shared
and noisy): `python -m core bench serve --venv VENV --demo DIR --photos N` measures them with the same start-up
(core.bench.serve_app) and the same browser steps (docs/benchmarks.md, docs/deploy.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.bench import TRAIN_PACKAGES, classify_in_browser, packages_in, serve_app
from tests.helpers_ui import ARTIFACTS, CHROMIUM, REPO_ROOT, flowers_mini, go_to, launch_chromium, require

# Head only, one epoch, 96 px: the bundle only has to exist and agree with Keras, not be good.
TINY_TRAIN = ["--image-size", "96", "--head-epochs", "1", "--finetune-epochs", "0"]
CANDIDATES = 2  # val photos per class given to `python -m core predict`; the browser gets 3 of them
SHOWN = 3
SERVE_VENV_ENV = "STUDIO_SERVE_VENV"  # reuse an existing serve venv (local iteration only; CI builds a fresh one)


# ----------------------------------------------------------------------------------------- helpers
def build_serve_venv(folder: Path) -> Path:
    """python -m venv + pip install -r requirements.txt (and nothing else); returns the venv's python."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True, timeout=120)
    python = folder / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                             "-r", str(REPO_ROOT / "requirements.txt")],
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"pip install -r requirements.txt failed:\n{result.stderr[-3000:]}")
    return python


def train_cli(*args: str, timeout: float = 900) -> str:
    """`python -m core ...` in the train profile (this interpreter); returns stdout, fails with stderr's tail."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"python -m core {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result.stdout


def val_photos(flowers: Path, picks: list[tuple[str, int]]) -> list[Path]:
    """Chosen validation photos of flowers-mini (names are unique across classes)."""
    return [sorted((flowers / "val" / cls).glob("*.jpg"))[index] for cls, index in picks]


def distinct_predictions(predicted: list[dict], count: int) -> list[dict]:
    """`count` predictions, as many different top-1 classes first as there are: a model that says one class for
    everything would otherwise let a browser that shows a constant pass."""
    chosen: list[dict] = []
    for result in predicted:
        if result["predicted"] not in {c["predicted"] for c in chosen}:
            chosen.append(result)
    return (chosen + [r for r in predicted if r not in chosen])[:count]


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def serve_python(tmp_path_factory) -> Path:
    """A fresh venv from requirements.txt alone, built once per test session (needs PyPI; CI has it)."""
    reuse = os.environ.get(SERVE_VENV_ENV)
    if reuse:
        return Path(reuse) / "bin" / "python"
    try:
        return build_serve_venv(tmp_path_factory.mktemp("serve-venv") / ".venv")
    except (RuntimeError, subprocess.SubprocessError, OSError) as err:
        require(False, f"could not build the serve venv from requirements.txt ({str(err)[-500:]})")
        raise


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """A tiny Lite0 run trained and bundled by the train profile's CLI, and its `predict` top-1 for SHOWN photos."""
    flowers = flowers_mini()
    require(flowers is not None, "flowers-mini is missing (see core.data.samples.flowers_mini_missing_message)")
    require(all(importlib.util.find_spec(m) for m in ("tensorflow", "ai_edge_litert")),
            "the train profile (requirements-train.txt) in this interpreter")
    root = tmp_path_factory.mktemp("serve-demo")
    run = train_cli("--models-dir", str(root / "models"), "train", "--data", str(flowers),
                    *TINY_TRAIN).strip().splitlines()[-1]
    exported = json.loads(train_cli("--models-dir", str(root / "models"), "export", run, "--format", "tflite",
                                    "--bundle"))
    demo_dir = root / "demo"
    demo_dir.mkdir()
    shutil.copy(exported["bundle"]["zip"], demo_dir)  # ship the .zip, as a deployment would commit it
    classes = sorted(p.name for p in (flowers / "val").iterdir())
    candidates = val_photos(flowers, [(c, i) for c in classes for i in range(CANDIDATES)])
    predicted = json.loads(train_cli("--models-dir", str(root / "models"), "predict", run, *map(str, candidates)))
    chosen = distinct_predictions(predicted, SHOWN)
    return {"dir": demo_dir, "photos": [Path(p["path"]) for p in chosen], "run": run,
            "top1": {Path(p["path"]).name: (p["predicted"], 100 * p["confidence"]) for p in chosen}}


# ----------------------------------------------------------------------------------------- the test
def test_fresh_serve_venv_classifies_a_bundle_like_the_train_profile(serve_python: Path, demo: dict,
                                                                      tmp_path: Path) -> None:
    require(Path(CHROMIUM).is_file(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    leaked = packages_in(serve_python, TRAIN_PACKAGES)
    assert leaked == [], f"the serve venv has train-profile packages: {leaked}"
    expect.set_options(timeout=60_000)
    log = tmp_path / "server.log"
    with serve_app(serve_python, demo["dir"], tmp_path / "workspace", log) as served, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(served.url)
            sidebar = page.locator('[data-testid="stSidebar"]')
            expect(sidebar.get_by_text("serve profile")).to_be_visible()
            expect(page.get_by_text("Demo bundle of run")).to_be_visible()  # Evaluate opens on the bundle
            shown = classify_in_browser(page, demo["photos"])
            assert {n: c for n, (c, _) in shown.items()} == {n: c for n, (c, _) in demo["top1"].items()}, \
                f"browser (serve venv) {shown} != train profile {demo['top1']}"
            # Probabilities are not compared: `predict` reads a JPEG file with DCT downscaling (load_for_model), the
            # page decodes the uploaded bytes at full size before resizing, which moves them by ~0.3 points.
            expect(page.get_by_text("Heatmaps need")).to_be_visible()
            main = page.locator('[data-testid="stMain"]')
            for title in ("Data", "Train"):
                go_to(page, title)
                expect(main.get_by_text("needs the train profile")).to_be_visible()
                expect(main.get_by_text("requirements-train.txt")).to_be_visible()
        except Exception:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-failure.png"))
            shutil.copy(log, ARTIFACTS / "serve-server.log")
            raise
        finally:
            browser.close()
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]
