"""The Data page's camera (Teachable Machine's way of collecting data): a new dataset from typed class names, then
one click per photo into the chosen class (core.data.camera), with counts, the last few photos and an undo.

The camera is on only while the person asks for it (a toggle), so the Data page never lights a camera by itself.
After each photo the widget gets a new key: Streamlit draws a fresh camera, ready for the next click, instead of
the last photo with a "Clear photo" button.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core import StudioError
from core.data import samples
from core.data.camera import add_photo, check_class_name, new_camera_dataset, photo_counts, photo_folder, remove_photo
from core.data.datasets import resolve_root
from core.data.previews import thumbnail
from core.base.safetext import markdown_literal, shorten
from pages._session import current_workspace, set_current_dataset

CAMERA_ON = "camera_on"              # the toggle: the camera is drawn (and asks for the device) only while on
OPEN_NEXT = "camera_open_next"       # a dataset was just made from the Camera tab: open the camera once
SHOT = "camera_shot"                 # a counter in the camera widget's key; a new key is a fresh camera
TAKEN = "camera_taken"               # [(dataset root, photo path, class)] this session took, oldest first
MESSAGE = "camera_message"           # what the last photo or undo did (or why it was refused), shown once
CLASS_KEY = "camera_class"           # the chosen class, or NEW_CLASS
NEW_CLASS = ""                       # the menu's "New class…" entry: no class can be named "" (core.data.camera)
NEW_CLASS_KEY = "camera_new_class"   # the typed name of a new class
SAVED_IDS = "camera_saved_ids"      # upload ids of the last photos saved: a photo sent twice is saved once
MAX_TAKEN = 200                      # photos remembered for the thumbnails and undo (per session)
RECENT = 6                           # thumbnails of the last photos taken


def camera_tab() -> None:
    """A source tab: start a dataset of empty classes, to be filled from the camera below the report."""
    st.markdown("Collect photos with this device's camera: name the dataset and its classes, then take photos of "
                "each class one click at a time. The dataset is kept with your uploads.")
    with st.form("camera_new_dataset", border=False):
        name = st.text_input("Dataset name", placeholder="my-objects", max_chars=60)
        typed = st.text_area("Class names, one per line (at least 2)", placeholder="Class 1\nClass 2", height=110)
        create = st.form_submit_button("Create dataset and open the camera", type="primary",
                                       icon=":material/photo_camera:")
    if not create:
        return
    classes = [line.strip() for line in typed.splitlines() if line.strip()]
    try:
        folder = new_camera_dataset(current_workspace().datasets_dir(), name or "camera", classes)
    except StudioError as err:
        say_error(err)
        return
    set_current_dataset(folder)
    st.session_state[OPEN_NEXT] = True
    st.rerun()


def camera_section(dataset_root: Path) -> None:
    """On the report of a dataset this workspace owns: pick or type a class, take photos, see counts, undo."""
    root = Path(dataset_root)
    if not may_add_photos(root):
        return  # the shared sample or another session's data: never written to
    st.markdown("**Add photos from the camera**")
    try:
        counts = photo_counts(root)
        split_layout = bool(counts) and photo_folder(root, next(iter(counts))).parent != resolve_root(root)
    except (StudioError, OSError) as err:
        say_error(err)
        return
    show_last_message()
    if st.session_state.pop(OPEN_NEXT, False):
        st.session_state[CAMERA_ON] = True
    on = st.toggle("Use the camera", key=CAMERA_ON, help="The browser asks once for the camera; it works on an "
                   "https:// address or on localhost. Photos are saved on the server in this dataset's folders.")
    where = "train/<class>/" if split_layout else "<class>/"
    st.caption(" · ".join(f"{markdown_literal(name, 30)}: {count:,}" for name, count in counts.items())
               + f" — photos in each class folder; camera photos go to `{where}`.")
    if not on:
        return
    left, right = st.columns([2, 3])
    with left:
        class_name = class_picker(counts)
        recent_photos(root)
    with right:
        key = f"{SHOT}_{st.session_state.setdefault(SHOT, 0)}"
        label = (f"Take photos of {markdown_literal(class_name, 40)} ({counts.get(class_name, 0):,} so far)"
                 if class_name else "Take photos (type the new class's name first)")
        st.camera_input(label, key=key, on_change=_save, args=(str(root), class_name, key),
                        disabled=class_name is None)


def may_add_photos(root: Path) -> bool:
    """Only a dataset in this session's workspace, and never a sample (in a shared workspace tf-flowers is there)."""
    if not root.is_dir() or not current_workspace(sync_address=False).contains(root):
        return False
    resolved = root.resolve()
    shared = [samples.flowers_mini_dir(), samples.tf_flowers_dir()]
    return not any(s is not None and resolved.is_relative_to(Path(s).resolve()) for s in shared)


