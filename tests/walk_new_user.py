"""A new user's walk in Chromium, run by hand (pytest does not collect it):

    .venv/bin/python tests/walk_new_user.py DATA_DIR

DATA_DIR: a labelled train/ + test/ folder of six classes, e.g. the generated shapes set
(core.data.synthetic.make_shapes_dataset; docs/benchmarks.md has the command). Upload through the folder picker,
check data health, relabel and exclude a suspect, train with the default recipe, click a confusion-matrix cell,
build the stakeholder report and open it offline. Screenshots, the report and timings go to /tmp/nu-out.
"""
import json
import shutil
import sys
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers_ui import folder_picker_input, launch_chromium, streamlit_server, wait_idle
from playwright.sync_api import expect, sync_playwright

OUT = Path("/tmp/nu-out"); shutil.rmtree(OUT, ignore_errors=True); OUT.mkdir()
ws = Path("/tmp/nu-ws"); shutil.rmtree(ws, ignore_errors=True); ws.mkdir()
DATA = Path(sys.argv[1])
times = {}
def shot(page, name):
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
def lap(name, start):
    times[name] = round(time.perf_counter() - start, 1); print(name, times[name], flush=True)

with streamlit_server(ws, OUT / "server.log") as url, sync_playwright() as p:
    b = launch_chromium(p)
    page = b.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    t = time.perf_counter()
    page.get_by_role("tab", name="Upload a folder").click()
    folder_picker_input(page).set_input_files(str(DATA))
    expect(page.get_by_text("Ready to train")).to_be_visible(timeout=600_000)
    lap("upload_2521_photos", t); shot(page, "1-data")
    t = time.perf_counter()
    page.get_by_role("button", name="Check data health").click()
    expect(page.get_by_text("Train/test leaks")).to_be_visible(timeout=900_000)
    lap("health_check", t)
    page.get_by_text("Suspect labels (").click(); wait_idle(page)
    shot(page, "2-health")
    t = time.perf_counter()
    page.get_by_role("button", name="Relabel as").first.click()
    expect(page.get_by_text("Your corrections (1 relabelled, 0 excluded)")).to_be_visible()
    lap("relabel_click", t)
    page.get_by_role("button", name="Exclude").first.click()
    expect(page.get_by_text("Your corrections (1 relabelled, 1 excluded)")).to_be_visible()
    shot(page, "3-corrections")
    t = time.perf_counter()
    page.get_by_role("link", name="Go to Train").click()
    expect(page.get_by_text("Your corrections from the Data page are used")).to_be_visible()
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_text("succeeded").first).to_be_visible(timeout=1_200_000)
    lap("train_default_recipe", t); shot(page, "4-train")
    page.get_by_role("link", name="Evaluate this run").click(); wait_idle(page)
    expect(page.get_by_text("Macro F1")).to_be_visible()
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    area = chart.locator("rect.nsewdrag").first
    box = area.bounding_box(); n = 6
    # the cell of row 0, column 1 (an off-diagonal one): its heading is printed
    t = time.perf_counter()
    page.mouse.click(box["x"] + 1.5 * box["width"] / n, box["y"] + 0.5 * box["height"] / n); wait_idle(page)
    lap("cell_click", t)
    shot(page, "5-evaluate-cell")
    text = page.inner_text("body")
    print("cell heading:", [l for l in text.splitlines() if "→ predicted" in l][:2])
    t = time.perf_counter()
    page.get_by_role("button", name="Build report").click()
    button = page.get_by_role("button", name="Download report-")
    expect(button).to_be_visible(timeout=300_000)
    lap("report_build", t)
    with page.expect_download() as info:
        button.click()
    path = OUT / "report.html"; info.value.save_as(path)
    print("report MB", round(path.stat().st_size / 1e6, 2))
    shot(page, "6-evaluate-report")
    # the report offline
    rp = b.new_page(); blocked = []
    rp.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://")
             else (blocked.append(route.request.url), route.abort()))
    rp.on("pageerror", lambda e: errors.append("report: " + str(e)))
    rp.goto(path.as_uri()); rp.wait_for_timeout(3000); rp.screenshot(path=str(OUT / "7-report.png"), full_page=True)
    print("blocked", blocked, "errors", errors)
    b.close()
print(json.dumps(times))
(OUT / "times.json").write_text(json.dumps(times))
