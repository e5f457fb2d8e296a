"""A trainer started by the app leaves the pages room (issue 27.3): niceness 10 and every core but one, carried in its
environment and applied first thing, to every thread it has. A real trainer's niceness is checked in
test_hardening.py (test_sigkilled_trainer_is_reported_failed_and_its_best_model_still_predicts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from core.training import jobs
from core.base.cpushare import (NICE_ENV, THREADS_ENV, TRAINER_NICENESS, CpuShare, environment_for,
                                    share_beside_server, threads_from_environment)


def test_the_rule_leaves_the_server_a_core_where_there_are_several() -> None:
    assert [share_beside_server(cores).threads for cores in (1, 2, 4, 16)] == [1, 1, 3, 15]
    assert share_beside_server(8).niceness == TRAINER_NICENESS == 10


def test_the_share_reaches_tensorflow_openmp_blas_and_the_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    env = environment_for(CpuShare(niceness=10, threads=3))
    assert env[NICE_ENV] == "10"
    assert {env[k] for k in (THREADS_ENV, "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
                             "OPENBLAS_NUM_THREADS")} == {"3"}
    from core.data.loader import default_threads

    monkeypatch.setenv(THREADS_ENV, "3")
    assert threads_from_environment() == 3 == default_threads()
    monkeypatch.setenv(THREADS_ENV, "zero")
    assert threads_from_environment() is None and default_threads() == (os.cpu_count() or 1)


def test_the_launcher_gives_the_trainer_its_share_unless_one_was_set_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NICE_ENV, raising=False)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = jobs._child_env()
    share = share_beside_server()
    assert env[NICE_ENV] == str(share.niceness) and env[THREADS_ENV] == env["OMP_NUM_THREADS"] == str(share.threads)
    monkeypatch.setenv(THREADS_ENV, "7")
    assert jobs._child_env()[THREADS_ENV] == "7"


PROBE = """
import json, os, threading, time
started = threading.Event()
stop = threading.Event()
early = threading.Thread(target=lambda: (started.set(), stop.wait()))  # a thread a library started at import
early.start(); started.wait()
from core.base.cpushare import apply_from_environment, current_niceness
share = apply_from_environment()
late = threading.Thread(target=stop.wait); late.start()
threads = {}
for tid in os.listdir("/proc/self/task"):
    threads[tid] = int(open(f"/proc/self/task/{tid}/stat").read().rsplit(") ", 1)[1].split()[16])
stop.set()
print(json.dumps({"share": [share.niceness, share.threads] if share else None, "threads": threads}))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads niceness from Linux's /proc")
def test_a_trainer_applies_its_niceness_to_every_thread_old_and_new() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), NICE_ENV: "10", THREADS_ENV: "1"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["share"] == [10, 1]
    assert len(found["threads"]) == 3 and set(found["threads"].values()) == {10}, found
    # Without a share (the command line), nothing changes.
    env.pop(NICE_ENV)
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["share"] is None and set(found["threads"].values()) == {os.nice(0)}
