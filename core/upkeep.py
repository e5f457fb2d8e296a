"""Upkeep of visitors' workspaces: the Workspace page's list of datasets and runs, deleting them, and the sweep of
idle session folders.

Above training (core.training.jobs) because none of these may touch a folder a live trainer still uses; the
workspace's folders themselves (core.base.workspace) are below everything.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from core import StudioError
from core.base.runs import RunDir
from core.base.workspace import (LAST_SEEN, SESSIONS, Workspace, folder_bytes, idle_seconds_allowed, valid_session_id,
                                 workspace_dir)


def _has_active_run(folder: Path) -> bool:
    """A run in this workspace still running (its trainer alive): never removed from under it."""
    from core.training.jobs import active_run

    try:
        return active_run(folder / "runs") is not None
    except Exception:  # a damaged run folder must not keep a whole workspace forever, nor stop the sweep
        return False


def remove_idle_workspaces(now: float | None = None, idle_seconds: float | None = None) -> list[Path]:
    """Delete session folders untouched for longer than the idle limit (none without one) and with no active
    run; return what was removed. Cheap enough to call once per new visit."""
    limit = idle_seconds if idle_seconds is not None else idle_seconds_allowed()
    sessions = workspace_dir() / SESSIONS
    if limit is None or not sessions.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for folder in sessions.iterdir():
        if not folder.is_dir() or not valid_session_id(folder.name):
            continue
        marker = folder / LAST_SEEN
        try:
            seen = (marker if marker.exists() else folder).stat().st_mtime
        except OSError:
            continue
        if now - seen > limit and not _has_active_run(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


# ----------------------------------------------------------------------------------------- visitor's own files
@dataclass(frozen=True)
class Holding:
    """One thing a workspace keeps on disk, as the Workspace page lists it."""

    kind: str  # "dataset" or "run"
    name: str
    path: Path
    bytes: int
    busy: bool  # a run still training, or a dataset such a run reads: not deletable now


def holdings(workspace: Workspace) -> list[Holding]:
    """The workspace's datasets and runs with their sizes, largest first."""
    from core.data.ingest import list_datasets
    from core.training.jobs import active_run
    from core.base.runs import list_runs

    runs_folder = workspace.path / "runs"
    try:
        active = active_run(runs_folder) if runs_folder.is_dir() else None
    except Exception:  # a damaged run folder: nothing counts as busy, deleting it is the way out
        active = None
    busy_data = _data_of(active) if active is not None else None
    items = [Holding("dataset", folder.name, folder, folder_bytes(folder),
                     busy_data is not None and busy_data.is_relative_to(folder.resolve()))
             for folder in list_datasets(workspace.path / "datasets")]
    items += [Holding("run", run.path.name, run.path, folder_bytes(run.path),
                      active is not None and run.path == active.path)
              for run in (list_runs(runs_folder) if runs_folder.is_dir() else [])]
    return sorted(items, key=lambda h: h.bytes, reverse=True)


def _data_of(run: RunDir) -> Path | None:
    try:
        data = run.read_config().get("data")
    except Exception:
        return None
    return Path(data).resolve() if isinstance(data, str) and data else None


def delete_holding(workspace: Workspace, holding: Holding) -> None:
    """Delete one of the workspace's own datasets or runs; refuse anything outside it or still in use."""
    path = Path(holding.path)
    if not workspace.contains(path) or path.resolve() == workspace.path.resolve() or path.is_symlink():
        raise StudioError(f"{holding.name} is not in your workspace, so it cannot be deleted here.")
    current = next((h for h in holdings(workspace) if h.path == path), None)
    if current is None:
        return  # already gone (a second click, another tab)
    if current.busy:
        raise StudioError(f"{holding.name} is in use by a training run; stop the run first, then delete it.")
    shutil.rmtree(path)
    if holding.kind == "dataset":  # its cleaning-loop corrections go with it (core.data.overrides.file_beside)
        from core.data.overrides import file_beside

        file_beside(path).unlink(missing_ok=True)
