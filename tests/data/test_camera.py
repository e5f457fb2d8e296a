"""Camera photos as training data (issue 16.5): core.data.camera (names, bytes, limits, unique atomic files, undo), the
Data page's camera functions through AppTest, and one real Chromium with a fake camera taking photos on the Data page.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import StudioError
from core.data.camera import (PHOTO_NAME, add_photo, check_class_name, class_names, new_camera_dataset, photo_counts,
                         remove_photo)
from core.data.datasets import resolve_root, scan
from core.data.images import decode_image, read_image
from core.data.ingest import COMPLETE_MARKER, UploadLimits, list_datasets
from tests.helpers_ui import (CHROMIUM, keep_failure, launch_chromium, record_uploads, require, streamlit_server,
                              wait_idle)

NOW = 1_750_000_000.25  # 2025-06-15T15:06:40.250Z


def jpeg(seed: int = 0, size: tuple[int, int] = (48, 64)) -> bytes:
    """A small JPEG of random pixels (distinct per seed), as a camera widget sends."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", pixels)[1].tobytes()


def files_in(folder: Path) -> list[str]:
    """Every file below `folder`, hidden ones included (a leftover temporary file must show)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return new_camera_dataset(tmp_path / "datasets", "My pets", ["cat", "dog"])


# ------------------------------------------------------------------------------------------------ core.data.camera
HOSTILE = ["", "   ", "..", ".", "../cat", "cat/../../etc", "a/b", "a\\b", "/etc", ".hidden", "__MACOSX", ".DS_Store",
           "x" * 101, "猫" * 60, "train", "VAL", "Validation", "test", "a\x00b", "tab\there", "a\u202egpj.exe",
           "a:b", 'say "hi"', "what?", "con", "NUL.txt", "trailing.", "x.overrides.json"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_class_names_are_refused_with_a_sentence_and_nothing_is_written(dataset: Path, name: str) -> None:
    before = files_in(dataset)
    with pytest.raises(StudioError) as refused:
        add_photo(dataset, name, jpeg(), now=NOW)
    assert refused.value.args[0].endswith((".", "!")) and len(refused.value.args[0]) > 30
    assert files_in(dataset) == before
    assert sorted(p.name for p in dataset.iterdir()) == [COMPLETE_MARKER, "My-pets"]
    assert class_names(dataset) == ["cat", "dog"]


def test_plain_names_are_kept_as_typed() -> None:
    assert check_class_name("  golden retriever ") == "golden retriever"
    assert check_class_name("Cafe\u0301") == "Café"  # NFC: one folder however the keyboard composed it
    assert check_class_name("x" * 100) == "x" * 100
    assert check_class_name("Class 1_b-2") == "Class 1_b-2"


def test_new_camera_dataset_is_listed_like_an_upload(tmp_path: Path) -> None:
    parent = tmp_path / "datasets"
    root = new_camera_dataset(parent, "My pets!", ["cat", "  dog  ", "Class 3"])
    assert root.parent == parent and root.name.startswith("My-pets-") and len(root.name) == len("My-pets-") + 8
    assert (root / COMPLETE_MARKER).is_file() and resolve_root(root) == root / "My-pets"  # as an upload is kept
    assert list_datasets(parent) == [root]
    assert class_names(root) == ["Class 3", "cat", "dog"] and photo_counts(root) == {"Class 3": 0, "cat": 0, "dog": 0}
    assert new_camera_dataset(parent, "My pets!", ["cat", "dog"]) != root  # a second one never reuses the first
    assert not [p for p in parent.iterdir() if p.name.startswith(".")]  # no staging folder left


@pytest.mark.parametrize("classes, says", [
    (["cat"], "at least 2 classes"), ([], "at least 2 classes"), (["cat", "Cat"], "given twice"),
    (["cat", "../dog"], "path"), (["cat", "train"], "split folder"), ([f"c{i}" for i in range(101)], "at most 100"),
])
def test_new_camera_dataset_refuses_bad_class_lists_and_leaves_nothing(tmp_path: Path, classes: list[str],
                                                                        says: str) -> None:
    with pytest.raises(StudioError, match=says):
        new_camera_dataset(tmp_path / "datasets", "pets", classes)
    assert not (tmp_path / "datasets").exists() or not list((tmp_path / "datasets").iterdir())


def test_photos_get_unique_names_decode_and_are_counted(dataset: Path) -> None:
    paths = [add_photo(dataset, "cat", jpeg(i), now=NOW) for i in range(3)]  # the same millisecond, three photos
    paths.append(add_photo(dataset, "dog", jpeg(9), now=NOW + 1))
    assert [p.relative_to(resolve_root(dataset)).as_posix() for p in paths] == [
        "cat/camera-20250615T150640250Z-1.jpg", "cat/camera-20250615T150640250Z-2.jpg",
        "cat/camera-20250615T150640250Z-3.jpg", "dog/camera-20250615T150641250Z-1.jpg"]
    assert [p.read_bytes() for p in paths] == [jpeg(0), jpeg(1), jpeg(2), jpeg(9)]  # the camera's JPEG, unchanged
    assert all(PHOTO_NAME.fullmatch(p.name) for p in paths)
    assert photo_counts(dataset) == {"cat": 3, "dog": 1}
    report = scan(dataset).report
    assert report.usable_images == 4 and not report.unreadable and not report.errors and not report.skipped
    assert not [f for f in files_in(dataset) if f.split("/")[-1].startswith(".camera-")]  # no temporary file left


def test_a_photo_never_overwrites_a_file(dataset: Path) -> None:
    squatter = resolve_root(dataset) / "cat" / "camera-20250615T150640250Z-1.jpg"
    squatter.write_bytes(b"someone else's file")
    path = add_photo(dataset, "cat", jpeg(), now=NOW)
    assert path.name == "camera-20250615T150640250Z-2.jpg"
    assert squatter.read_bytes() == b"someone else's file"


def test_a_new_class_gets_its_folder_and_a_split_layout_gets_train(tmp_path: Path, dataset: Path) -> None:
    assert add_photo(dataset, "bird", jpeg(), now=NOW).parent == resolve_root(dataset) / "bird"
    split = tmp_path / "split"
    for part in ("train", "val"):
        for name in ("cat", "dog"):
            (split / part / name).mkdir(parents=True)
    (split / "val" / "fox").mkdir()
    assert class_names(split) == ["cat", "dog", "fox"]
    assert add_photo(split, "cat", jpeg(), now=NOW).parent == split / "train" / "cat"
    assert add_photo(split, "fox", jpeg(), now=NOW).parent == split / "train" / "fox"
    assert photo_counts(split) == {"cat": 1, "dog": 0, "fox": 1}
    assert scan(split).report.layout == "split_folders"


@pytest.mark.parametrize("data, says", [
    (b"", "empty"), (b"\xff\xd8\xff\xe0 this is no photo", "not a readable image"),
    (jpeg(0, (96, 128))[:4000], "damaged or truncated"),
])
def test_damaged_photos_are_refused_naming_the_photo(dataset: Path, data: bytes, says: str) -> None:
    with pytest.raises(StudioError, match=says) as refused:
        add_photo(dataset, "cat", data, now=NOW, source="Photo 3 for 'cat'")
    assert str(refused.value).startswith("Photo 3 for 'cat'") and "Nothing was saved" in str(refused.value)
    assert files_in(dataset) == [COMPLETE_MARKER]


def test_oversized_photos_are_refused(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("core.data.images.MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(StudioError, match="pixel limit"):
        add_photo(dataset, "cat", jpeg(), now=NOW, source="The camera photo")
    assert files_in(dataset) == [COMPLETE_MARKER]


def test_a_png_is_stored_as_the_jpeg_its_name_says(dataset: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), (200, 30, 60), np.uint8)).save(buffer, format="PNG")
    path = add_photo(dataset, "cat", buffer.getvalue(), now=NOW)
    assert path.read_bytes()[:3] == b"\xff\xd8\xff"
    assert Image.open(path).format == "JPEG" and read_image(path).shape == (30, 40, 3)


def test_quota_and_upload_limits_refuse_a_photo(dataset: Path) -> None:
    with pytest.raises(StudioError, match="quota"):
        add_photo(dataset, "cat", jpeg(), now=NOW, quota_left=100)
    small = UploadLimits(max_files=3, max_total_bytes=10**6, max_compression_ratio=100)
    add_photo(dataset, "cat", jpeg(1), now=NOW, limits=small)
    add_photo(dataset, "dog", jpeg(2), now=NOW, limits=small)  # 3 files with the completeness marker
    with pytest.raises(StudioError, match="file count limit"):
        add_photo(dataset, "dog", jpeg(3), now=NOW, limits=small)
    tight = UploadLimits(max_files=100, max_total_bytes=len(jpeg(1)) * 2 + 100, max_compression_ratio=100)
    with pytest.raises(StudioError, match="total size limit"):
        add_photo(dataset, "dog", jpeg(4), now=NOW, limits=tight)
    assert photo_counts(dataset) == {"cat": 1, "dog": 1}


def test_the_hosted_quota_applies_as_to_uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No quota passed: read from the session workspace the dataset lies in (STUDIO_HOSTED)."""
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    monkeypatch.setenv("STUDIO_VISITOR_QUOTA_MB", "0.004")  # ~4 KB
    session = tmp_path / "ws" / "sessions" / ("ab" * 16) / "datasets"
    root = new_camera_dataset(session, "pets", ["cat", "dog"])
    add_photo(root, "cat", jpeg(1, (8, 8)), now=NOW)  # a few hundred bytes fit
    with pytest.raises(StudioError, match="quota"):
        add_photo(root, "cat", jpeg(2, (64, 64)), now=NOW)  # ~3.5 KB more does not
    monkeypatch.setenv("STUDIO_VISITOR_QUOTA_MB", "0.0001")
    with pytest.raises(StudioError, match="workspace is full"):
        new_camera_dataset(session, "more", ["a", "b"])


