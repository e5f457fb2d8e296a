"""Camera photos as training data (Teachable Machine's way): a new dataset of named, empty classes, then one photo
at a time saved into a class folder, with an undo for the last one.

A photo is checked like an upload before a byte is kept: the class name must be a plain folder name, the bytes must
decode (core.data.images), and the dataset stays within the upload limits and the visitor's quota (core.data.ingest,
core.base.workspace, hosted mode). Each photo is written to a hidden temporary file and linked into place under a new
name, `<class>/camera-<UTC time>-<n>.jpg`, so a reader never sees half a photo and nothing is ever overwritten.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import tempfile
import time
import unicodedata
from pathlib import Path

import cv2

from core import StudioError
from core.data.datasets import IGNORED_NAMES, OVERRIDES_SUFFIX, SPLIT_ALIASES, resolve_root
from core.data.images import ImageError, decode_image, is_image_name
from core.data.ingest import COMPLETE_MARKER, FREE_SPACE_MARGIN, UploadLimits, upload_limits
from core.base.safetext import BIDI_CONTROLS
from core.base.workspace import safe_name, workspace_of

PHOTO_PREFIX = "camera-"
MAX_CLASS_CHARS = 100           # characters in a class name, as typed
MAX_CLASS_BYTES = 150           # its UTF-8 bytes: 100 CJK characters would pass 255 (file systems' limit)
MAX_CLASSES = 100               # classes a new camera dataset may start with
JPEG_QUALITY = 95               # only for a photo that arrives in another format (the browser sends JPEG)
# The names add_photo writes, and the only files remove_photo will delete.
PHOTO_NAME = re.compile(r"camera-\d{8}T\d{9}Z-\d+\.jpg")
# Control characters and what Windows refuses (a dataset folder may be zipped and opened there).
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"|?*/\\]')
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


# ------------------------------------------------------------------------------------------------ names
def check_class_name(name: str) -> str:
    """The class name as it will be a folder (NFC, outer spaces dropped); raises a StudioError saying what is wrong."""
    text = unicodedata.normalize("NFC", str(name)).strip()
    shown = repr(text[:40] + ("…" if len(text) > 40 else ""))
    if not text:
        raise StudioError("A class needs a name; type one (letters, digits, spaces, '-' or '_').")
    if len(text) > MAX_CLASS_CHARS or len(text.encode("utf-8", "replace")) > MAX_CLASS_BYTES:
        raise StudioError(f"The class name {shown} is {len(text)} characters long; keep it under "
                          f"{MAX_CLASS_CHARS} characters.")
    if "/" in text or "\\" in text or text in (".", ".."):
        raise StudioError(f"The class name {shown} contains a path ('/', '\\' or '..'); a class is one folder "
                          "name, so use letters, digits, spaces, '-' or '_'.")
    if _UNSAFE.search(text) or any(ch in BIDI_CONTROLS for ch in text):
        raise StudioError(f"The class name {shown} contains a control character or one of < > : \" | ? *; "
                          "use letters, digits, spaces, '-' or '_'.")
    if text.startswith(".") or text in IGNORED_NAMES or text.endswith(OVERRIDES_SUFFIX):
        raise StudioError(f"The class name {shown} would be a hidden or system folder that datasets ignore; "
                          "start it with a letter or digit.")
    if text.endswith("."):
        raise StudioError(f"The class name {shown} ends with a dot, which Windows drops from folder names; "
                          "remove it.")
    if text.lower() in SPLIT_ALIASES:
        raise StudioError(f"The class name {shown} is the name of a split folder (train, val, test); a class "
                          "with that name would turn the dataset into a split layout. Choose another name.")
    if text.split(".")[0].lower() in _WINDOWS_DEVICES:
        raise StudioError(f"The class name {shown} is a device name on Windows; choose another name.")
    return text


def class_names(root: Path) -> list[str]:
    """The dataset's classes as folders give them (train/, val/ and test/ together for a split layout), sorted."""
    names: set[str] = set()
    for group in _groups(resolve_root(root)):
        names.update(folder.name for folder in _class_folders(group))
    return sorted(names)


