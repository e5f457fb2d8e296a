"""An experiment pair in a real browser (issue 20): one click on Train starts two runs on the built-in sample, they
train one after the other, and 'Compare this pair' opens Evaluate's Compare on them with a verdict.

The trainers are real (tiny settings: 96 px, the Train page's smallest, and 2 epochs); the pair is "pretrained vs
from scratch" when the baseline CNN is in the registry, else "augmentation vs none" (with one fine-tune epoch, the
only phase augmentation acts in).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from core.base.backbones import BACKBONES
from core.training import pairs
from tests.helpers_ui import (CHROMIUM, flowers_mini, go_to, keep_failure, launch_chromium, require, snapshot,
                              streamlit_server, wait_idle)


def set_number(page, name: str, value: int) -> None:
    box = page.get_by_role("spinbutton", name=name)
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def test_one_click_starts_a_pair_and_compare_opens_on_it_with_a_verdict(tmp_path: Path) -> None:
    require(Path(CHROMIUM).is_file(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    require(flowers_mini() is not None, "flowers-mini is missing (see core.data.samples.flowers_mini_missing_message)")
    from playwright.sync_api import expect, sync_playwright

    transfer = pairs.BASELINE in BACKBONES
    kind = pairs.PAIR_KINDS["transfer" if transfer else "augmentation"]
    expect.set_options(timeout=60_000)
    log = tmp_path / "server.log"
    with streamlit_server(tmp_path / "workspace", log) as url, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(url)
            page.get_by_role("button", name="Use flowers-mini").click()
            expect(page.get_by_text("Ready to train")).to_be_visible()
            go_to(page, "Train")
            size = page.get_by_role("slider", name="Image size (pixels)")
            size.focus()
            size.press("Home")  # 96 px
            wait_idle(page)
            set_number(page, "Head epochs (phase 1, frozen base)", 2)  # the from-scratch run's epochs too
            if not transfer:
                set_number(page, "Fine-tune epochs (phase 2)", 1)
            # The pair kind is the select box's first choice: left as it is, so the one click is the only one.
            started = time.monotonic()
            page.get_by_role("button", name="Start the pair").click()
            expect(page.get_by_text(f"Pair 1: {kind.title}", exact=True)).to_be_visible()
            compare = page.get_by_role("button", name="Compare this pair")
            expect(compare).to_be_visible(timeout=240_000)
            trained = time.monotonic() - started
            expect(page.get_by_text(f"Pair 1: {kind.title}: both runs finished; compare them.")).to_be_visible()
            snapshot(page, "train-pair")
            compare.click()
            expect(page.get_by_role("heading", name="Evaluate", level=1)).to_be_visible()
            verdict = page.locator(".st-key-compare_verdict")
            expect(verdict).to_be_visible(timeout=60_000)  # the Compare tab is the one open
            expect(verdict).to_contain_text(re.compile(r"points \(95% CI (\S+–\S+|\S+ to \S+)\)"), timeout=60_000)
            text = verdict.inner_text()
            labels = kind.labels
            assert re.search(r"\d+\.\d%", text), text
            assert "pair 1: " + labels[1] in text or "pair 1: " + labels[0] in text, text
            expect(page.get_by_text("Accuracy: B − A")).to_be_visible()
            expect(page.get_by_text("McNemar's p")).to_be_visible()
            assert page.locator(".js-plotly-plot").count() >= 3  # classes and the two overlaid curves
            assert re.search(r"[?&]pair=1\b", page.url), page.url
            print(f"pair of {kind.title}: both trained in {trained:.0f} s; verdict: {text}")
            snapshot(page, "compare-pair")
        except Exception:
            keep_failure({"pairs-failure.png": page}, {"pairs-server.log": log})
            raise
        finally:
            browser.close()
