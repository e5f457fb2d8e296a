"""Issue 5, hardening: hostile uploads, odd images, private sessions, killed trainers, racing Starts, full disks.

Every hostile file is generated here. The browser half (two sessions side by side) is in tests/app/test_browser.py.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from PIL import Image
from streamlit.testing.v1 import AppTest

import core.data.ingest
from conftest import REPO, flower_files, run_cli
from core import StudioError
from core.training import jobs
from core.base.config import TrainConfig
from core.data.datasets import scan
from core.network.device import DeviceInfo
from core.data.images import ImageError, decode_image, load_for_model, read_image
from core.data.ingest import ingest_files, ingest_zip, plan_paths
from core.base.runs import RunDir
from core.base.workspace import Workspace, valid_session_id

APP = str(REPO / "streamlit_app.py")
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------------------ generated files
def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def photo(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no data: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def exif_rotated_jpeg() -> bytes:
    """A phone photo stored 40x20 (landscape sensor) with EXIF orientation 6: upright it is 20 wide, 40 tall."""
    stored = Image.new("RGB", (40, 20), (200, 30, 30))
    stored.paste((30, 30, 200), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", exif=exif, quality=95)


def odd_images() -> dict[str, bytes]:
    """One file per odd case of the issue (plus a few more), named as an unsuspecting person would."""
    good_jpeg = encode(photo(1), "JPEG", quality=90)
    frames = [Image.new("RGB", (24, 24), c) for c in ((250, 0, 0), (0, 250, 0))]
    return {
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "png-named.jpg": encode(photo(2), "PNG"),
        "one-pixel.png": encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
        "huge-header.png": png_header_only(20_000, 20_000),
        "cmyk.jpg": encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95),
        "exif-rotated.jpg": exif_rotated_jpeg(),
        "sixteen-bit.png": encode(Image.fromarray(np.linspace(0, 65535, 1024, dtype=np.uint16).reshape(32, 32)),
                                  "PNG"),
        "grayscale.png": encode(Image.new("L", (32, 32), 77), "PNG"),
        "rgba.png": encode(Image.new("RGBA", (32, 32), (0, 0, 0, 0)), "PNG"),
        "animated.webp": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "animated.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "text.jpg": b"this is a shopping list, not a photo",
        "empty.png": b"",
        "notes.txt": b"labels were checked by hand",
    }


HANDLED = {"png-named.jpg", "cmyk.jpg", "exif-rotated.jpg", "sixteen-bit.png", "grayscale.png", "rgba.png",
           "animated.webp"}
REPORTED = {"truncated.jpg": "truncated", "one-pixel.png": "too small", "huge-header.png": "pixel limit",
            "text.jpg": "not a readable image", "empty.png": "empty"}
SKIPPED = {"animated.gif", "notes.txt"}  # not an image type we train on: listed, left out


def odd_upload() -> list[tuple[str, bytes]]:
    """A folder upload: class 'odd' holds every odd case, class 'plain' four ordinary photos."""
    files = [(f"hostile/odd/{name}", data) for name, data in odd_images().items()]
    return files + [(f"hostile/plain/{i}.jpg", encode(photo(10 + i), "JPEG")) for i in range(4)]


def zip_of(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def files_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


# ------------------------------------------------------------------------------------------------ uploads: zip
@pytest.mark.parametrize("hostile", ["../evil.png", "set/../../evil.png", "/ABSOLUTE/evil.png", "C:\\evil.png",
                                     "\\\\server\\share\\evil.png"])
def test_zip_slip_entries_are_refused_before_anything_is_written(tmp_path: Path, hostile: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "datasets"
    name = hostile.replace("/ABSOLUTE", str(outside))
    archive = zip_of({"set/a/1.png": b"fine", name: b"evil"})
    with pytest.raises(StudioError, match="points outside its folder"):
        ingest_zip(archive, "evil.zip", destination=target)
    assert files_below(outside) == [] and files_below(target) == []
    assert not (tmp_path / "evil.png").exists()


def test_zip_symlink_entry_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("set/a/1.png", b"fine")
        link = zipfile.ZipInfo("set/a/passwd.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(StudioError, match="symbolic link"):
        ingest_zip(buffer.getvalue(), "link.zip", destination=tmp_path / "datasets")
    assert files_below(tmp_path) == []


def test_zip_bomb_is_refused_by_its_compression_ratio(tmp_path: Path) -> None:
    bomb = zip_of({"set/a/zeros.bmp": b"\0" * (core.data.ingest.RATIO_CHECK_FROM_BYTES + 1024**2)}, zipfile.ZIP_DEFLATED)
    assert len(bomb) < 200_000  # 51 MB of content in a ~50 KB file
    with pytest.raises(StudioError, match="compression ratio limit 100.*zip bomb"):
        ingest_zip(bomb, "bomb.zip", destination=tmp_path / "datasets")
    assert files_below(tmp_path) == []


def test_zip_and_folder_caps_on_count_and_size_say_which_limit(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_MAX_UPLOAD_FILES", "5")
    monkeypatch.setenv("STUDIO_MAX_UPLOAD_MB", "1")
    many = {f"set/a/{i}.png": b"x" for i in range(6)}
    with pytest.raises(StudioError, match=r"6 files, more than the 5 .*file count limit"):
        ingest_zip(zip_of(many), "many.zip", destination=tmp_path)
    with pytest.raises(StudioError, match=r"6 files, more than the 5 .*file count limit"):
        ingest_files(list(many.items()), destination=tmp_path)
    big = {"set/a/big.png": os.urandom(1024**2 + 1)}
    with pytest.raises(StudioError, match=r"over the 1 MB limit .*total size limit"):
        ingest_zip(zip_of(big), "big.zip", destination=tmp_path)
    with pytest.raises(StudioError, match=r"over the 1 MB limit .*total size limit"):
        ingest_files(list(big.items()), destination=tmp_path)
    monkeypatch.setenv("STUDIO_MAX_UPLOAD_FILES", "lots")
    with pytest.raises(StudioError, match="STUDIO_MAX_UPLOAD_FILES='lots' is not a whole number"):
        ingest_files(list(big.items()), destination=tmp_path)
    assert files_below(tmp_path) == []


def test_damaged_and_encrypted_zips_are_clear_errors(tmp_path: Path) -> None:
    good = zip_of({"set/a/1.png": b"0123456789" * 50}, zipfile.ZIP_DEFLATED)
    damaged = bytearray(good)
    start = 30 + len("set/a/1.png")  # the first local header, then the compressed bytes
    damaged[start + 5] ^= 0xFF  # corrupt the compressed stream (the CRC check catches what inflate does not)
    with pytest.raises(StudioError, match="cannot be unpacked|not a valid .zip"):
        ingest_zip(bytes(damaged), "damaged.zip", destination=tmp_path)
    encrypted = bytearray(zip_of({"set/a/1.png": b"x"}))
    for header in (b"PK\x03\x04", b"PK\x01\x02"):  # set the 'encrypted' flag bit in both headers
        at = encrypted.index(header) + (6 if header == b"PK\x03\x04" else 8)
        encrypted[at] |= 0x1
    with pytest.raises(StudioError, match="password-protected"):
        ingest_zip(bytes(encrypted), "secret.zip", destination=tmp_path)
    assert files_below(tmp_path) == []


# ------------------------------------------------------------------------------------------------ uploads: folder
def test_folder_upload_names_are_sanitised_and_stay_inside(tmp_path: Path) -> None:
    long_name = "x" * 300 + ".jpg"
    files = [("set/a/ok.png", b"1"), ("set/a/tab\there.png", b"2"), ("set/a/what?.png", b"3"),
             ("set/a/what_.png", b"4"), ("set/a/" + long_name, b"5"), ("set/a/cafe\u0301.png", b"6"),
             ("set/b\\win.png", b"7"), ("set/a/trailing. ", b"8"), ("set/.git/config", b"9"),
             ("set/a/lone\ud800surrogate.png", b"10")]
    target = ingest_files(files, destination=tmp_path / "datasets")
    names = sorted(p.relative_to(target).as_posix() for p in files_below(target) if p.name != ".studio-complete")
    assert "set/a/tab_here.png" in names and "set/b/win.png" in names and "set/a/trailing" in names
    assert {"set/a/what_.png", "set/a/what_~2.png"} <= set(names)  # two names cleaned alike: both kept
    assert "set/a/caf\u00e9.png" in names  # one spelling (NFC) for the same visible name
    assert "set/a/lone_surrogate.png" in names  # not even encodable as UTF-8: cleaned, not a crash
    assert all(len(part.encode()) <= core.data.ingest.MAX_PART_BYTES for n in names for part in n.split("/"))
    assert any(n.endswith(".jpg") and n.startswith("set/a/xxx") for n in names)
    assert not any(".git" in n for n in names)
    assert all(p.resolve().is_relative_to(target.resolve()) for p in files_below(target))
    with pytest.raises(StudioError, match="both a file and a folder named 'set/a'"):
        plan_paths(["set/a", "set/a/1.png"])
    with pytest.raises(StudioError, match="folders deep"):
        plan_paths(["/".join(["d"] * 40) + "/1.png"])


def test_disk_full_while_saving_an_upload_keeps_nothing_and_spares_earlier_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    destination = tmp_path / "datasets"
    earlier = ingest_files([("old/a/1.png", b"one"), ("old/b/2.png", b"two")], destination=destination)
    before = {p: p.read_bytes() for p in files_below(earlier)}
    real_open = open
    calls = []

    def filling_disk(path, mode="r", *args, **kwargs):
        if "x" in mode:
            calls.append(path)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(core.data.ingest, "open", filling_disk, raising=False)
    with pytest.raises(StudioError, match="No space left on device.*nothing was kept"):
        ingest_files([("new/a/1.png", b"x"), ("new/b/2.png", b"y")], destination=destination)
    assert sorted(p.name for p in destination.iterdir()) == [earlier.name]  # no half folder, no staging
    assert {p: p.read_bytes() for p in files_below(earlier)} == before


# ------------------------------------------------------------------------------------------------ odd images
def test_odd_images_through_upload_inspect_and_the_training_decoder(tmp_path: Path) -> None:
    target = ingest_files(odd_upload(), destination=tmp_path / "datasets")
    dataset = scan(target)
    report = dataset.report
    usable = {Path(s.path).name for s in dataset.samples if s.path.startswith("odd/")}
    assert usable == HANDLED
    reasons = {Path(item["path"]).name: item["reason"] for item in report.unreadable}
    assert set(reasons) == set(REPORTED)
    for name, words in REPORTED.items():
        assert words in reasons[name], (name, reasons[name])
    assert {Path(item["path"]).name for item in report.skipped} == SKIPPED
    assert report.trainable, report.errors
    # What training decodes: every usable sample, at the model size, RGB uint8; phone photos upright.
    for sample in dataset.samples:
        array = load_for_model(dataset.root / sample.path, 64)
        assert array.shape == (64, 64, 3) and array.dtype == np.uint8
    assert read_image(dataset.root / "odd" / "exif-rotated.jpg").shape == (40, 20, 3)
    assert read_image(dataset.root / "odd" / "rgba.png").min() == 255  # transparent -> white, not black


# ------------------------------------------------------------------------------------------------ app sessions
@pytest.fixture
def private_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default: a workspace per browser session under <root>/sessions/. Fast fake device, fresh caches."""
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("STUDIO_SHARED_WORKSPACE", raising=False)
    monkeypatch.setattr("core.network.device.detect_device", lambda: DeviceInfo("tensorflow", "cpu", "CPU only", 1))
    monkeypatch.setattr("core.data.samples.is_online", lambda *a, **k: False)
    st.cache_data.clear()
    st.cache_resource.clear()
    return tmp_path / "ws"