def test_undo_removes_only_camera_photos_of_this_dataset(tmp_path: Path, dataset: Path) -> None:
    photo = add_photo(dataset, "cat", jpeg(), now=NOW)
    own = resolve_root(dataset) / "cat" / "mine.jpg"
    own.write_bytes(jpeg(5))
    other = new_camera_dataset(tmp_path / "datasets", "other", ["a", "b"])
    elsewhere = add_photo(other, "a", jpeg(6), now=NOW)
    for path in (own, elsewhere, dataset / COMPLETE_MARKER, own.parent / ".." / ".." / elsewhere.name,
                 tmp_path / photo.name):
        with pytest.raises(StudioError, match="not"):
            remove_photo(dataset, path)
    assert own.is_file() and elsewhere.is_file()
    assert remove_photo(dataset, photo) is True and not photo.exists()
    assert remove_photo(dataset, photo) is False  # a second click: nothing left to do


# ------------------------------------------------------------------------------------------------ AppTest
def camera_page() -> None:
    """The two functions as the Data page calls them (AppTest runs this source as a script)."""
    from pages._camera import camera_section, camera_tab
    from pages._session import current_dataset_path

    camera_tab()
    current = current_dataset_path()
    if current is not None:
        camera_section(current)


@pytest.fixture
def ui_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("STUDIO_SHARED_WORKSPACE", "1")
    st.cache_data.clear()
    return tmp_path / "ws"


