"""The app shell and this browser session's state: which workspace it uses, and what it remembers there and in the
address bar (the current dataset, augmentation and run). Streamlit only; every other pages/ helper builds on this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from core import StudioError
from core.data import samples
from core.data.images import ImageError
from core.base.runs import RunDir, list_runs
from core.base.workspace import (SESSIONS, Workspace, is_plain_name, new_session_id, shared_workspace,
                                 valid_session_id, workspace_dir)
from core.upkeep import remove_idle_workspaces
from pages._common import show_error

RUN_PARAM = "run"  # ?run=<id> in the address bar reattaches a reload or a second tab to a run
WORKSPACE_PARAM = "ws"  # ?ws=<session id> keeps a reload (or a bookmark) in the same private workspace
WORKSPACE_KEY = "workspace_id"
SHELL_FLAG = "_in_app_shell"  # set while a page runs inside streamlit_app.py
ENTRY_POINT = Path(__file__).resolve().parent.parent / "streamlit_app.py"


def ensure_app_shell() -> None:
    """Run every page inside streamlit_app.py (navigation, sidebar), even on a server's first visit to /train.

    Streamlit treats a folder named pages/ as an old-style multipage app until st.navigation has run once in
    the server process (AppTest even resets that before every run), and in that mode a request for /train runs
    pages/train.py alone. Then switch the mode off, run the entry point here (it runs this page inside the
    real navigation, in this same script run, so no click is lost) and stop this bare copy.
    """
    if st.session_state.get(SHELL_FLAG):
        return
    import runpy

    from streamlit.runtime.pages_manager import PagesManager

    PagesManager.uses_pages_directory = False
    runpy.run_path(str(ENTRY_POINT))
    st.stop()


def run_in_shell(page) -> None:
    """Run the chosen page, marked as running inside the app shell (see ensure_app_shell).

    A StudioError, an image problem or a disk/permission error that a page did not handle itself is shown as
    the sentence it is instead of a traceback: a public demo must not die on a strange file or a full disk.
    """
    st.session_state[SHELL_FLAG] = True
    try:
        page.run()
    except (StudioError, ImageError, OSError) as err:
        show_error(err)
    finally:
        st.session_state[SHELL_FLAG] = False


# ----------------------------------------------------------------------------------------- workspace
def current_workspace(sync_address: bool = True) -> Workspace:
    """This browser session's workspace (or the shared one when STUDIO_SHARED_WORKSPACE is set).

    The session's id lives in st.session_state (kept across page switches) and in the address bar as ?ws=
    (kept across reloads and bookmarks); an id in the address that new_session_id() could not have made is
    ignored and a fresh one is issued, so the address can never point at a folder.
    """
    if shared_workspace():
        return Workspace.root()
    session_id = st.session_state.get(WORKSPACE_KEY)
    if not valid_session_id(session_id):
        from_address = st.query_params.get(WORKSPACE_PARAM)
        session_id = from_address if valid_session_id(from_address) else new_session_id()
        st.session_state[WORKSPACE_KEY] = session_id
        Workspace.for_session(session_id).touch()  # a visit: resets its idle clock (creates nothing)
        sweep_idle_workspaces()
    if sync_address and st.query_params.get(WORKSPACE_PARAM) != session_id:
        st.query_params[WORKSPACE_PARAM] = session_id
    return Workspace.for_session(session_id)


@st.cache_data(ttl=600, show_spinner=False)
def sweep_idle_workspaces() -> int:
    """Remove visitors' folders idle past STUDIO_IDLE_HOURS (hosted mode): at most once per 10 minutes per server."""
    return len(remove_idle_workspaces())


def allowed_dataset(path: Path) -> bool:
    """Datasets a page may open: this workspace's own, and the server's samples (never another session's)."""
    workspace = current_workspace(sync_address=False)
    if workspace.contains(path):
        return True
    resolved = path.resolve()
    if resolved.is_relative_to((workspace_dir() / SESSIONS).resolve()):
        return False  # another session's folder
    shared_samples = [samples.flowers_mini_dir(), samples.tf_flowers_dir()]
    return any(s is not None and resolved.is_relative_to(Path(s).resolve()) for s in shared_samples)


# ----------------------------------------------------------------------------------------- shared state
def current_dataset_path() -> Path | None:
    """The dataset chosen on the Data page (remembered in the workspace, so reloads keep it)."""
    value = current_workspace(sync_address=False).load_state().get("dataset")
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    return path if path.is_dir() and allowed_dataset(path) else None


def set_current_dataset(path: Path) -> None:
    """Make `path` the dataset every page works on."""
    if not allowed_dataset(Path(path)):
        raise StudioError(f"{path} is neither in this workspace nor a sample dataset.")
    current_workspace(sync_address=False).save_state(dataset=str(path))


def current_augmentation() -> Any:
    """The augmentation chosen on the Augment page: a preset name or an explicit spec list."""
    return current_workspace(sync_address=False).load_state().get("augmentation", "light")


def runs() -> list[RunDir]:
    """All runs in the workspace, newest first."""
    return list_runs(current_workspace(sync_address=False).runs_dir())


def selected_run_id() -> str | None:
    """The run named in the address bar, else the last one this session looked at (a plain run id, or None)."""
    for candidate in (st.query_params.get(RUN_PARAM), st.session_state.get("run_id")):
        if candidate and is_plain_name(candidate):
            return candidate
    return None


def remember_run(run: RunDir) -> None:
    """Put the run in the address bar and the session, so a reload or another page shows it."""
    st.session_state["run_id"] = run.run_id
    if st.query_params.get(RUN_PARAM) != run.run_id:
        st.query_params[RUN_PARAM] = run.run_id