def open_app(**query: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def session_folder(root: Path, at: AppTest) -> Path:
    session_id = at.session_state["workspace_id"]
    assert valid_session_id(session_id)
    return root / "sessions" / session_id


def sidebar_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.sidebar.markdown)


def upload_folder(at: AppTest, files: list[tuple[str, bytes]]) -> AppTest:
    """Pick a folder on the Data page (see test_app.pick_folder)."""
    from test_app import pick_folder

    return pick_folder(at, [(name, data, "application/octet-stream") for name, data in files])


def test_odd_images_never_crash_a_page(private_sessions: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_app import FakeClassifier, make_run

    at = open_app()
    # The folder picker sends every picked file; the page accounts for each of them.
    upload_folder(at, odd_upload())
    no_exceptions(at)
    assert f"Unreadable images ({len(REPORTED)})" in [e.label for e in at.expander]
    assert f"Skipped files ({len(SKIPPED)})" in [e.label for e in at.expander]
    accounted = "\n".join(s.value for s in at.success)
    assert f"{len(SKIPPED)} skipped, {len(REPORTED)} unreadable, 0 missing." in accounted
    assert all(name in accounted for name in REPORTED)
    assert "Ready to train" in "\n".join(s.value for s in at.success)
    assert any("50 megapixels" in c.value for c in at.caption)  # the limits are shown where one uploads
    for page in ("pages/augment.py", "pages/train.py", "pages/evaluate.py"):
        at.switch_page(page).run()
        no_exceptions(at)
    make_run(session_folder(private_sessions, at) / "runs", "run-a")
    monkeypatch.setattr("pages._loaders.load_classifier", lambda run: FakeClassifier())
    monkeypatch.setattr("core.results.cam.heatmap_for", lambda model, image, index, size: image)
    at.switch_page("pages/classify.py").run()
    photos = [(name, data, "image/jpeg") for name, data in odd_images().items() if name not in SKIPPED]
    at.file_uploader(key="photos").set_value(photos).run()
    no_exceptions(at)
    warned = "\n".join(w.value for w in at.warning)
    for name in REPORTED:
        assert name in warned, name
    assert sorted(at.dataframe[0].value["file"]) == sorted(HANDLED)


def test_each_session_has_its_own_workspace(private_sessions: Path) -> None:
    from test_app import make_run

    alice = open_app()
    upload_folder(alice, [("alice-flowers/a/1.png", encode(photo(1), "PNG")),
                          ("alice-flowers/b/2.png", encode(photo(2), "PNG"))])
    no_exceptions(alice)
    alice_folder = session_folder(private_sessions, alice)
    assert [p.name for p in (alice_folder / "datasets").iterdir()][0].startswith("alice-flowers-")
    assert alice.query_params["ws"] in ([alice.session_state["workspace_id"]], alice.session_state["workspace_id"])
    make_run(alice_folder / "runs", "run-alice")

    # Bob arrives with a forged workspace id and a run id that walks into Alice's folder.
    escape = f"../../sessions/{alice_folder.name}/runs/run-alice"
    bob = open_app(ws="../" + alice_folder.name, run=escape)
    no_exceptions(bob)
    bob_folder = session_folder(private_sessions, bob)
    assert bob_folder != alice_folder
    assert "alice" not in sidebar_text(bob) and "none chosen" in sidebar_text(bob)
    assert "Nothing uploaded yet." in [c.value for c in bob.caption]
    bob.switch_page("pages/train.py").run()
    no_exceptions(bob)
    assert "Run run-alice" not in [s.value for s in bob.subheader]
    bob.switch_page("pages/classify.py").run()
    assert any("No trained model yet" in i.value for i in bob.info)
    bob.switch_page("pages/evaluate.py").run()
    assert any("No trained model yet" in i.value for i in bob.info)
    assert Workspace(bob_folder).run(escape) is None and Workspace(bob_folder).run("run-alice") is None

    # Alice's own address (her ?ws= id) brings her workspace back after a reload.
    again = open_app(ws=alice_folder.name)
    assert "alice-flowers" in sidebar_text(again)


def test_a_shared_workspace_is_one_setting_away(private_sessions: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_SHARED_WORKSPACE", "1")
    first = open_app()
    upload_folder(first, [("team-set/a/1.png", encode(photo(1), "PNG")), ("team-set/b/2.png", encode(photo(2), "PNG"))])
    second = open_app()
    assert "team-set" in sidebar_text(second)
    assert not (private_sessions / "sessions").exists()


def test_run_ids_and_session_ids_from_the_address_are_names_not_paths(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    run = RunDir.create(workspace.runs_dir(), "run-1")
    run.write_config({})
    assert workspace.run("run-1").path == run.path
    for bad in ("../run-1", "/etc", "run-1/../run-1", "..", "", None, 7, "run-1\0", "a" * 200):
        assert workspace.run(bad) is None, bad
    with pytest.raises(StudioError):
        Workspace.for_session("../../etc")
    assert not valid_session_id("0" * 31) and valid_session_id("0" * 32)


def test_classify_loads_models_with_keras_safe_mode(private_sessions: Path) -> None:
    """A model.keras carrying Python code (a Lambda layer) is refused at load, and the page says so."""
    import keras

    from core.serving.predict import Classifier
    from test_app import make_run

    at = open_app()
    run = make_run(session_folder(private_sessions, at) / "runs", "run-code")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)])
    model.save(run.file("model.keras"))
    with pytest.raises(ValueError, match="safe_mode"):
        Classifier(run)
    at.switch_page("pages/classify.py").run()
    no_exceptions(at)
    assert any("cannot be loaded" in e.value and "safe_mode" in e.value for e in at.error)