def test_camera_tab_makes_a_dataset_and_each_photo_lands_in_its_class(ui_workspace: Path) -> None:
    at = AppTest.from_function(camera_page, default_timeout=30).run()
    at.text_input[0].input("My pets")
    at.text_area[0].input("cat\ndog\n")
    at.button[0].click().run()  # the form's submit
    assert not at.exception, [e.value for e in at.exception]
    [root] = list_datasets(ui_workspace / "datasets")
    assert root.name.startswith("My-pets-") and class_names(root) == ["cat", "dog"]
    assert at.toggle(key="camera_on").value is True  # the camera opens at once after "Create"
    keys = []
    for i, name in enumerate(["cat", "cat", "dog"]):
        at.selectbox(key="camera_class").select(name).run()
        [camera] = at.camera_input
        keys.append(camera.key)
        assert camera.label == f"Take photos of {name} ({photo_counts(root)[name]} so far)"
        camera.set_value(("image.jpg", jpeg(i), "image/jpeg")).run()
        assert not at.exception, [e.value for e in at.exception]
    assert len(set(keys)) == 3 and at.camera_input[0].key not in keys  # a fresh camera after each photo
    assert photo_counts(root) == {"cat": 2, "dog": 1}
    assert [len(list((resolve_root(root) / c).glob("camera-*.jpg"))) for c in ("cat", "dog")] == [2, 1]
    assert any("cat: 2 · dog: 1" in c.value for c in at.caption)
    undo = next(b for b in at.button if b.key == "camera_undo")
    assert undo.label == "Undo the last photo (dog)"
    undo.click().run()
    assert photo_counts(root) == {"cat": 2, "dog": 0}
    assert any("Removed the last photo of dog" in s.value for s in at.success)


def test_camera_tab_refuses_a_single_class_and_makes_nothing(ui_workspace: Path) -> None:
    at = AppTest.from_function(camera_page, default_timeout=30).run()
    at.text_area[0].input("cat\n\n")
    at.button[0].click().run()
    assert any("at least 2 classes" in e.value for e in at.error) and not at.exception
    assert list_datasets(ui_workspace / "datasets") == [] and not at.toggle


