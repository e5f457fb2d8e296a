"""Workspaces: where uploaded datasets, runs and the few choices the UI remembers live.

The root folder is $STUDIO_WORKSPACE (default `<repo>/workspace`). A hosted demo has strangers side by side, so by
default each browser session works in its own folder, `<root>/sessions/<session id>/`, and sees only the datasets
and runs made there; the session id is a random 128-bit token (the app keeps it in the address bar, so a reload
or a bookmark returns to the same workspace). STUDIO_SHARED_WORKSPACE=1 makes every session use the root folder
itself, for a team that wants to see each other's runs. The module-level helpers (`datasets_dir()`,
`runs_dir()`, ...) are the root workspace, as the CLI and the shared samples use it.

The remembered state (current dataset, augmentation spec) lives in a small JSON file in the workspace rather
than in the browser session, so a reload or a second tab of the same workspace sees the same choices.

Hosted mode (STUDIO_HOSTED=1, docs/deploy.md) bounds what one visitor can keep: a disk quota per session folder
(STUDIO_VISITOR_QUOTA_MB, checked while an upload is written and before a run starts), and session folders idle
longer than STUDIO_IDLE_HOURS are removed. A session folder is created only when something is first written to
it, so a visit that only looks leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import StudioError
from core.base.runs import CONFIG, RunDir, read_json, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_FILE = "state.json"
SESSIONS = "sessions"
SHARED_ENV = "STUDIO_SHARED_WORKSPACE"
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
# Run ids and dataset folder names the UI accepts from the address bar: one plain name, never a path.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
HOSTED_ENV = "STUDIO_HOSTED"
QUOTA_ENV = "STUDIO_VISITOR_QUOTA_MB"
IDLE_ENV = "STUDIO_IDLE_HOURS"
HOSTED_QUOTA_MB = 1024  # per visitor in hosted mode: a few thousand photos and a handful of runs
HOSTED_IDLE_HOURS = 24.0
LAST_SEEN = ".last-seen"  # touched on each visit to a session folder that exists; its age is the idle time


def workspace_dir() -> Path:
    """The root workspace: $STUDIO_WORKSPACE, else `<repo>/workspace`; created on first use."""
    path = Path(os.environ.get("STUDIO_WORKSPACE") or REPO_ROOT / "workspace").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_workspace() -> bool:
    """True when STUDIO_SHARED_WORKSPACE asks every session to share the root workspace.

    Refused on a public demo: one shared folder has no per-visitor quota and shows every visitor what the others
    uploaded, so STUDIO_HOSTED=1 with STUDIO_SHARED_WORKSPACE=1 would silently undo what hosted mode promises.
    """
    shared = _flag(SHARED_ENV)
    if shared and hosted_mode():
        raise StudioError(f"{HOSTED_ENV}=1 and {SHARED_ENV}=1 cannot be set together: a hosted demo gives each "
                          f"visitor a workspace of their own, with a quota; one shared workspace would let visitors "
                          f"see and delete each other's photos and runs. Unset {SHARED_ENV} on a public demo.")
    return shared


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hosted_mode() -> bool:
    """True on a public demo (STUDIO_HOSTED=1): per-visitor quota, idle clean-up and training limits apply."""
    return _flag(HOSTED_ENV)


def _env_number(name: str, default: float | None) -> float | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise StudioError(f"{name}={value!r} is not a number; set it to e.g. {default or 1024:g}.") from None
    if not number > 0:
        raise StudioError(f"{name}={value!r} must be above 0.")
    return number


def visitor_quota_bytes() -> int | None:
    """Bytes one session folder may hold: STUDIO_VISITOR_QUOTA_MB, 1,024 MB by default in hosted mode, else none."""
    megabytes = _env_number(QUOTA_ENV, HOSTED_QUOTA_MB if hosted_mode() else None)
    return None if megabytes is None else int(megabytes * 1024**2)


def idle_seconds_allowed() -> float | None:
    """How long an untouched session folder is kept: STUDIO_IDLE_HOURS, 24 h by default in hosted mode."""
    hours = _env_number(IDLE_ENV, HOSTED_IDLE_HOURS if hosted_mode() else None)
    return None if hours is None else hours * 3600


def check_server_settings() -> None:
    """Raise StudioError, naming the variable, for workspace settings a server must not start with: hosted and
    shared together, a quota or idle time that is not a positive number. The app calls it before drawing anything."""
    shared_workspace()
    visitor_quota_bytes()
    idle_seconds_allowed()


def folder_bytes(folder: Path) -> int:
    """Bytes of every regular file below `folder` (links not followed); 0 when it does not exist."""
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for filename in filenames:
            try:
                info = os.lstat(os.path.join(dirpath, filename))
            except OSError:  # removed while walking
                continue
            total += info.st_size
    return total


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
        # Not created here: a visit that only looks leaves nothing; writers create what they write into.
        return cls(workspace_dir() / SESSIONS / str(session_id))

    def _sub(self, name: str) -> Path:
        """A sub-folder's path; created only for the root workspace (sessions create theirs when writing)."""
        path = self.path / name
        if not self.is_session:
            path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def is_session(self) -> bool:
        return self.path.parent.name == SESSIONS

    def touch(self) -> None:
        """Mark a visit, for idle clean-up (only where the folder exists: looking creates nothing)."""
        if self.is_session and self.path.is_dir():
            try:
                (self.path / LAST_SEEN).touch()
            except OSError:
                pass

    def usage_bytes(self) -> int:
        """What this workspace holds on disk (datasets, runs, their files)."""
        return folder_bytes(self.path)

    def quota_left(self) -> int | None:
        """Bytes this session may still write under the visitor quota; None when there is no quota (the root
        workspace, or not hosted)."""
        quota = visitor_quota_bytes()
        if quota is None or not self.is_session:
            return None
        return max(0, quota - self.usage_bytes())

    def check_quota(self, what: str) -> None:
        """Refuse to start `what` (a training run, an upload) when the quota is already used up."""
        left = self.quota_left()
        if left is not None and left <= 0:
            quota = visitor_quota_bytes() or 0
            raise StudioError(f"Your workspace is full ({quota / 1024**2:.0f} MB per visitor), so {what} cannot "
                              "start. Delete datasets or runs you no longer need on the Workspace page.")

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
            self.path.mkdir(parents=True, exist_ok=True)
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


def workspace_of(path: Path | str) -> Workspace | None:
    """The session workspace a path lies in (`<root>/sessions/<id>/...`), or None."""
    sessions = (workspace_dir() / SESSIONS).resolve()
    try:
        relative = Path(path).resolve().relative_to(sessions)
    except ValueError:
        return None
    return Workspace(sessions / relative.parts[0]) if relative.parts and valid_session_id(relative.parts[0]) \
        else None


def safe_name(text: str, fallback: str = "dataset") -> str:
    """A folder-name-safe version of `text` (letters, digits, '-', '_', '.'), at most 60 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:60]
    return cleaned or fallback
