"""A visitor's disk use is bounded (issue 14.2, 14.5): zip entries stream to disk under running totals (upload
limit, visitor quota), a visit that only looks creates nothing, idle workspaces are removed, and a visitor can
delete their own datasets and runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import REPO
from core import StudioError
from core.network.device import DeviceInfo
from core.data.ingest import ingest_zip
from core.base.runs import RunDir
from core.base.workspace import LAST_SEEN, SESSIONS, Workspace, new_session_id, workspace_of
from core.upkeep import delete_holding, holdings, remove_idle_workspaces

APP = str(REPO / "streamlit_app.py")
PAGES = ["data", "augment", "train", "evaluate", "classify", "workspace"]


def compressible_zip(path: Path, entries: int, entry_mb: int) -> Path:
    """Entries that deflate about 80:1 (under the 100:1 bomb limit, like the probe's 96.5:1 zip), written a
    megabyte at a time so the test itself stays small in memory."""
    rng = np.random.default_rng(0)
    block = bytearray(1024**2)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for e in range(entries):
            with archive.open(f"data/class{e % 2}/big{e}.png", "w", force_zip64=True) as handle:
                for _ in range(entry_mb):
                    block[:12 * 1024] = rng.integers(0, 256, 12 * 1024, dtype=np.uint8).tobytes()
                    handle.write(block)
    return path


PEAK_SCRIPT = """
import json, sys
# VmHWM, the peak of this process image: ru_maxrss would start at the parent's size (Linux keeps the high-water mark
# across the exec of a vfork child), so a large pytest process would hide any growth.
def peak_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
from pathlib import Path
from core.data.ingest import ingest_zip
before = peak_kb()
with open(sys.argv[1], "rb") as upload:  # a seekable file, as Streamlit's UploadedFile is
    folder = ingest_zip(upload, "big.zip", destination=Path(sys.argv[2]))
after = peak_kb()
print(json.dumps({"growth_mb": (after - before) / 1024, "folder": str(folder)}))
"""


def test_a_large_compressible_zip_is_streamed_not_held_in_memory(tmp_path):
    """The probe's zip (96.5:1 to 1.99 GB) took the server from 77 to 3,901 MB because each entry was read whole.
    Here one 300 MB entry: peak memory grows by a few megabytes (it grew by 300+ before)."""
    archive = compressible_zip(tmp_path / "big.zip", entries=1, entry_mb=300)
    ratio = 300 * 1024**2 / archive.stat().st_size
    assert 20 < ratio < 100, ratio  # under the bomb limit, so only streaming keeps memory flat
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(archive), str(tmp_path / "datasets")],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "STUDIO_WORKSPACE": str(tmp_path / "ws")})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["growth_mb"] < 60, report
    written = Path(report["folder"]) / "data" / "class0" / "big0.png"
    assert written.stat().st_size == 300 * 1024**2


@pytest.fixture
def hosted(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    monkeypatch.delenv("STUDIO_SHARED_WORKSPACE", raising=False)
    return tmp_path / "ws"


def test_an_upload_over_the_visitors_quota_is_refused_and_nothing_is_kept(hosted, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_VISITOR_QUOTA_MB", "40")
    workspace = Workspace.for_session(new_session_id())
    archive = compressible_zip(tmp_path / "fifty.zip", entries=5, entry_mb=10)
    with pytest.raises(StudioError, match=r"unpacks to 50 MB, over the 40 MB left of your workspace's quota"):
        ingest_zip(archive, "fifty.zip", destination=workspace.datasets_dir())
    assert [p for p in workspace.datasets_dir().iterdir()] == []
    # Partly used: 30 MB already kept, so a 20 MB upload no longer fits
    kept = workspace.datasets_dir() / "earlier"
    kept.mkdir()
    (kept / "blob.bin").write_bytes(b"\0" * 30 * 1024**2)
    small = compressible_zip(tmp_path / "twenty.zip", entries=2, entry_mb=10)
    with pytest.raises(StudioError, match=r"over the 10 MB left of your workspace's quota.*Workspace page"):
        ingest_zip(small, "twenty.zip", destination=workspace.datasets_dir())
    assert sorted(p.name for p in workspace.datasets_dir().iterdir()) == ["earlier"]
    monkeypatch.setenv("STUDIO_VISITOR_QUOTA_MB", "30")
    with pytest.raises(StudioError, match=r"Your workspace is full \(30 MB per visitor\), so a training run"):
        workspace.check_quota("a training run")


def test_a_zip_whose_headers_lie_stops_at_the_limit_while_streaming(hosted, tmp_path, monkeypatch):
    """A running total, not only the declared sizes: the budget is checked before each chunk is kept."""
    from pathlib import PurePosixPath

    from core.data.ingest import OverBudget, _copy_member, _materialise, _write_bytes

    monkeypatch.setenv("STUDIO_VISITOR_QUOTA_MB", "25")
    workspace = Workspace.for_session(new_session_id())
    entries = [(PurePosixPath(f"data/c/{n}.png"), f"data/c/{n}.png",
                (lambda handle, budget: _write_bytes(handle, b"\0" * 10 * 1024**2, budget))) for n in range(3)]
    with pytest.raises(StudioError, match=r"passed the 25 MB left of your workspace's quota while unpacking "
                                          r"data/c/2.png \(it holds more than its headers declared\)"):
        _materialise(entries, "liar", "0123456789abcdef", workspace.datasets_dir(), expected_bytes=3)
    assert list(workspace.datasets_dir().iterdir()) == []  # the staging folder went too
    # A zip entry stops within one chunk of its budget, however large it is
    archive = compressible_zip(tmp_path / "one.zip", entries=1, entry_mb=20)
    out = tmp_path / "out.bin"
    with zipfile.ZipFile(archive) as opened, open(out, "wb") as handle:
        with pytest.raises(OverBudget):
            _copy_member(opened, opened.infolist()[0], "one.zip", handle, 5 * 1024**2)
    assert out.stat().st_size <= 5 * 1024**2


def test_the_upload_limit_applies_outside_a_visitor_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("STUDIO_MAX_UPLOAD_MB", "15")
    archive = compressible_zip(tmp_path / "twenty.zip", entries=2, entry_mb=10)
    with pytest.raises(StudioError, match=r"unpacks to 20 MB"):
        ingest_zip(archive, "twenty.zip", destination=tmp_path / "datasets")
    assert workspace_of(tmp_path / "datasets") is None


def test_idle_workspaces_are_removed_unless_a_run_is_training(hosted):
    sessions = hosted / SESSIONS
    old, fresh, training = (Workspace.for_session(new_session_id()) for _ in range(3))
    for ws in (old, fresh, training):
        (ws.path / "datasets").mkdir(parents=True)
        ws.touch()
    day_ago = time.time() - 25 * 3600
    for ws in (old, training):
        os.utime(ws.path / LAST_SEEN, (day_ago, day_ago))
    run = RunDir.create(training.path / "runs")
    run.write_config({"data": "x"})
    run.set_status("running", pid=os.getpid(), started=time.time())
    run.heartbeat()
    removed = remove_idle_workspaces()
    assert removed == [old.path]
    assert sorted(p.name for p in sessions.iterdir()) == sorted([fresh.path.name, training.path.name])
    assert remove_idle_workspaces(idle_seconds=None) == []  # idle limit from STUDIO_HOSTED: 24 h


def test_a_visitor_deletes_their_own_dataset_and_run_but_not_a_training_one(hosted, tmp_path):
    workspace = Workspace.for_session(new_session_id())
    data = workspace.datasets_dir() / "flowers-1234"
    data.mkdir(parents=True)
    (data / ".studio-complete").write_text("complete\n")
    (data / "a.png").write_bytes(b"x" * 1000)
    done = RunDir.create(workspace.path / "runs", "run-done")
    done.write_config({"data": str(data)})
    done.set_status("succeeded")
    items = {h.name: h for h in holdings(workspace)}
    assert set(items) == {"flowers-1234", "run-done"} and items["flowers-1234"].bytes >= 1000
    active = RunDir.create(workspace.path / "runs", "run-active")
    active.write_config({"data": str(data)})
    active.set_status("running", pid=os.getpid(), started=time.time())
    active.heartbeat()
    items = {h.name: h for h in holdings(workspace)}
    assert items["run-active"].busy and items["flowers-1234"].busy and not items["run-done"].busy
    with pytest.raises(StudioError, match="in use by a training run; stop the run first"):
        delete_holding(workspace, items["flowers-1234"])
    delete_holding(workspace, items["run-done"])
    assert not done.path.exists() and data.exists()
    other = Workspace.for_session(new_session_id())
    with pytest.raises(StudioError, match="not in your workspace"):
        delete_holding(other, items["run-active"])


@pytest.fixture
def per_visitor_app(hosted, monkeypatch):
    monkeypatch.setattr("core.network.device.detect_device", lambda: DeviceInfo("tensorflow", "cpu", "CPU only", 1))
    monkeypatch.setattr("core.data.samples.is_online", lambda *a, **k: False)
    st.cache_data.clear()
    st.cache_resource.clear()
    return hosted


@pytest.mark.parametrize("page", PAGES)
def test_a_visit_that_only_looks_creates_no_workspace_folder(per_visitor_app, page):
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    sessions = per_visitor_app / SESSIONS
    assert not sessions.exists() or list(sessions.iterdir()) == []


def test_the_workspace_page_lists_and_deletes(per_visitor_app):
    at = AppTest.from_file(APP, default_timeout=60).run()
    session_id = at.query_params["ws"][0] if isinstance(at.query_params["ws"], list) else at.query_params["ws"]
    workspace = Workspace.for_session(session_id)
    data = workspace.datasets_dir() / "**bold**-1234"
    data.mkdir(parents=True)
    (data / ".studio-complete").write_text("complete\n")
    (data / "a.png").write_bytes(b"x" * 2 * 1024**2)
    at.switch_page("pages/workspace.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("2.0 MB of 1,024.0 MB used" in (p.proto.text or "") for p in at.get("progress"))
    assert any(r"\*\*bold\*\*-1234" in m.value for m in at.markdown)  # shown literally, not bold
    at.button(key="delete_0").click().run()
    assert not data.exists()
    assert any("Nothing is kept for you yet" in i.value for i in at.info)


@pytest.mark.parametrize("state", [{"val_fraction": "x", "seed": "y"}, {"val_fraction": 7, "seed": -1},
                                   {"val_fraction": None, "seed": 2**40}, {"val_fraction": True, "seed": 1.5}])
def test_a_hand_edited_state_file_does_not_break_the_data_page(tmp_path, monkeypatch, flowers_dir, state):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("STUDIO_SHARED_WORKSPACE", "1")
    monkeypatch.setattr("core.network.device.detect_device", lambda: DeviceInfo("tensorflow", "cpu", "CPU only", 1))
    monkeypatch.setattr("core.data.samples.is_online", lambda *a, **k: False)
    st.cache_data.clear()
    st.cache_resource.clear()
    Workspace.root().save_state(dataset=str(flowers_dir), **state)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.slider(key="val_fraction").value == 0.2


def test_a_hosted_demo_refuses_one_shared_workspace_on_every_page(hosted, monkeypatch):
    """STUDIO_HOSTED=1 with STUDIO_SHARED_WORKSPACE=1 would drop the quota and show visitors each other's data:
    refused with a message naming both settings, on every page, and nothing is written to the shared root."""
    from core.base.workspace import shared_workspace

    monkeypatch.setenv("STUDIO_SHARED_WORKSPACE", "1")
    monkeypatch.setattr("core.network.device.detect_device", lambda: DeviceInfo("tensorflow", "cpu", "CPU only", 1))
    monkeypatch.setattr("core.data.samples.is_online", lambda *a, **k: False)
    with pytest.raises(StudioError, match="STUDIO_HOSTED=1 and STUDIO_SHARED_WORKSPACE=1 cannot be set together"):
        shared_workspace()
    with pytest.raises(StudioError, match="Unset STUDIO_SHARED_WORKSPACE"):
        Workspace.for_session(new_session_id())
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    for page in PAGES:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        errors = " ".join(e.value for e in at.error)
        assert "cannot be set together" in errors, (page, errors)
    assert not (hosted / "state.json").exists() and not (hosted / "datasets").exists()
    monkeypatch.delenv("STUDIO_HOSTED")
    assert shared_workspace()  # a private server may still share one folder between its tabs
