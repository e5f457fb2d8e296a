"""The app's workspace folder: uploaded datasets, downloads, runs and the few choices the UI remembers.

One folder ($STUDIO_WORKSPACE, default `<repo>/workspace`) so that everything the app creates can be found,
backed up or deleted in one place. The remembered state (current dataset, augmentation spec) lives in a small
JSON file rather than in the browser session, so a reload or a second tab sees the same choices.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from core.runs import read_json, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_FILE = "state.json"


def workspace_dir() -> Path:
    """$STUDIO_WORKSPACE, else `<repo>/workspace`; created on first use."""
    path = Path(os.environ.get("STUDIO_WORKSPACE") or REPO_ROOT / "workspace").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets_dir() -> Path:
    """Where uploaded and downloaded datasets are unpacked, one folder each."""
    return _sub("datasets")


def downloads_dir() -> Path:
    """Where downloaded archives are cached, so a second use does not download again."""
    return _sub("downloads")


def runs_dir() -> Path:
    """The models folder the UI passes to the trainer (`--models-dir`)."""
    return _sub("runs")


def _sub(name: str) -> Path:
    path = workspace_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_state() -> dict[str, Any]:
    """The remembered UI choices ({} when nothing is remembered yet or the file is damaged)."""
    try:
        state = read_json(workspace_dir() / STATE_FILE, {})
    except ValueError:  # a hand-edited, broken file must not take the app down
        return {}
    return state if isinstance(state, dict) else {}


def save_state(**updates: Any) -> dict[str, Any]:
    """Merge `updates` into the remembered state (atomic write) and return the new state."""
    state = {**load_state(), **updates}
    write_json_atomic(workspace_dir() / STATE_FILE, state)
    return state


def safe_name(text: str, fallback: str = "dataset") -> str:
    """A folder-name-safe version of `text` (letters, digits, '-', '_', '.'), at most 60 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:60]
    return cleaned or fallback
