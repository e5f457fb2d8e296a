"""The run-directory contract: atomic files, whole lines, heartbeats and stop requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from core.base.runs import HEARTBEAT_TIMEOUT_SECONDS, RunDir, list_runs, read_jsonl, write_json_atomic


def test_atomic_json_leaves_no_temp_files(tmp_path):
    target = tmp_path / "status.json"
    for i in range(5):
        write_json_atomic(target, {"i": i})
    assert json.loads(target.read_text()) == {"i": 4}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_partial_last_line_is_ignored(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')  # the trainer is mid-write of line 3
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_status_heartbeat_and_metrics(tmp_path):
    run = RunDir.create(tmp_path)
    run.write_config({"data": "x"})
    run.set_status("running", phase="head")
    run.log_metrics({"kind": "epoch", "loss": 1.0})
    reopened = RunDir.open(run.run_id, tmp_path)
    assert reopened.read_status()["state"] == "running"
    assert reopened.read_metrics()[0]["loss"] == 1.0
    assert [r.run_id for r in list_runs(tmp_path)] == [run.run_id]


def test_dead_trainer_is_reported_failed(tmp_path):
    run = RunDir.create(tmp_path)
    run.write_config({})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run.set_status("running", pid=dead.pid)
    later = time.time() + HEARTBEAT_TIMEOUT_SECONDS + 1
    status = run.effective_status(now=later)
    assert status["state"] == "failed" and "stopped responding" in status["error"]
    # a live process with an old heartbeat (e.g. a long evaluation) is not declared dead
    run.set_status("running", pid=os.getpid())
    assert run.effective_status(now=later)["state"] == "running"


def test_stop_request(tmp_path):
    run = RunDir.create(tmp_path)
    assert not run.stop_requested()
    run.request_stop()
    assert run.stop_requested()
