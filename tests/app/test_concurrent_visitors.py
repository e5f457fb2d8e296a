"""Four visitors classify at the same moment in a real browser (issue 27.5), on one demo bundle and on one run.

A stakeholder demo is several people opening one link together. Streamlit serves every session from threads of one
process, and the Classify page's model is loaded once for all of them (st.cache_resource): the LiteRT interpreter a
bundle held was used from several threads at once, and 3 of 6 visitors got a traceback. Here four Chromium contexts
(four sessions) upload eight different photos each at the same moment; every visitor must get eight answers, no
traceback, and for each photo the class and confidence core gives for the same bytes, so answers mixed between
visitors fail too. How fast and how much memory is `python -m core bench load`'s to measure, not this test's.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers_ui import CHROMIUM, CHROMIUM_ARGS, flowers_mini, keep_failure, require, streamlit_server

IMAGE_SIZE = 64  # the run only has to be real, not good
VISITORS = 4
PHOTOS_EACH = 8
PHOTOS_EACH_WITH_HEATMAPS = 4  # a heatmap is a second pass through the Keras model: fewer keep the test short
TIMEOUT_MS = 180_000  # four sessions at once on a busy 2-core machine
PERCENT_SLACK = 0.2  # the page shows one decimal of the same computation
SHOWN = re.compile(r"\s*(\S+): (?:unknown \(.*\); best guess )?(\S+) \(([\d.]+)%\)\s*", re.S)


@dataclass
class SharedApp:
    url: str
    run: object  # core.base.runs.RunDir
    bundle: Path  # the demo bundle folder the server offers
    log: Path


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedApp]:
    """A tiny real run and its LiteRT demo bundle, one Streamlit server offering both to every visitor."""
    require(Path(CHROMIUM).is_file(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    require(flowers_mini() is not None, "flowers-mini is missing (see core.data.samples.flowers_mini_missing_message)")
    require(importlib.util.find_spec("ai_edge_litert") is not None, "ai-edge-litert (requirements-train.txt)")
    from core.base.config import TrainConfig
    from core.serving.export import export_run, make_demo_bundle
    from core.training.train import run_training

    root = tmp_path_factory.mktemp("concurrent")
    workspace, demo = root / "workspace", root / "demo"
    run = run_training(TrainConfig(data=str(flowers_mini()), image_size=IMAGE_SIZE, finetune_epochs=0),
                       models_dir=workspace / "runs")
    assert run.read_status()["state"] == "succeeded", run.read_status()
    export_run(run, ["tflite"])
    bundle = shutil.copytree(make_demo_bundle(run, "tflite"), demo / f"{run.run_id}-tflite")
    log = root / "server.log"
    with streamlit_server(workspace, log, env={"STUDIO_SHARED_WORKSPACE": "1", "STUDIO_DEMO_DIR": str(demo)}) as url:
        yield SharedApp(url, run, Path(bundle), log)


def visitor_photos(each: int = PHOTOS_EACH) -> list[list[Path]]:
    """Different flowers-mini validation photos for each visitor (their names are unique across classes)."""
    photos = sorted((flowers_mini() / "val").glob("*/*.jpg"))
    assert len(photos) >= VISITORS * each
    return [photos[v::VISITORS][:each] for v in range(VISITORS)]


def core_answers(classifier, photos: list[Path]) -> dict[str, tuple[str, float]]:
    """{name: (class, percent)} as the page computes them: the uploaded bytes decoded the page's way."""
    from core.serving.predict import decode_uploads

    class Upload:
        def __init__(self, path: Path):
            self.name, self.path = path.name, path

        def getvalue(self) -> bytes:
            return self.path.read_bytes()

    batch = decode_uploads([Upload(p) for p in photos], classifier.image_size)
    results = classifier.classify_arrays([item.photo.model_input for item in batch.photos], top_k=1)
    return {item.name: (top[0]["class"], 100 * top[0]["probability"]) for item, top in zip(batch.photos, results)}


async def shown_answers(page, count: int) -> dict[str, tuple[str, float]]:
    """The page's line per photo, polled until all `count` are drawn (the script adds them one by one)."""
    deadline = time.monotonic() + 60
    while True:
        shown = {}
        for text in await page.locator('[data-testid="stMain"] [data-testid="stMarkdownContainer"]').all_inner_texts():
            match = SHOWN.fullmatch(text)
            if match:
                shown[match.group(1)] = (match.group(2), float(match.group(3)))
        if len(shown) >= count or time.monotonic() > deadline:
            return shown
        await page.wait_for_timeout(300)