def class_picker(counts: dict[str, int]) -> str | None:
    """An existing class, or a new one typed in (checked as a folder name); None until there is a valid name."""
    if st.session_state.get(CLASS_KEY) not in [*counts, NEW_CLASS]:
        st.session_state.pop(CLASS_KEY, None)  # a class whose folder is gone
    choice = st.selectbox("Class", [*counts, NEW_CLASS], key=CLASS_KEY,
                          format_func=lambda c: shorten(c, 40) if c else "New class…")
    if choice != NEW_CLASS:
        return choice
    typed = st.text_input("New class name", key=NEW_CLASS_KEY, placeholder="e.g. Class 3", max_chars=100)
    if not typed.strip():
        return None
    try:
        name = check_class_name(typed)
    except StudioError as err:
        say_error(err)
        return None
    existing = next((c for c in counts if c.casefold() == name.casefold()), None)
    if existing is not None:
        st.caption(f"Photos go to the existing class {markdown_literal(existing, 40)}.")
        return existing
    return name


def recent_photos(root: Path) -> None:
    """The last photos taken into this dataset in this session, newest first, and an undo for the last one."""
    taken = [(Path(p), c) for r, p, c in st.session_state.get(TAKEN, []) if r == str(root) and Path(p).is_file()]
    if not taken:
        st.caption("One click per photo; each is saved at once.")
        return
    recent = taken[::-1][:RECENT]
    pictures = [(thumbnail(p, 96), c) for p, c in recent]
    st.image([p for p, _ in pictures if p is not None], width=72,
             caption=[shorten(c, 14) for p, c in pictures if p is not None])
    st.button(f"Undo the last photo ({markdown_literal(taken[-1][1], 30)})", key="camera_undo", icon=":material/undo:",
              on_click=_undo, args=(str(root),))


def say_error(err: Exception) -> None:
    """A refusal from core as the sentence it is: it quotes what the person typed (a class or dataset name), which
    must read as written, never as Markdown, so the whole sentence is escaped."""
    st.error(markdown_literal(str(err)))


def show_last_message() -> None:
    message = st.session_state.pop(MESSAGE, None)
    if message is not None:
        kind, text = message
        (st.success if kind == "ok" else st.error)(text, icon=":material/photo_camera:" if kind == "ok" else None)


def _save(root: str, class_name: str | None, key: str) -> None:
    """The camera's on_change: save the photo just taken, then give the widget a new key (a fresh camera).

    Only the camera on screen counts. Streamlit keeps a replaced widget's callback, and a browser that still holds
    the old camera's photo can send it again with a later click (measured in Chromium: a photo saved twice, 1 s
    apart); so an old key's call, or a photo already saved (same upload id), saves nothing.
    """
    if key != f"{SHOT}_{st.session_state.get(SHOT, 0)}":
        return
    shot = st.session_state.get(key)
    st.session_state[SHOT] = st.session_state.get(SHOT, 0) + 1
    saved = st.session_state.setdefault(SAVED_IDS, [])
    if shot is None or class_name is None or shot.file_id in saved:
        return
    saved[:] = [*saved[-49:], shot.file_id]
    try:
        if not may_add_photos(Path(root)):
            raise StudioError("Photos can be added only to a dataset of your own; start one on the Camera tab.")
        path = add_photo(Path(root), class_name, shot.getvalue(),
                         source=f"The photo for {shorten(class_name, 40)!r}")
    except StudioError as err:
        st.session_state[MESSAGE] = ("error", markdown_literal(str(err)))
        return
    taken = st.session_state.setdefault(TAKEN, [])
    taken[:] = [*taken[-(MAX_TAKEN - 1):], (root, str(path), class_name)]
    st.session_state[CLASS_KEY] = class_name  # a class typed in stays chosen, now from the list
    st.session_state[NEW_CLASS_KEY] = ""


def _undo(root: str) -> None:
    """Delete the last photo taken into this dataset that is still there (only a camera photo core.data.camera made)."""
    taken = st.session_state.get(TAKEN, [])
    for index in reversed([i for i, (r, _, _) in enumerate(taken) if r == root]):
        _, path, class_name = taken.pop(index)
        try:
            removed = remove_photo(Path(root), Path(path))
        except StudioError as err:
            st.session_state[MESSAGE] = ("error", markdown_literal(str(err)))
            return
        if removed:  # else it was deleted meanwhile (another tab): undo the one before it
            st.session_state[MESSAGE] = ("ok", f"Removed the last photo of {markdown_literal(class_name, 40)}.")
            return
