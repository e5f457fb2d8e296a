"""The cleaning loop's buttons (core.data.overrides): relabel, exclude or undo one photo, from wherever it is shown.

The Data page's health list and the Evaluate page's mistakes call `correction_controls` under each photo. A click
writes one entry to the dataset's overrides file (the photos themselves never move) and the page redraws with it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from core import StudioError
from core.data.overrides import Override, exclude, read_overrides, relabel, undo
from core.base.safetext import markdown_literal
from pages._loaders import load_dataset, overrides_file
from pages._session import allowed_dataset

MESSAGE_KEY = "correction_message"  # what the last click did (or why it was refused), shown once after the rerun


def correction_controls(root: Path, path: str, classes: list[str], key: str, source: str = "mistakes",
                        suggested: str | None = None) -> None:
    """Under one photo: its correction if it has one (with Undo), else one-click Relabel (as `suggested` when
    given, else a class picked from a menu) and Exclude. Nothing is shown for a dataset this session may not
    change (another visitor's, or one that is gone)."""
    root = Path(root)
    if not root.is_dir() or not allowed_dataset(root):
        return
    file = overrides_file(root)
    entry = current_entries(str(file), _stamp(file)).get(path)
    tag = f"{key}_{hashlib.blake2b(path.encode('utf-8'), digest_size=6).hexdigest()}"
    if entry is not None:
        st.caption(("Relabelled " if entry.action == "relabel" else "Excluded: ")
                   + markdown_literal(entry.describe(), 60))
        st.button("Undo", key=f"{tag}_undo", icon=":material/undo:", on_click=_undo, args=(root, path),
                  width="stretch")
        return
    # Stacked, full width: these sit under thumbnails in narrow columns, where side-by-side labels get cut.
    if suggested is not None:
        st.button(f"Relabel as {markdown_literal(suggested, 24)}", key=f"{tag}_relabel", on_click=_relabel,
                  args=(root, path, suggested, source), width="stretch", help="The photo is trained on under this "
                  "class from the next run; its file stays where it is.")
    else:
        with st.popover("Relabel", icon=":material/label:", width="stretch"):
            for index, name in enumerate(classes):
                st.button(markdown_literal(name, 40), key=f"{tag}_to_{index}", on_click=_relabel,
                          args=(root, path, name, source))
    st.button("Exclude", key=f"{tag}_exclude", on_click=_exclude, args=(root, path, source), width="stretch",
              help="Left out of training and evaluation from the next run; its file stays where it is.")


def show_last_correction() -> None:
    """The sentence the last click left (a relabel, an undo, or why one was refused)."""
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message is None:
        return
    kind, text = message
    (st.success if kind == "ok" else st.error)(text, icon=":material/edit_note:" if kind == "ok" else None)


@st.cache_data(max_entries=16, show_spinner=False)
def current_entries(file: str, stamp: float) -> dict[str, Override]:
    """The overrides file's entries, read again only when it changes (`stamp`: its modification time)."""
    return read_overrides(file)


def _stamp(file: Path) -> float:
    try:
        return file.stat().st_mtime_ns / 1e9
    except OSError:
        return 0.0


def _relabel(root: Path, path: str, new_class: str, source: str) -> None:
    _apply(lambda dataset: relabel(overrides_file(root), dataset, path, new_class, source),
           f"{path} is now trained on as '{new_class}'. Undo it here or on the Data page.", root)


def _exclude(root: Path, path: str, source: str) -> None:
    _apply(lambda dataset: exclude(overrides_file(root), dataset, path, source),
           f"{path} is left out from the next run. Undo it here or on the Data page.", root)


def _undo(root: Path, path: str) -> None:
    _apply(lambda dataset: undo(overrides_file(root), path, dataset.root),
           f"{path} is back in its folder's class.", root)


def _apply(change, done: str, root: Path) -> None:
    """Run one change in a button's callback; its outcome is shown after the rerun (show_last_correction)."""
    try:
        change(load_dataset(root))
    except (StudioError, OSError) as err:
        st.session_state[MESSAGE_KEY] = ("error", markdown_literal(str(err), 400))
        return
    st.session_state[MESSAGE_KEY] = ("ok", markdown_literal(done, 400))
