"""The folder picker on the Data page: a small component (pages/_folder_upload/) that packs the picked folder
into one .zip in the browser, and the hidden single-file uploader it hands that archive to.

Streamlit only here; unpacking the archive and accounting for every picked file are in core.data.upload_manifest.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components
from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx
from streamlit.runtime.uploaded_file_manager import UploadedFile

STATIC = Path(__file__).with_suffix("")  # pages/_folder_upload/: index.html and folder_upload.js
ROUND_KEY = "folder_upload_round"  # bumped after each archive, so the next one gets a fresh, empty uploader


def folder_picker(max_bytes: int, max_bytes_rule: str, max_files: int) -> UploadedFile | None:
    """Draw the picker; return the archive of a picked folder once it has arrived (None until then).

    `max_bytes` (and the rule it comes from, in words) and `max_files` let the browser refuse a folder the
    server would refuse, before sending anything.
    """
    round_ = st.session_state.setdefault(ROUND_KEY, 0)
    target = f"folder_archive_{round_}"
    # Declared on every run: a component is only registered with a running app (AppTest starts a new one each time).
    picker = components.declare_component("folder_picker", path=str(STATIC))
    picker(target_key=target, round=round_, max_bytes=max_bytes, max_bytes_rule=max_bytes_rule,
           max_files=max_files, key="folder_picker", default=None)
    st.html(f"<style>.st-key-{target} {{ display: none; }}</style>")  # the picker fills it; people never see it
    return st.file_uploader("Archive of the picked folder", type=["zip"], key=target, label_visibility="collapsed")


def forget(upload: UploadedFile) -> None:
    """Drop the archive from Streamlit's memory now (not when the session ends) and ready a fresh uploader."""
    ctx = get_script_run_ctx()
    # Only the in-memory manager can remove one file; Streamlit's own chat and audio inputs do the same.
    if ctx is not None and isinstance(ctx.uploaded_file_mgr, MemoryUploadedFileManager):
        ctx.uploaded_file_mgr.remove_file(session_id=ctx.session_id, file_id=upload.file_id)
    st.session_state[ROUND_KEY] = st.session_state.get(ROUND_KEY, 0) + 1
