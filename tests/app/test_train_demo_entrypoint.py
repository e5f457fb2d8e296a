"""The training demo's entrypoint for Community Cloud (issue 31.8): train_demo/streamlit_app.py starts the same app
from its own folder, next to a requirements file that installs the train profile."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import REPO
from core.network.device import DeviceInfo
from tests.helpers_ui import streamlit_server

DEMO = REPO / "train_demo" / "streamlit_app.py"
PAGES = ["data", "augment", "train", "evaluate", "classify", "workspace"]


def requirement_lines(path: Path) -> list[str]:
    """Every requirement pip would read from `path`, following -r lines relative to the file that names them."""
    lines: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            lines += requirement_lines((path.parent / line[3:].strip()).resolve())
        elif line and not line.startswith("-"):
            lines.append(line)
    return lines


def test_the_demo_folder_installs_the_train_profile_and_the_root_stays_serve() -> None:
    demo = requirement_lines(REPO / "train_demo" / "requirements.txt")
    root = requirement_lines(REPO / "requirements.txt")
    assert set(requirement_lines(REPO / "requirements-train.txt")) == set(demo)
    assert set(root) < set(demo) and any(line.startswith("tensorflow==") for line in demo)
    assert not any(line.startswith("tensorflow") for line in root)


def test_every_page_opens_from_the_demo_entrypoint_and_links_between_pages_resolve(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setattr("core.network.device.detect_device", lambda: DeviceInfo("tensorflow", "cpu", "CPU only", 1))
    monkeypatch.setattr("core.data.samples.is_online", lambda *a, **k: False)
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(str(DEMO), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    for page in PAGES:
        at.switch_page(f"../pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error or all("cannot be set together" not in e.value for e in at.error)
    # A link between pages resolves from the demo's folder: the Train page without a dataset links to Data (a
    # relative "pages/data.py" would be looked for in train_demo/ and raise StreamlitPageNotFoundError there).
    at.switch_page("../pages/train.py").run()
    links = [link.proto for link in at.get("page_link")]
    assert any(link.label == "Go to Data" and link.page_script_hash for link in links), links


@pytest.mark.parametrize("cwd", ["root", "demo folder"])
def test_the_demo_server_opens_every_page_in_chromium_from_the_root_and_from_its_folder(tmp_path, cwd) -> None:
    """Community Cloud runs `streamlit run train_demo/streamlit_app.py` from the repository's root; run from its own
    folder it must work too (core and pages are found from the file, not the working directory). Each page is opened
    through the sidebar as a visitor would, and must show its heading and no error."""
    from playwright.sync_api import sync_playwright

    from tests.helpers_ui import CHROMIUM, go_to, launch_chromium, require, wait_idle

    require(Path(CHROMIUM).is_file(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    script = "train_demo/streamlit_app.py" if cwd == "root" else "streamlit_app.py"
    folder = REPO if cwd == "root" else REPO / "train_demo"
    env = {"STUDIO_DEMO_DIR": str(tmp_path / "no-demo")}
    with streamlit_server(tmp_path / "ws", tmp_path / "server.log", env=env, script=script, cwd=folder) as url, \
            sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.goto(url)
            wait_idle(page)
            for title in ("Data", "Augment", "Train", "Evaluate", "Classify", "Workspace"):
                go_to(page, title)
                wait_idle(page)
                assert page.locator('[data-testid="stException"]').count() == 0, (title, page.content()[-2000:])
        finally:
            browser.close()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "ModuleNotFoundError" not in log, log[-2000:]
