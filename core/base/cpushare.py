"""How much of the machine a trainer started by the app may take, so the pages beside it stay answerable (issue 27).

The app and the trainer share one box: on a hosted demo, visitors keep opening pages and classifying while a run
trains. Linux gives every runnable thread an equal turn at equal priority, so a trainer with a thread per core would
take nearly every turn from the server's few. A trainer started by the app therefore runs at a lower priority
(niceness 10: when the server wants a core it gets about nine turns in ten) and with every core but one (where
there are several), so a page's work never has to wait for a training thread to be preempted. A trainer started
from the command line takes the whole machine: nothing else is there to serve.

The launcher (core.training.jobs) puts the share in the trainer's environment; the trainer applies it first thing
(`apply_from_environment`), before TensorFlow starts its thread pools, which read their sizes once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

NICE_ENV = "STUDIO_TRAINER_NICE"
THREADS_ENV = "STUDIO_TRAINER_THREADS"
TRAINER_NICENESS = 10  # 0 is the server's; CFS weights 1024 against 110: the server wins ~90% of a contested core


@dataclass(frozen=True)
class CpuShare:
    """A trainer's share of the machine: its niceness and how many threads it computes with."""

    niceness: int
    threads: int


def share_beside_server(cores: int | None = None) -> CpuShare:
    """A trainer beside the app's server: niceness 10, and every core but one where there are several."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return CpuShare(niceness=TRAINER_NICENESS, threads=max(1, cores - 1))


def environment_for(share: CpuShare) -> dict[str, str]:
    """The variables that carry a share to a trainer process: ours, and the thread counts TensorFlow, oneDNN/OpenMP
    and OpenBLAS read at start-up."""
    threads = str(share.threads)
    return {NICE_ENV: str(share.niceness), THREADS_ENV: threads, "TF_NUM_INTRAOP_THREADS": threads,
            "TF_NUM_INTEROP_THREADS": threads, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}


def threads_from_environment() -> int | None:
    """The thread count a launcher gave this trainer, or None (then: one per core)."""
    try:
        value = int(os.environ.get(THREADS_ENV, ""))
    except ValueError:
        return None
    return value if value >= 1 else None


def apply_from_environment() -> CpuShare | None:
    """Lower this process's priority to the niceness its launcher asked for (never raise it: a nested trainer already
    at that niceness stays there); the threads are read where they are used. Returns the share in force, if any."""
    try:
        wanted = int(os.environ.get(NICE_ENV, ""))
    except ValueError:
        return None
    if hasattr(os, "setpriority"):  # Unix; elsewhere the share's threads still apply
        # Linux keeps a niceness per thread and a new thread inherits its creator's: renice every thread that exists
        # now (a library may have started some at import), and those made later follow.
        for thread_id in _thread_ids():
            try:
                if os.getpriority(os.PRIO_PROCESS, thread_id) < wanted:
                    os.setpriority(os.PRIO_PROCESS, thread_id, wanted)
            except OSError:  # a thread that ended meanwhile
                continue
    return CpuShare(niceness=wanted, threads=threads_from_environment() or (os.cpu_count() or 1))


def _thread_ids() -> list[int]:
    """This process's threads (Linux), or just the process where /proc is missing."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def current_niceness(pid: int) -> int | None:
    """A process's niceness from /proc (None where there is no /proc or no such process)."""
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return None


__all__ = ["CpuShare", "NICE_ENV", "THREADS_ENV", "TRAINER_NICENESS", "apply_from_environment", "current_niceness",
           "environment_for", "share_beside_server", "threads_from_environment"]