# ------------------------------------------------------------------------------------------------ training jobs
def fake_python(tmp_path: Path) -> str:
    """Stands in for the interpreter in a job's command line: a process that just lives for a while."""
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(0o755)
    return str(script)


def kill_jobs(models: Path) -> None:
    """End the stand-in trainers this test started (by their recorded pid)."""
    for job in models.rglob(jobs.JOB):
        pid = json.loads(job.read_text())["pid"]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        if pid in jobs._children:
            jobs._children[pid].wait(10)
    jobs.reap()


def test_two_simultaneous_starts_start_one_job_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models, python = tmp_path / "runs", fake_python(tmp_path)
    real_start = jobs._start_trainer

    def slow_start(*args, **kwargs):
        time.sleep(0.3)  # widen the window in which an unlocked check would let both through
        return real_start(*args, **kwargs)

    monkeypatch.setattr(jobs, "_start_trainer", slow_start)
    barrier, results = threading.Barrier(2), []

    def click() -> None:
        barrier.wait()
        try:
            results.append(jobs.start_training(TrainConfig(data=str(tmp_path)), models, python=python))
        except StudioError as err:
            results.append(err)

    try:
        threads = [threading.Thread(target=click) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        started = [r for r in results if isinstance(r, RunDir)]
        refused = [r for r in results if isinstance(r, StudioError)]
        assert len(started) == 1 and len(refused) == 1, results
        assert "one training at a time" in str(refused[0])
        assert [p.name for p in models.iterdir() if p.is_dir()] == [started[0].run_id]
    finally:
        kill_jobs(models)


RACER = """
import sys, time
from core import StudioError
from core.training import jobs
from core.base.config import TrainConfig
start_at, models, python = float(sys.argv[1]), sys.argv[2], sys.argv[3]
time.sleep(max(0.0, start_at - time.time()))
try:
    print("started", jobs.start_training(TrainConfig(data=models), models, python=python).run_id)
except StudioError as err:
    print("refused", err)
"""


def test_two_simultaneous_starts_start_one_job_processes(tmp_path: Path) -> None:
    models, python = tmp_path / "runs", fake_python(tmp_path)
    start_at = str(time.time() + 2.0)  # both processes are imported and waiting by then
    racers = [subprocess.Popen([sys.executable, "-c", RACER, start_at, str(models), python], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outputs = [racer.communicate(timeout=60) for racer in racers]
        lines = sorted(out.strip() for out, _ in outputs)
        assert [line.split()[0] for line in lines] == ["refused", "started"], outputs
        assert "one training at a time" in lines[0]
        assert len([p for p in models.iterdir() if p.is_dir()]) == 1
    finally:
        kill_jobs(models)


def test_a_second_session_queues_and_starts_when_the_slot_frees(tmp_path: Path) -> None:
    """One training at a time on the machine: Bob's Start, while Alice trains, joins a queue with his place and an
    estimate, says nothing about Alice's run, and starts as soon as the slot is free; Carol leaves the queue."""
    root, python = tmp_path / "ws", fake_python(tmp_path)
    alice, bob, carol = (Workspace(root / "sessions" / (c * 32)) for c in "abc")
    try:
        first = jobs.start_training(TrainConfig(data=str(tmp_path)), alice.runs_dir(), python=python, lock_dir=root)
        second = jobs.start_training(TrainConfig(data=str(tmp_path)), bob.runs_dir(), python=python, lock_dir=root)
        third = jobs.start_training(TrainConfig(data=str(tmp_path)), carol.runs_dir(), python=python, lock_dir=root)
        view = jobs.run_view(second)
        assert view.state == "queued" and view.active and view.queue.position == 1 and view.queue.eta_seconds > 0
        assert view.headline.startswith("Waiting for the training slot: next, starts in about")
        assert first.run_id not in view.headline and "run-" not in view.caption
        assert jobs.run_view(third).queue.position == 2
        assert not (second.path / jobs.JOB).exists() and jobs.dispatch(root) is None  # the slot is busy
        kill_jobs(alice.runs_dir())
        assert jobs.run_view(first).state == "failed"  # its stand-in trainer is gone: the slot is free
        assert jobs.run_view(second).queue is None and (second.path / jobs.JOB).is_file()  # looking started it
        assert jobs.run_view(second).state == "queued" and jobs.slot_busy(root)
        assert jobs.run_view(third).queue.position == 1
        jobs.stop(third)  # Carol leaves the queue
        assert jobs.run_view(third).state == "stopped" and "Left the queue" in jobs.run_state(third)["message"]
        kill_jobs(bob.runs_dir())
        assert jobs.dispatch(root) is None and not jobs.slot_busy(root)
        assert not (third.path / jobs.JOB).exists() and list((root / jobs.QUEUE).glob("*.json")) == []
    finally:
        kill_jobs(root)
    assert not jobs.slot_busy(root)


def test_disk_full_or_denied_when_starting_a_run_is_reported_and_earlier_runs_stay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.base.runs

    models = tmp_path / "runs"
    earlier = RunDir.create(models, "run-earlier")
    earlier.write_config({"data": "x"})
    earlier.set_status("succeeded")
    earlier.file("model.keras").write_bytes(b"the best model")
    before = {p: p.read_bytes() for p in files_below(models)}
    real_write = core.base.runs.write_json_atomic

    def full_disk(path, data):
        if Path(path).name == "config.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, data)

    monkeypatch.setattr(core.base.runs, "write_json_atomic", full_disk)
    with pytest.raises(StudioError, match="No space left on device.*earlier runs are untouched"):
        jobs.start_training(TrainConfig(data=str(tmp_path)), models, python=fake_python(tmp_path))
    monkeypatch.setattr(core.base.runs, "write_json_atomic", real_write)

    def denied(cls, models_dir=None, run_id=None):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(models_dir))

    monkeypatch.setattr(RunDir, "create", classmethod(denied))
    with pytest.raises(StudioError, match="Permission denied"):
        jobs.start_training(TrainConfig(data=str(tmp_path)), models, python=fake_python(tmp_path))
    assert {p: p.read_bytes() for p in files_below(models) if p.name != jobs.START_LOCK} == before
    assert jobs.active_run(models) is None


def test_disk_full_inside_the_trainer_fails_the_run_and_keeps_the_best_model(
        tmp_path: Path, small_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.training import train

    run = RunDir.create(tmp_path / "runs", "run-full")
    run.file("model.keras").write_bytes(b"best so far")

    class FullDiskModel:
        def save(self, path):
            Path(path).write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def fit(self, dataset, split):
        self._save_model(FullDiskModel())

    monkeypatch.setattr(train.Trainer, "fit", fit)
    with pytest.raises(OSError):
        train.run_training(TrainConfig(data=str(small_dataset), image_size=64, head_epochs=1, finetune_epochs=0),
                           run=run)
    status = jobs.run_state(run)
    assert status["state"] == "failed" and "No space left on device" in status["error"]
    assert run.file("model.keras").read_bytes() == b"best so far"


def fabricated_run(models: Path, run_id: str, pid: int, heartbeat_age: float, job: dict | None = None) -> RunDir:
    run = RunDir.create(models, run_id)
    run.write_config({"data": "x", "head_epochs": 3, "finetune_epochs": 0})
    run.set_status("running", pid=pid, phase="head")
    status = run.read_status()
    status["heartbeat"] = time.time() - heartbeat_age
    run.file("status.json").write_text(json.dumps(status))
    if job is not None:
        run.file(jobs.JOB).write_text(json.dumps(job))
    return run


def test_a_silent_run_is_never_running_forever(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = 2**22 + 4321  # no such process
    monkeypatch.setenv("STUDIO_HEARTBEAT_TIMEOUT", "30")
    fresh = fabricated_run(tmp_path, "run-fresh", gone, heartbeat_age=1)
    assert jobs.run_state(fresh)["state"] == "running"  # a CLI run between heartbeats: not judged yet
    silent = fabricated_run(tmp_path, "run-silent", gone, heartbeat_age=60)
    silent.file("model.keras").write_bytes(b"m")
    state = jobs.run_state(silent)
    assert state["state"] == "failed" and "best model saved so far is kept" in state["error"]
    stopped = fabricated_run(tmp_path, "run-stopped", gone, heartbeat_age=60)
    stopped.request_stop()
    assert jobs.run_state(stopped)["state"] == "stopped"
    # After a reboot the recorded pid may belong to another program: its start time gives it away.
    reused = fabricated_run(tmp_path, "run-reused", os.getpid(), heartbeat_age=1,
                            job={"pid": os.getpid(), "pid_start": (jobs.process_start_ticks(os.getpid()) or 0) + 1})
    assert jobs.run_state(reused)["state"] == "failed"
    stuck = fabricated_run(tmp_path, "run-stuck", os.getpid(), heartbeat_age=60,
                           job={"pid": os.getpid(), "pid_start": jobs.process_start_ticks(os.getpid())})
    state = jobs.run_state(stuck)
    assert state["state"] == "running" and "No heartbeat" in state["stalled"]


def test_sigkilled_trainer_is_reported_failed_and_its_best_model_still_predicts(
        tmp_path: Path, flowers_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.base.runs

    root = tmp_path / "ws"
    models = root / "runs"
    config = TrainConfig(data=str(flowers_dir), image_size=64, head_mode="images", head_epochs=3, finetune_epochs=0)
    run = jobs.start_training(config, models)
    pid = jobs.job_pid(run)
    deadline = time.monotonic() + 300
    while not run.has_model():
        assert jobs.process_alive(pid), "the trainer ended before saving a model:\n" + jobs.log_tail(run)
        assert time.monotonic() < deadline, "no model.keras within 5 minutes:\n" + jobs.log_tail(run)
        time.sleep(0.1)
    # Issue 27.3: a trainer the app starts leaves the pages room: every one of its threads (TensorFlow's pools,
    # the loader's) runs at niceness 10.
    from core.base.cpushare import current_niceness

    threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    assert len(threads) > 3 and {current_niceness(t) for t in threads} == {10}, jobs.log_tail(run)
    os.kill(pid, signal.SIGKILL)
    while jobs.process_alive(pid):
        jobs.reap()
        time.sleep(0.05)
    assert run.read_status()["state"] == "running"  # the trainer had no chance to say anything

    # The UI's view (launcher's record): failed at once, best model kept.
    state = jobs.run_state(run)
    assert state["state"] == "failed" and "ended without reporting" in state["error"]
    assert "best model saved so far is kept" in state["error"]
    # The run folder alone (a restarted server, the CLI): failed once the heartbeat is older than the timeout.
    monkeypatch.setattr(core.base.runs, "HEARTBEAT_TIMEOUT_SECONDS", 0.0)
    status = run.effective_status()
    assert status["state"] == "failed" and "best checkpoint so far is kept" in status["error"]
    monkeypatch.undo()

    # The Train page of a fresh server shows it failed, not running.
    monkeypatch.setenv("STUDIO_WORKSPACE", str(root))
    monkeypatch.setenv("STUDIO_SHARED_WORKSPACE", "1")
    monkeypatch.setattr("core.network.device.detect_device", lambda: DeviceInfo("tensorflow", "cpu", "CPU only", 1))
    st.cache_data.clear()
    at = open_app(run=run.run_id)
    at.switch_page("pages/train.py").run()
    no_exceptions(at)
    assert any("The run failed" in e.value and "best model" in e.value for e in at.error)
    assert not [b for b in at.button if b.label == "Stop"]

    # The CLI loads the best checkpoint (safe mode) and predicts with it.
    image = flower_files(flowers_dir, "roses", 1, split="val")[0]
    predicted = run_cli("predict", str(run.path), str(image), "--top-k", "2")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    (result,) = json.loads(predicted.stdout)
    assert result["predicted"] in run.read_classes() and len(result["top_k"]) == 2


# ------------------------------------------------------------------------------------------------ properties
NAME_PARTS = ["a", "b", "roses", "x.jpg", "y.png", "z.txt", "..", ".", "", " ", "C:", "~", "\\", "?", ":", "\x00",
              "\x1f", "e\u0301", "\u00e9", "\ud800", "__MACOSX", ".DS_Store", ".hidden", "x" * 300, "train", "val"]


@hs.composite
def upload_names(draw, outside: str) -> str:
    prefix = draw(hs.sampled_from(["", "", "/", "../", "../../", outside + "/", "C:\\", "\\\\host\\"]))
    parts = draw(hs.lists(hs.sampled_from(NAME_PARTS), min_size=1, max_size=5))
    return prefix + draw(hs.sampled_from(["/", "\\"])).join(parts)


def zip_can_store(name: str) -> bool:
    """zipfile itself refuses lone surrogates and names empty up to a NUL; those never reach an upload."""
    return "\ud800" not in name and name.split("\x00")[0] not in ("", "/")


FILE_BYTES = hs.one_of(hs.binary(max_size=64), hs.just(encode(photo(3, (8, 8)), "PNG")),
                       hs.just(encode(photo(4, (8, 8)), "JPEG")))


def check_ingest_outcome(call, destination: Path, outside: Path) -> None:
    """The property: a clear StudioError or a dataset folder directly in `destination`, nothing anywhere else."""
    try:
        target = call()
    except StudioError:
        target = None
    assert files_below(outside) == []
    leftovers = [p for p in destination.iterdir()] if destination.exists() else []
    if target is None:
        assert leftovers == []
    else:
        assert leftovers == [target] and target.parent == destination
        assert all(p.is_file() and not p.is_symlink() and p.resolve().is_relative_to(target.resolve())
                   for p in files_below(target))


@PROPERTY
@given(data=hs.data())
def test_property_ingest_files_never_escapes(data) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outside, destination = Path(tmp) / "outside", Path(tmp) / "datasets"
        outside.mkdir()
        files = data.draw(hs.lists(hs.tuples(upload_names(str(outside)), FILE_BYTES), max_size=8))
        check_ingest_outcome(lambda: ingest_files(files, destination=destination), destination, outside)


@PROPERTY
@given(data=hs.data())
def test_property_ingest_zip_never_escapes(data) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outside, destination = Path(tmp) / "outside", Path(tmp) / "datasets"
        outside.mkdir()
        kind = data.draw(hs.sampled_from(["archive", "bytes", "damaged"]))
        if kind == "bytes":
            blob = data.draw(hs.binary(max_size=512))
        else:
            names = data.draw(hs.lists(upload_names(str(outside)).filter(zip_can_store), max_size=6))
            entries = {name: data.draw(FILE_BYTES) for name in names}
            blob = zip_of(entries, data.draw(hs.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])))
            if kind == "damaged" and blob:
                at = data.draw(hs.integers(0, len(blob) - 1))
                blob = blob[:at] + bytes([blob[at] ^ data.draw(hs.integers(1, 255))]) + blob[at + 1:]
        check_ingest_outcome(lambda: ingest_zip(blob, "upload.zip", destination=destination), destination, outside)


TREE_PARTS = ["a", "b", "train", "val", "test", "x.jpg", "y.png", "z.webp", "w.txt", ".hidden", "__MACOSX",
              "Thumbs.db", "é"]


@PROPERTY
@given(tree=hs.lists(hs.tuples(hs.lists(hs.sampled_from(TREE_PARTS), min_size=1, max_size=4), FILE_BYTES),
                     max_size=10))
def test_property_scan_of_random_trees_raises_only_clear_errors(tree) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        for parts, content in tree:
            path = root.joinpath(*parts)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                continue  # the tree wanted a file and a folder of one name; the file system decides
        before = files_below(Path(tmp))
        try:
            dataset = scan(root)
        except (StudioError, ImageError):
            return
        finally:
            assert files_below(Path(tmp)) == before  # inspection never writes
        assert dataset.report.usable_images == len(dataset.samples)
        for sample in dataset.samples:
            decode_image((dataset.root / sample.path).read_bytes(), sample.path)  # what scan kept decodes


@PROPERTY
@given(blob=hs.binary(max_size=2048))
def test_property_random_bytes_decode_or_raise_image_error(blob: bytes) -> None:
    try:
        decode_image(blob, "random.jpg")
    except ImageError:
        pass


def test_cli_status_reports_a_killed_run(tmp_path: Path) -> None:
    run = fabricated_run(tmp_path, "run-dead", 2**22 + 4321, heartbeat_age=600)
    run.file("model.keras").write_bytes(b"m")
    result = run_cli("--models-dir", str(tmp_path), "status", "run-dead")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["state"] == "failed" and "best" in status["error"]


def test_the_wait_estimate_uses_the_runs_the_queue_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ws"
    assert jobs.typical_run_seconds(root) == jobs.TYPICAL_RUN_SECONDS  # nothing finished yet
    (root / jobs.QUEUE).mkdir(parents=True)
    for minutes in (2, 4, 30):
        run = RunDir.create(tmp_path / "runs")
        run.write_config({"data": "x"})
        run.set_status("succeeded", started=1000.0, finished=1000.0 + 60 * minutes)
        jobs._append_history(root, run)
    assert jobs.typical_run_seconds(root) == 240  # the median: one slow run does not inflate every wait
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    monkeypatch.setenv("STUDIO_HOSTED_MAX_MINUTES", "3")
    assert jobs.typical_run_seconds(root) == 180  # never more than a run may take