def test_a_new_class_typed_in_and_a_damaged_photo(ui_workspace: Path) -> None:
    root = new_camera_dataset(ui_workspace / "datasets", "pets", ["cat", "dog"])
    from core.base.workspace import Workspace

    Workspace.root().save_state(dataset=str(root))
    at = AppTest.from_function(camera_page, default_timeout=30).run()
    at.toggle(key="camera_on").set_value(True).run()
    at.selectbox(key="camera_class").select("").run()  # "New class…"
    assert at.camera_input[0].disabled
    at.text_input(key="camera_new_class").input("../bird").run()
    assert any("contains a path" in e.value for e in at.error) and at.camera_input[0].disabled
    at.text_input(key="camera_new_class").input("bird").run()
    at.camera_input[0].set_value(("image.jpg", jpeg(), "image/jpeg")).run()
    assert photo_counts(root) == {"bird": 1, "cat": 0, "dog": 0}
    assert at.selectbox(key="camera_class").value == "bird"  # now chosen from the list
    at.camera_input[0].set_value(("image.jpg", b"\xff\xd8\xff broken", "image/jpeg")).run()
    assert any("not a readable image" in e.value and "Nothing was saved" in e.value for e in at.error)
    assert photo_counts(root) == {"bird": 1, "cat": 0, "dog": 0}
    assert not at.exception


def test_a_photo_sent_again_by_an_old_camera_is_saved_once(ui_workspace: Path) -> None:
    """Streamlit keeps a replaced camera's callback, and Chromium was seen sending an old photo again with a later
    click: neither an old key's call nor an upload id already saved may add a file."""
    root = new_camera_dataset(ui_workspace / "datasets", "pets", ["cat", "dog"])

    def page(path: str, data: bytes) -> None:
        import streamlit as st

        from pages import _camera

        class Shot:  # what st.camera_input returns, as far as the callback reads it
            file_id = "upload-1"

            def getvalue(self) -> bytes:
                return data

        st.session_state.setdefault(_camera.SHOT, 0)
        st.session_state["camera_shot_0"] = st.session_state["camera_shot_1"] = Shot()
        _camera._save(path, "cat", "camera_shot_0")  # the camera on screen: saved, and the key moves on
        _camera._save(path, "cat", "camera_shot_0")  # an old camera's call
        _camera._save(path, "cat", "camera_shot_1")  # the same upload again, under the camera now on screen

    at = AppTest.from_function(page, args=(str(root), jpeg()), default_timeout=30).run()
    assert not at.exception, [e.value for e in at.exception]
    assert photo_counts(root) == {"cat": 1, "dog": 0}


def test_no_camera_for_a_dataset_this_session_does_not_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    """Per-session workspaces: another session's dataset (or the shared sample) gets no camera."""
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("STUDIO_SHARED_WORKSPACE", raising=False)
    foreign = new_camera_dataset(tmp_path / "ws" / "sessions" / ("cd" * 16) / "datasets", "theirs", ["a", "b"])

    def page(path: str) -> None:
        from pathlib import Path

        from pages._camera import camera_section

        camera_section(Path(path))

    at = AppTest.from_function(page, args=(str(foreign),), default_timeout=30).run()
    assert not at.exception and not at.toggle and not at.camera_input and not at.markdown


# ------------------------------------------------------------------------------------------------ Chromium
FAKE_CAMERA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def take_photo(page, uploads: list[str], settle_ms: int) -> int:
    """Click "Take Photo" `settle_ms` after the (fresh) camera's video plays, and again if no photo was sent within
    3 s: a click on a camera that has only just started now and then captures nothing (seen on the first camera
    after "Create", about one run in three); returns the clicks it took.

    Chromium's fake camera draws the time since its stream started, and each fresh camera widget starts a new stream:
    photos taken at the same delay are byte-identical, and the report leaves such duplicates out. A different
    `settle_ms` per photo (150 ms apart, three frames of the fake camera) keeps every photo distinct.
    """
    for clicks in range(1, 4):
        page.wait_for_function("""() => {
            const video = document.querySelector('[data-testid="stCameraInput"] video');
            return video !== null && video.readyState >= 2 && video.videoWidth > 0;
        }""")
        page.wait_for_timeout(settle_ms)
        sent = len(uploads)
        page.get_by_role("button", name="Take Photo").click()
        for _ in range(30):
            if len(uploads) > sent:
                return clicks
            page.wait_for_timeout(100)
    raise AssertionError("three clicks on Take Photo sent no photo")


