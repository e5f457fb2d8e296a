"""Workspaces: where uploaded datasets, runs and the few choices the UI remembers live.

The root folder is $STUDIO_WORKSPACE (default `<repo>/workspace`). A hosted demo has strangers side by side, so by
default each browser session works in its own folder, `<root>/sessions/<session id>/`, and sees only the datasets
and runs made there; the session id is a random 128-bit token (the app keeps it in the address bar, so a reload
or a bookmark returns to the same workspace). STUDIO_SHARED_WORKSPACE=1 makes every session use the root folder
itself, for a team that wants to see each other's runs. The module-level helpers (`datasets_dir()`,
`runs_dir()`, ...) are the root workspace, as the CLI and the shared samples use it.

The remembered state (current dataset, augmentation spec) lives in a small JSON file in the workspace rather
than in the browser session, so a reload or a second tab of the same workspace sees the same choices.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import StudioError
from core.runs import CONFIG, RunDir, read_json, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_FILE = "state.json"
SESSIONS = "sessions"
SHARED_ENV = "STUDIO_SHARED_WORKSPACE"
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
# Run ids and dataset folder names the UI accepts from the address bar: one plain name, never a path.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def workspace_dir() -> Path:
    """The root workspace: $STUDIO_WORKSPACE, else `<repo>/workspace`; created on first use."""
    path = Path(os.environ.get("STUDIO_WORKSPACE") or REPO_ROOT / "workspace").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_workspace() -> bool:
    """True when STUDIO_SHARED_WORKSPACE asks every session to share the root workspace."""
    return os.environ.get(SHARED_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def new_session_id() -> str:
    """A fresh, unguessable session id (32 hex digits)."""
    return secrets.token_hex(16)


def valid_session_id(value: Any) -> bool:
    """True only for ids new_session_id() could have made (so an id can never be a path)."""
    return isinstance(value, str) and _SESSION_ID.fullmatch(value) is not None


def is_plain_name(value: Any) -> bool:
    """True for a single file-name-like token (a run id, a dataset folder): no separators, no '..'."""
    return isinstance(value, str) and _PLAIN_NAME.fullmatch(value) is not None and ".." not in value


@dataclass(frozen=True)
class Workspace:
    """One workspace folder: datasets/, runs/, downloads/ and state.json."""

    path: Path

    @classmethod
    def root(cls) -> "Workspace":
        return cls(workspace_dir())

    @classmethod
    def for_session(cls, session_id: str | None) -> "Workspace":
        """The session's own workspace, or the root one when STUDIO_SHARED_WORKSPACE is set."""
        if shared_workspace():
            return cls.root()
        if not valid_session_id(session_id):
            raise StudioError("The workspace id in the address is not valid; open the app's start page again.")
        path = workspace_dir() / SESSIONS / str(session_id)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    def _sub(self, name: str) -> Path:
        path = self.path / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def datasets_dir(self) -> Path:
        """Where uploaded datasets are unpacked, one folder each."""
        return self._sub("datasets")

    def downloads_dir(self) -> Path:
        return self._sub("downloads")

    def runs_dir(self) -> Path:
        """The models folder the UI passes to the trainer (`--models-dir`)."""
        return self._sub("runs")

    def contains(self, path: Path | str) -> bool:
        """True when `path` (links resolved) lies inside this workspace."""
        return Path(path).resolve().is_relative_to(self.path.resolve())

    def run(self, run_id: Any) -> RunDir | None:
        """The run with this id in this workspace, or None (for a malformed id, a path, or no such run)."""
        if not is_plain_name(run_id):
            return None
        folder = self.runs_dir() / run_id
        if not (folder / CONFIG).is_file() or not self.contains(folder):
            return None
        return RunDir(folder)

    def load_state(self) -> dict[str, Any]:
        """The remembered UI choices ({} when nothing is remembered yet or the file is damaged)."""
        try:
            state = read_json(self.path / STATE_FILE, {})
        except (ValueError, OSError):  # a hand-edited or unreadable file must not take the app down
            return {}
        return state if isinstance(state, dict) else {}

    def save_state(self, **updates: Any) -> dict[str, Any]:
        """Merge `updates` into the remembered state (atomic write) and return the new state."""
        state = {**self.load_state(), **updates}
        try:
            write_json_atomic(self.path / STATE_FILE, state)
        except OSError as err:
            raise StudioError(f"Could not save your choices in {self.path} ({err.strerror or err}); free some "
                              "disk space or check the workspace folder's permissions.") from None
        return state


# The root workspace, for the CLI, the shared samples and code written before workspaces had sessions.
def datasets_dir() -> Path:
    """Where datasets are unpacked in the root workspace (the shared samples live here too)."""
    return Workspace.root().datasets_dir()


def downloads_dir() -> Path:
    """Where downloaded archives are cached, so a second use (by any session) does not download again."""
    return Workspace.root().downloads_dir()


def runs_dir() -> Path:
    return Workspace.root().runs_dir()


def load_state() -> dict[str, Any]:
    return Workspace.root().load_state()


def save_state(**updates: Any) -> dict[str, Any]:
    return Workspace.root().save_state(**updates)


def safe_name(text: str, fallback: str = "dataset") -> str:
    """A folder-name-safe version of `text` (letters, digits, '-', '_', '.'), at most 60 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:60]
    return cleaned or fallback
