"""Turn browser uploads (a folder's files, or a .zip of a folder) into a dataset folder on disk.

Uploads come from a browser, so every name is treated as hostile: absolute paths, `..` parts, links and zip
bombs are refused, and system clutter (`__MACOSX/`, `.DS_Store`) is left out. The folder is named after the
upload plus a hash of its content, so uploading the same data twice reuses one folder and never changes the
files an earlier run was trained on.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

from core import StudioError
from core.datasets import IGNORED_NAMES
from core.workspace import datasets_dir, safe_name

MAX_FILES = 100_000
MAX_TOTAL_BYTES = 4 * 1024**3  # a zip's declared content; more than this is refused before extraction
MAX_COMPRESSION_RATIO = 200    # images barely compress: a huge ratio means a zip bomb
COMPLETE_MARKER = ".studio-complete"


def clean_relative_path(name: str) -> PurePosixPath | None:
    """A safe relative path for an uploaded name, or None for clutter to skip; raises on a hostile name."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return None
    if ".." in parts or (len(parts[0]) == 2 and parts[0][1] == ":"):
        raise StudioError(f"The upload holds the path '{name}', which points outside its folder; "
                          "upload a plain folder or zip.")
    if any(p in IGNORED_NAMES or p.startswith(".") for p in parts):
        return None  # __MACOSX/, .DS_Store, ._resource forks and other hidden files
    return PurePosixPath(*parts)


def common_top_folder(names: Sequence[str]) -> str | None:
    """The first path part shared by every name (the folder the person picked), if there is one."""
    split = [n.replace("\\", "/").lstrip("/").split("/") for n in names]
    tops = {parts[0] for parts in split}
    return tops.pop() if len(tops) == 1 and all(len(parts) > 1 for parts in split) else None


def ingest_files(files: Sequence[tuple[str, bytes]], name: str | None = None,
                 destination: Path | None = None) -> Path:
    """Write uploaded (relative name, bytes) pairs into a new dataset folder and return it."""
    if not files:
        raise StudioError("No files were uploaded; choose a folder that holds one sub-folder per class.")
    if len(files) > MAX_FILES:
        raise StudioError(f"{len(files):,} files is more than the {MAX_FILES:,} an upload may hold.")
    digest = hashlib.blake2b(digest_size=8)
    for rel, data in sorted(files, key=lambda f: f[0]):
        digest.update(rel.encode("utf-8", "surrogateescape") + b"\0" + hashlib.blake2b(data).digest())
    label = name or common_top_folder([f[0] for f in files]) or "upload"
    entries = ((rel, (lambda d=data: d)) for rel, data in files)
    return _materialise(entries, label, digest.hexdigest(), destination)


def ingest_zip(source: bytes | BinaryIO | Path, name: str = "upload", destination: Path | None = None) -> Path:
    """Unpack a .zip of a dataset folder into a new dataset folder (safely) and return it."""
    data = Path(source).read_bytes() if isinstance(source, Path) else source if isinstance(source, bytes) \
        else source.read()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise StudioError(f"{name} is not a valid .zip file; zip the dataset folder and upload it again.") from None
    with archive:
        members = _checked_members(archive, name)
        digest = hashlib.blake2b(data, digest_size=8).hexdigest()
        label = Path(name).stem if name.lower().endswith(".zip") else name
        entries = ((info.filename, (lambda i=info: archive.read(i))) for info in members)
        return _materialise(entries, label, digest, destination)


def _checked_members(archive: zipfile.ZipFile, name: str) -> list[zipfile.ZipInfo]:
    """The zip's regular files, after refusing links, bombs and oversized content."""
    infos = [i for i in archive.infolist() if not i.is_dir()]
    if len(infos) > MAX_FILES:
        raise StudioError(f"{name} holds {len(infos):,} files, more than the {MAX_FILES:,} an upload may hold.")
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        raise StudioError(f"{name} unpacks to {total / 1024**3:.1f} GB, over the "
                          f"{MAX_TOTAL_BYTES / 1024**3:.0f} GB limit; upload a smaller dataset.")
    if packed and total / packed > MAX_COMPRESSION_RATIO and total > 100 * 1024**2:
        raise StudioError(f"{name} unpacks to {total / packed:.0f} times its size, which images never do; "
                          "it looks like a zip bomb and was not unpacked.")
    for info in infos:
        if stat.S_ISLNK(info.external_attr >> 16):
            raise StudioError(f"{name} holds a symbolic link ({info.filename}); zip the image files themselves.")
    return infos


def _materialise(entries: Iterable[tuple[str, Callable[[], bytes]]], label: str, digest: str,
                 destination: Path | None) -> Path:
    """Write entries into `<destination>/<label>-<digest>/` via a temporary folder; reuse it if complete."""
    parent = Path(destination or datasets_dir())
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / f"{safe_name(label)}-{digest[:8]}"
    if (target / COMPLETE_MARKER).is_file():
        return target  # the same content was uploaded before
    staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=parent))
    try:
        written = 0
        for rel, read in entries:
            clean = clean_relative_path(rel)
            if clean is None:
                continue
            out = staging / clean
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(read())
            written += 1
        if not written:
            raise StudioError("The upload holds no usable files; it needs one sub-folder of images per class.")
        (staging / COMPLETE_MARKER).write_text("complete\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)  # a half-written folder from an interrupted upload
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def list_datasets(parent: Path | None = None) -> list[Path]:
    """Complete dataset folders in the workspace, newest first."""
    parent = Path(parent or datasets_dir())
    found = [p for p in parent.iterdir() if p.is_dir() and (p / COMPLETE_MARKER).is_file()] if parent.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def iter_tree_files(folder: Path) -> Iterator[Path]:
    """Every regular file below `folder` (used to fingerprint a dataset for caching)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield path


def fingerprint(folder: Path | str) -> str:
    """A cheap content signature (names, sizes, mtimes) so cached scans refresh when a folder changes."""
    digest = hashlib.blake2b(digest_size=8)
    root = Path(folder)
    if not root.exists():
        return "missing"
    for path in iter_tree_files(root):
        info = path.stat()
        digest.update(f"{path.relative_to(root)}|{info.st_size}|{info.st_mtime_ns}\n".encode("utf-8", "replace"))
    return digest.hexdigest()