def choose_class(page, name: str) -> None:
    """Pick `name` in the class menu (opened again if a redraw closed it before the option could be clicked)."""
    for _ in range(3):
        page.get_by_role("combobox", name="Class").click()
        try:
            page.get_by_role("option", name=name, exact=True).click(timeout=3_000)
            return
        except Exception:  # playwright's TimeoutError: the menu closed as the page redrew
            continue
    raise AssertionError(f"the class menu never offered {name}")


def test_chromium_takes_camera_photos_into_a_new_dataset(tmp_path: Path) -> None:
    """The real Data page in Chromium with a fake camera: Camera tab -> two classes -> photos by clicking Take Photo
    -> the files are on disk in their class folders, decode, and the Data report counts them; Undo removes one."""
    require(Path(CHROMIUM).is_file(), f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    log = tmp_path / "server.log"
    shots = {"cat": 3, "dog": 3}
    clicks = 0
    with streamlit_server(workspace, log) as url, sync_playwright() as p:
        browser = launch_chromium(p, extra_args=FAKE_CAMERA)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.grant_permissions(["camera"], origin=url)
        page = context.new_page()
        page.set_default_timeout(30_000)
        uploads = record_uploads(page)
        try:
            started = time.perf_counter()
            page.goto(url)
            page.get_by_role("tab", name="Camera").click()
            page.get_by_label("Dataset name").fill("Desk objects")
            page.get_by_label("Class names, one per line (at least 2)").fill("cat\ndog")
            page.get_by_role("button", name="Create dataset and open the camera").click()
            expect(page.get_by_role("heading", name="Dataset: Desk-objects-")).to_be_visible()
            taken = {name: 0 for name in shots}
            for name, count in shots.items():
                wait_idle(page)
                choose_class(page, name)
                for i in range(count):
                    expect(page.get_by_text(f"Take photos of {name} ({i} so far)")).to_be_visible()
                    clicks += take_photo(page, uploads, settle_ms=150 * sum(taken.values()))
                    taken[name] += 1
                    expect(page.get_by_text(f"cat: {taken['cat']} · dog: {taken['dog']} —")).to_be_visible()
            wait_idle(page)
            page.get_by_role("button", name="Undo the last photo (dog)").click()
            expect(page.get_by_text("Removed the last photo of dog")).to_be_visible()
            expect(page.get_by_text("cat: 3 · dog: 2 —")).to_be_visible()
            shots["dog"] -= 1
            expect(page.locator('[data-testid="stMetric"]').filter(has_text="Usable images")) \
                .to_contain_text(str(sum(shots.values())))
            seconds = time.perf_counter() - started
        except Exception:
            keep_failure({"failure-camera.png": page}, {"server.log": log})
            raise
        finally:
            browser.close()
    [root] = [p for p in workspace.glob("sessions/*/datasets/*") if (p / COMPLETE_MARKER).is_file()]
    for name, count in shots.items():
        photos = sorted((resolve_root(root) / name).iterdir())
        assert len(photos) == count and all(PHOTO_NAME.fullmatch(p.name) for p in photos), photos
        for photo in photos:
            assert min(decode_image(photo.read_bytes(), photo.name).shape[:2]) >= 100  # a camera frame, not a stub
    report = scan(root).report
    assert report.usable_images == sum(shots.values()) and not report.duplicates and not report.skipped, report
    print(f"camera flow in Chromium: {seconds:.1f} s, {clicks} clicks for 6 photos")


def test_a_camera_photo_over_the_served_decode_limit_is_refused_by_name_before_decoding(
        dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 27.2: the camera's photo is decoded in the server like Classify's uploads, so a forged 49 MP PNG is refused
    from its header, naming it and the limit, and nothing is saved."""
    from PIL import ImageFile

    import core.data.images as images

    buffer = io.BytesIO()
    Image.new("RGB", (7000, 7000)).save(buffer, "PNG", compress_level=1)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a pixel was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(images, "_load_rgb", no_decoding)
    with pytest.raises(StudioError, match=r"The camera photo: 7000x7000 pixels \(49 MP\) is over the 24 MP limit for "
                                          r"PNG photos.*Nothing was saved"):
        add_photo(dataset, "cat", buffer.getvalue(), now=NOW)
    assert photo_counts(dataset).get("cat", 0) == 0