def photo_folder(root: Path, class_name: str) -> Path:
    """Where camera photos of `class_name` go: `<class>/`, or `train/<class>/` for a train/val/test layout."""
    base = resolve_root(root)
    splits = [f for f in _class_folders(base) if SPLIT_ALIASES.get(f.name.lower()) == "train"]
    return (splits[0] if splits else base) / check_class_name(class_name)


def photo_counts(root: Path) -> dict[str, int]:
    """Images per class in the folders camera photos go to (by name, not decoded: cheap enough for every rerun)."""
    counts = {}
    for name in class_names(root):
        folder = photo_folder(root, name)
        counts[name] = sum(1 for p in folder.iterdir() if p.is_file() and is_image_name(p.name)
                           and not p.name.startswith(".")) if folder.is_dir() else 0
    return counts


def _groups(base: Path) -> list[Path]:
    splits = [f for f in _class_folders(base) if f.name.lower() in SPLIT_ALIASES]
    return splits if any(SPLIT_ALIASES[f.name.lower()] == "train" for f in splits) else [base]


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.is_symlink() and p.name not in IGNORED_NAMES and not p.name.startswith("."))


# ------------------------------------------------------------------------------------------------ a new dataset
def new_camera_dataset(parent: Path, name: str, classes: list[str], quota_left: int | None = None) -> Path:
    """Create `<parent>/<name>-<8 hex>/<name>/` with one empty folder per class, and the completeness marker beside
    the inner folder, as an upload of a folder is kept (listed with the uploads, and the marker is not in the folder
    the scan reads); written in a hidden folder and renamed into place. Returns the outer folder.

    `quota_left`: bytes the visitor may still write; None reads it from the workspace `parent` lies in.
    """
    cleaned = [check_class_name(c) for c in classes]
    if len(cleaned) < 2:
        raise StudioError(f"A dataset needs at least 2 classes to train on; {len(cleaned)} "
                          f"{'was' if len(cleaned) == 1 else 'were'} given. Type one class name per line.")
    if len(cleaned) > MAX_CLASSES:
        raise StudioError(f"{len(cleaned)} classes were given; a camera dataset starts with at most {MAX_CLASSES}.")
    seen: dict[str, str] = {}
    for text in cleaned:
        if text.casefold() in seen:
            raise StudioError(f"The class {text!r} is given twice (as {seen[text.casefold()]!r} and {text!r}); "
                              "give each class once.")
        seen[text.casefold()] = text
    parent = Path(parent)
    left = _quota_left(parent, quota_left)
    if left is not None and left <= 0:
        raise StudioError("Your workspace is full, so no new dataset can be made. Delete datasets or runs you no "
                          "longer need on the Workspace page.")
    staging: Path | None = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".camera-", dir=parent))
        label = safe_name(name, "camera")
        for text in cleaned:
            (staging / label / text).mkdir(parents=True)
        (staging / COMPLETE_MARKER).write_text("complete\n", encoding="utf-8")
        target = parent / f"{label}-{secrets.token_hex(4)}"
        staging.rename(target)  # a fresh random suffix: never an existing folder
    except OSError as err:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise StudioError(f"The dataset could not be made in {parent} ({err.strerror or err}); free some disk "
                          "space or check the workspace folder's permissions.") from None
    return target


# ------------------------------------------------------------------------------------------------ photos
def add_photo(root: Path, class_name: str, data: bytes, now: float | None = None, *,
              source: str = "The camera photo", limits: UploadLimits | None = None,
              quota_left: int | None = None) -> Path:
    """Save one photo of `class_name` into the dataset at `root` (creating the class folder) and return its path.

    Refused with a StudioError, keeping nothing: a class name that is no plain folder name, bytes that do not
    decode (`source` names the photo in the message), a dataset that would pass the upload limits (`limits`,
    default core.data.ingest.upload_limits()) or a photo over the visitor's quota (`quota_left` bytes; None reads it
    from the workspace `root` lies in, as uploads do). `now` (seconds since the epoch) names the file.
    """
    folder = photo_folder(root, class_name)
    base = resolve_root(root).resolve()
    if not folder.resolve().is_relative_to(base) or folder.is_symlink():
        raise StudioError(f"The class folder {folder.name!r} is a link out of the dataset; photos are not saved "
                          "through links.")
    try:
        pixels = decode_image(bytes(data), source, served=True)  # decoded in the server: Classify's limits
    except ImageError as err:
        raise StudioError(f"{err} Nothing was saved; take the photo again.") from None
    if bytes(data[:3]) != b"\xff\xd8\xff":  # not a JPEG (the browser sends one): store it as one all the same
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        data = encoded.tobytes()
    del pixels
    _check_room(root, len(data), limits or upload_limits(), _quota_left(root, quota_left))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return _write_new(folder, bytes(data), time.time() if now is None else now)
    except OSError as err:
        raise StudioError(f"The photo could not be saved in {folder.name} ({err.strerror or err}); nothing was "
                          "kept. Free some disk space or check the workspace folder's permissions.") from None