async def heatmaps_shown(page, count: int) -> int:
    """How many heatmap captions the page shows, polled until `count` are drawn (each comes after its answer)."""
    captions = page.get_by_text(re.compile(r"^where it saw "))
    deadline = time.monotonic() + 60
    while await captions.count() < count and time.monotonic() < deadline:
        await page.wait_for_timeout(300)
    return await captions.count()


async def wait_idle(page) -> None:
    await page.wait_for_timeout(300)
    await page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=TIMEOUT_MS)


async def classify_together(address: str, photos: list[list[Path]], shots: Path) -> list[dict]:
    """Open Classify at `address` in one context per visitor, wait until every page is ready, then all upload at
    once; per visitor: the answers shown, the tracebacks on the page, and the seconds to all answers."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pages = []
        for _ in photos:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            page = await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            pages.append(page)
        await asyncio.gather(*(page.goto(address) for page in pages))
        await asyncio.gather(*(page.get_by_role("heading", name="Classify", level=1).wait_for() for page in pages))
        await asyncio.gather(*(wait_idle(page) for page in pages))

        async def visit(page, mine: list[Path]) -> dict:
            started = time.perf_counter()
            await page.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files(
                [str(p) for p in mine])
            done = page.get_by_text(f"Classified {len(mine)} photo(s)").or_(
                page.locator('[data-testid="stException"]'))
            await done.first.wait_for(timeout=TIMEOUT_MS)
            await wait_idle(page)
            shown = await shown_answers(page, len(mine))
            seconds = time.perf_counter() - started
            return {"shown": shown, "seconds": seconds,
                    "heatmaps": await heatmaps_shown(page, len(mine) if "run=" in address else 0),
                    "tracebacks": await page.locator('[data-testid="stException"]').all_inner_texts()}

        try:
            return list(await asyncio.gather(*(visit(page, mine) for page, mine in zip(pages, photos))))
        finally:
            for index, page in enumerate(pages):
                await page.screenshot(path=str(shots / f"visitor-{index}.png"), full_page=True)
            await browser.close()


def check_every_visitor(visits: list[dict], photos: list[list[Path]], classifier) -> None:
    for index, (visit, mine) in enumerate(zip(visits, photos)):
        assert visit["tracebacks"] == [], f"visitor {index} got a traceback: {visit['tracebacks'][0][:500]}"
        expected = core_answers(classifier, mine)
        assert set(visit["shown"]) == set(expected), f"visitor {index} saw answers for {sorted(visit['shown'])}"
        for name, (cls, percent) in visit["shown"].items():
            assert cls == expected[name][0] and abs(percent - expected[name][1]) <= PERCENT_SLACK, \
                f"visitor {index}, {name}: the page shows {cls} {percent}%, core gives {expected[name]}"
    print("seconds to all answers per visitor:", [round(v["seconds"], 1) for v in visits])


def test_four_visitors_classify_at_once_on_one_demo_bundle(shared_app: SharedApp, tmp_path: Path) -> None:
    from core.serving.bundle import load_demo_bundle

    photos = visitor_photos()
    try:
        visits = asyncio.run(classify_together(f"{shared_app.url}/classify?demo={shared_app.bundle.name}", photos,
                                               tmp_path))
        check_every_visitor(visits, photos, load_demo_bundle(shared_app.bundle).classifier)
    except Exception:
        keep_failure({}, {"concurrent-bundle-server.log": shared_app.log})
        shutil.copytree(tmp_path, Path(__file__).parents[1] / "artifacts" / "concurrent-bundle", dirs_exist_ok=True)
        raise


def test_four_visitors_classify_at_once_on_one_run_with_heatmaps(shared_app: SharedApp, tmp_path: Path) -> None:
    from core.serving.predict import Classifier

    photos = visitor_photos(PHOTOS_EACH_WITH_HEATMAPS)
    try:
        visits = asyncio.run(classify_together(f"{shared_app.url}/classify?run={shared_app.run.run_id}", photos,
                                               tmp_path))
        check_every_visitor(visits, photos, Classifier(shared_app.run))
        assert [v["heatmaps"] for v in visits] == [PHOTOS_EACH_WITH_HEATMAPS] * VISITORS, "a visitor lacks heatmaps"
    except Exception:
        keep_failure({}, {"concurrent-run-server.log": shared_app.log})
        shutil.copytree(tmp_path, Path(__file__).parents[1] / "artifacts" / "concurrent-run", dirs_exist_ok=True)
        raise
