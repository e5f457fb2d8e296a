"""Issue 12.1 in a real browser: a 2,020-file, 6-class folder picked in Chromium arrives whole, in one request,
the Data page accounts for every picked file, and the server lets go of the upload's memory. A folder over the
upload limit is refused before anything is sent. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import require
from tests.helpers_ui import (CHROMIUM, folder_picker_input, keep_failure, launch_chromium, make_photo_folder, rss_mb,
                              record_uploads, snapshot, streamlit_server, wait_idle, warm_up_with_a_small_folder)

RSS_GROWTH_LIMIT_MB = 100  # the bound on what a 2,000-file upload may leave behind in the server


def test_a_2020_file_folder_arrives_whole_and_every_file_is_accounted_for(tmp_path: Path) -> None:
    require(Path(CHROMIUM).is_file(), f"Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)
    warm_up = tmp_path / "warm-up"
    make_photo_folder(warm_up, photos=24, garbage=0, notes=0)
    folder = tmp_path / "fruit-photos"
    expected = make_photo_folder(folder)  # 2,010 photos, 6 damaged, 3 notes, a .DS_Store
    assert expected["picked"] == 2020
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    with streamlit_server(workspace, tmp_path / "server.log") as url, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        uploads = record_uploads(page)
        picker = page.frame_locator('iframe[title*="folder_picker"]')
        try:
            pid, rss_before = warm_up_with_a_small_folder(page, url, warm_up)
            uploads.clear()

            started = time.perf_counter()
            folder_picker_input(page).set_input_files(str(folder))
            accounted = page.get_by_text("All 2,020 picked files arrived: 2,010 received, 4 skipped, 6 unreadable, "
                                         "0 missing.")
            expect(accounted).to_be_visible(timeout=180_000)
            seconds = time.perf_counter() - started
            expect(page.get_by_role("heading", name="Dataset: fruit-photos-")).to_be_visible()
            expect(page.get_by_text("Ready to train")).to_be_visible()
            for i in range(6):  # the unreadable files are named
                expect(accounted).to_contain_text(f"fruit-photos/{('apple', 'banana', 'cherry', 'date', 'elder', 'fig')[i]}"
                                                  f"/damaged-{i}.jpg")
            expect(picker.get_by_text("Sent fruit-photos.zip: 2,020 files")).to_be_visible()
            page.get_by_text("Picked files that are not training images (10)").click()
            wait_idle(page)
            snapshot(page, "folder-upload")

            # One request for the whole folder, and none of the per-file failures Chromium used to log.
            assert len(uploads) == 1, uploads
            assert not [m for m in console if "ERR_INSUFFICIENT_RESOURCES" in m], console
            # Every picked file but the .DS_Store is on disk, byte for byte.
            landed = next(workspace.glob("sessions/*/datasets/fruit-photos-*")) / "fruit-photos"
            on_disk = sorted(p.relative_to(landed).as_posix() for p in landed.rglob("*") if p.is_file())
            picked = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                            if p.is_file() and p.name != ".DS_Store")
            assert on_disk == picked
            assert (landed / "fig" / "photo-00005.jpg").read_bytes() == (folder / "fig" / "photo-00005.jpg").read_bytes()
            # Streamlit let go of the archive: the server's memory is back near where it was.
            time.sleep(1)
            rss_after = rss_mb(pid)
            assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB, (rss_before, rss_after)
        except Exception:
            keep_failure({"failure-folder-upload.png": page}, {"server-folder-upload.log": tmp_path / "server.log"})
            raise
        finally:
            browser.close()
    print(f"2,020-file folder: accounted for in {seconds:.1f} s; server RSS {rss_before:.0f} -> {rss_after:.0f} MB")


def test_a_folder_over_the_upload_limit_is_refused_before_sending(tmp_path: Path, monkeypatch) -> None:
    require(Path(CHROMIUM).is_file(), f"Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("STREAMLIT_SERVER_MAX_UPLOAD_SIZE", "1")  # MB, overriding .streamlit/config.toml
    folder = tmp_path / "too-big"
    make_photo_folder(folder, photos=150, garbage=0, notes=0, size=112)  # ~2 MB
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    with streamlit_server(workspace, tmp_path / "server.log") as url, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        uploads: list[str] = []
        page.on("request", lambda r: uploads.append(r.url) if "/_stcore/upload_file" in r.url else None)
        try:
            page.goto(url)
            wait_idle(page, timeout=120_000)
            page.get_by_role("tab", name="Upload a folder").click()
            folder_picker_input(page).set_input_files(str(folder))
            picker = page.frame_locator('iframe[title*="folder_picker"]')
            expect(picker.get_by_text("This folder holds 2 MB in 151 files; one upload may be at most 1 MB "
                                      "(the server's maxUploadSize).")).to_be_visible(timeout=30_000)
            snapshot(page, "folder-upload-refused")
            assert uploads == []
            assert not list(workspace.glob("sessions/*/datasets/*"))
        except Exception:
            keep_failure({"failure-folder-refused.png": page})
            raise
        finally:
            browser.close()