def remove_photo(root: Path, path: Path) -> bool:
    """Delete one photo add_photo made in the dataset at `root` (the undo); True if it was there. Anything else (a
    file not named like a camera photo, outside the dataset's class folders, a link) is refused."""
    path = Path(path)
    base = resolve_root(root).resolve()
    if not PHOTO_NAME.fullmatch(path.name) or path.is_symlink():
        raise StudioError(f"{path.name} is not a camera photo taken here, so it is not deleted.")
    parent = path.parent.resolve()
    inside = parent.parent == base or (parent.parent.parent == base
                                       and SPLIT_ALIASES.get(parent.parent.name.lower()) == "train")
    if not inside:
        raise StudioError(f"{path.name} is not in this dataset's class folders, so it is not deleted.")
    try:
        (parent / path.name).unlink()
    except FileNotFoundError:
        return False  # already gone (a second click, another tab)
    return True


def _quota_left(path: Path, given: int | None) -> int | None:
    if given is not None:
        return given
    visitor = workspace_of(path)
    return visitor.quota_left() if visitor is not None else None


def _check_room(root: Path, size: int, limits: UploadLimits, quota_left: int | None) -> None:
    """Refuse a photo the dataset's upload limits, the visitor's quota or the disk have no room for."""
    files, held = 0, 0
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            try:
                held += os.lstat(os.path.join(dirpath, filename)).st_size
            except OSError:
                continue
            files += 1
    if files + 1 > limits.max_files:
        raise StudioError(f"The dataset holds {files:,} files, the most an upload may hold (file count limit); "
                          "nothing was saved. Start another dataset for more photos.")
    if held + size > limits.max_total_bytes:
        raise StudioError(f"The dataset holds {held / 1024**2:.0f} MB; this photo would take it over the "
                          f"{limits.max_total_bytes / 1024**2:.0f} MB limit on one upload (total size limit); nothing "
                          "was saved. Start another dataset for more photos.")
    if quota_left is not None and size > quota_left:
        raise StudioError(f"This photo ({size / 1024:.0f} KB) is over the {max(0, quota_left) / 1024:.0f} KB left of "
                          "your workspace's quota; nothing was saved. Delete datasets or runs you no longer need on "
                          "the Workspace page.")
    free = shutil.disk_usage(root).free
    if size + FREE_SPACE_MARGIN > free:
        raise StudioError(f"Not enough disk space for another photo ({free / 1024**2:.0f} MB free); nothing was "
                          "saved. Delete old datasets or runs.")


def _write_new(folder: Path, data: bytes, now: float) -> Path:
    """Write `data` to a hidden temporary file, then link it in as the first free `camera-<time>-<n>.jpg`: atomic
    (the whole photo or none) and never replacing a file (a link fails where the name exists)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"
    handle = tempfile.NamedTemporaryFile(dir=folder, prefix=".camera-", suffix=".tmp", delete=False)
    temporary = Path(handle.name)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        for n in range(1, 10_000):
            target = folder / f"{PHOTO_PREFIX}{stamp}-{n}.jpg"
            try:
                os.link(temporary, target)
            except FileExistsError:
                continue
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                if target.exists():  # a file system without hard links: rename, after looking (small race)
                    continue
                temporary.rename(target)
            return target
        raise StudioError(f"{folder.name} already holds 10,000 camera photos taken in the same millisecond.")
    finally:
        temporary.unlink(missing_ok=True)
