"""Turn browser uploads (a folder's files, or a .zip of a folder) into a dataset folder on disk.

Uploads come from a browser, so every name is treated as hostile: absolute paths, `..` parts, links and zip
bombs are refused, names are cleaned of characters no file system should get, and system clutter (`__MACOSX/`,
`.DS_Store`) is left out. Every name is checked before the first byte is written, and files are written into a
temporary folder beside the target that is renamed at the end, so a refused or failed upload leaves nothing
behind. Zip entries are streamed to disk a megabyte at a time, with the running total checked against the
upload limit and the visitor's quota (core.base.workspace, hosted mode) before each chunk is kept: no entry is ever
whole in memory, and a zip whose headers lie about its sizes is stopped at the limit, not after it. The folder is named after the upload plus a hash of its content, so uploading the same data twice
reuses one folder and never changes the files an earlier run was trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

from core import StudioError
from core.data.datasets import IGNORED_NAMES, OVERRIDES_SUFFIX
from core.base.workspace import datasets_dir, safe_name, workspace_of

# Defaults; each can be changed per deployment with the environment variable named beside it.
MAX_FILES = 50_000                 # STUDIO_MAX_UPLOAD_FILES: files in one upload (folder or zip)
MAX_TOTAL_BYTES = 2 * 1024**3      # STUDIO_MAX_UPLOAD_MB: bytes one upload may unpack to, all files together
MAX_COMPRESSION_RATIO = 100        # images barely compress (JPEG/PNG ~1:1): a huge ratio means a zip bomb
RATIO_CHECK_FROM_BYTES = 50 * 1024**2  # tiny zips of text or flat test images may compress well; that is harmless
MAX_DEPTH = 32                     # folders inside folders; deeper trees are no dataset and can overflow PATH_MAX
MAX_PART_BYTES = 150               # one file or folder name, in UTF-8 bytes (file systems allow 255)
FREE_SPACE_MARGIN = 64 * 1024**2   # keep this much disk free after unpacking, for run folders and logs
COMPLETE_MARKER = ".studio-complete"
COPY_CHUNK = 1024**2               # bytes read from a zip entry and written at a time

_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')  # control characters, and what Windows refuses


@dataclass(frozen=True)
class UploadLimits:
    """The caps on one upload, as the Data page shows them and ingestion enforces them."""

    max_files: int
    max_total_bytes: int
    max_compression_ratio: float
    max_depth: int = MAX_DEPTH

    def describe(self) -> str:
        """One sentence for the Data page."""
        return (f"An upload may hold up to {self.max_files:,} files and {_size(self.max_total_bytes)} in all "
                f"(unpacked), folders at most {self.max_depth} deep; a .zip that unpacks to more than "
                f"{self.max_compression_ratio:.0f} times its size is refused as a zip bomb.")


def upload_limits() -> UploadLimits:
    """The limits in force: the defaults above, or $STUDIO_MAX_UPLOAD_FILES / $STUDIO_MAX_UPLOAD_MB."""
    return UploadLimits(max_files=_env_int("STUDIO_MAX_UPLOAD_FILES", MAX_FILES),
                        max_total_bytes=_env_int("STUDIO_MAX_UPLOAD_MB", MAX_TOTAL_BYTES // 1024**2, 1024**2),
                        max_compression_ratio=MAX_COMPRESSION_RATIO)


def _env_int(name: str, default: int, unit: int = 1) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default * unit
    try:
        number = int(value)
    except ValueError:
        raise StudioError(f"{name}={value!r} is not a whole number; set it to e.g. {default}.") from None
    if number <= 0:
        raise StudioError(f"{name}={value!r} must be above 0.")
    return number * unit


def _size(n: float) -> str:
    return f"{n / 1024**3:.1f} GB" if n >= 1024**3 else f"{n / 1024**2:.0f} MB"


# ------------------------------------------------------------------------------------------------ names
def clean_relative_path(name: str) -> PurePosixPath | None:
    """A safe relative path for an uploaded name, or None for clutter to skip; raises on a hostile name."""
    unified = name.replace("\\", "/")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if not parts:
        return None
    if unified.startswith("/") or (len(parts[0]) == 2 and parts[0][1] == ":") or ".." in parts:
        raise StudioError(f"The upload holds the path '{_shown(name)}', which points outside its folder; "
                          "upload a plain folder or zip.")
    if any(p in IGNORED_NAMES or p.startswith(".") for p in parts):
        return None  # __MACOSX/, .DS_Store, ._resource forks and other hidden files
    if len(parts) > MAX_DEPTH:
        raise StudioError(f"The upload holds '{_shown(name)}', nested {len(parts) - 1} folders deep; more than "
                          f"{MAX_DEPTH} is refused. Upload a flatter folder (one sub-folder per class).")
    return PurePosixPath(*(_clean_part(p) for p in parts))


def _clean_part(part: str) -> str:
    """One file or folder name made safe: no control or reserved characters, valid UTF-8, not too long."""
    text = unicodedata.normalize("NFC", part).encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> ?
    text = _UNSAFE_CHARS.sub("_", text).rstrip(" .")  # Windows drops trailing dots and spaces
    if len(text.encode("utf-8")) > MAX_PART_BYTES:
        stem, dot, suffix = text.rpartition(".")
        suffix = dot + suffix if dot and 0 < len(suffix) <= 10 else ""
        stem = text[: len(text) - len(suffix)]
        budget = MAX_PART_BYTES - len(suffix.encode("utf-8"))
        text = stem.encode("utf-8")[:budget].decode("utf-8", "ignore") + suffix
    return text if text not in ("", ".", "..") else "_"


def _shown(name: str) -> str:
    """A hostile name, printable and short, for an error message."""
    return _UNSAFE_CHARS.sub("?", name.encode("utf-8", "replace").decode("utf-8"))[:200]


def plan_paths(names: Sequence[str]) -> list[PurePosixPath | None]:
    """Clean every name before anything is written: None for clutter, a unique safe path for the rest.

    Two names that clean to the same path (or a zip that repeats a name) are both kept, the later with a
    `~2` suffix; a name used both as a file and as a folder is refused, since one would overwrite the other.
    """
    planned: list[PurePosixPath | None] = []
    files: set[str] = set()
    folders: set[str] = set()
    for name in names:
        path = clean_relative_path(name)
        if path is not None:
            path = _unique(path, files)
            key = path.as_posix()
            parents = {p.as_posix() for p in path.parents if p.as_posix() != "."}
            clash = key if key in folders else next((p for p in sorted(parents) if p in files), None)
            if clash is not None:
                raise StudioError(f"The upload holds both a file and a folder named '{_shown(clash)}'; "
                                  "rename one of them and upload again.")
            files.add(key)
            folders.update(parents)
        planned.append(path)
    return planned


def _unique(path: PurePosixPath, taken: set[str]) -> PurePosixPath:
    if path.as_posix() not in taken:
        return path
    for n in range(2, len(taken) + 3):
        candidate = path.with_name(f"{path.stem}~{n}{path.suffix}")
        if candidate.as_posix() not in taken:
            return candidate
    raise AssertionError("unreachable: more candidates than taken names")


def common_top_folder(names: Sequence[str]) -> str | None:
    """The first path part shared by every name (the folder the person picked), if there is one."""
    split = [n.replace("\\", "/").lstrip("/").split("/") for n in names]
    tops = {parts[0] for parts in split}
    return tops.pop() if len(tops) == 1 and all(len(parts) > 1 for parts in split) else None


# ------------------------------------------------------------------------------------------------ uploads
def ingest_files(files: Sequence[tuple[str, bytes]], name: str | None = None,
                 destination: Path | None = None) -> Path:
    """Write uploaded (relative name, bytes) pairs into a new dataset folder and return it."""
    if not files:
        raise StudioError("No files were uploaded; choose a folder that holds one sub-folder per class.")
    limits = upload_limits()
    if len(files) > limits.max_files:
        raise StudioError(f"The upload holds {len(files):,} files, more than the {limits.max_files:,} an upload "
                          "may hold (file count limit); upload a smaller folder.")
    total = sum(len(data) for _, data in files)
    if total > limits.max_total_bytes:
        raise StudioError(f"The upload holds {_size(total)}, over the {_size(limits.max_total_bytes)} limit on "
                          "one upload (total size limit); upload a smaller folder.")
    planned = plan_paths([rel for rel, _ in files])
    digest = hashlib.blake2b(digest_size=8)
    for rel, data in sorted(files, key=lambda f: f[0]):
        digest.update(rel.encode("utf-8", "surrogatepass") + b"\0" + hashlib.blake2b(data).digest())
    label = name or common_top_folder([f[0] for f in files]) or "upload"
    entries = [(path, rel, (lambda handle, budget, d=data: _write_bytes(handle, d, budget)))
               for path, (rel, data) in zip(planned, files) if path is not None]
    return _materialise(entries, label, digest.hexdigest(), destination, total)


def ingest_zip(source: bytes | BinaryIO | Path, name: str = "upload", destination: Path | None = None) -> Path:
    """Unpack a .zip of a dataset folder into a new dataset folder (safely) and return it.

    `source` may be the bytes, a path, or a seekable binary file (Streamlit's UploadedFile): a file is read in
    place, chunk by chunk, so a large upload is never copied whole in memory.
    """
    shown = _shown(name)
    with zip_stream(source) as stream:
        digest = _stream_digest(stream)
        try:
            archive = zipfile.ZipFile(stream)
        except Exception:  # hostile bytes make zipfile raise many types (BadZipFile, ValueError, EOFError, ...)
            raise StudioError(f"{shown} is not a valid .zip file; zip the dataset folder and upload it again.") \
                from None
        with archive:
            members = _checked_members(archive, shown)
            planned = plan_paths([info.filename for info in members])
            label = Path(name).stem if name.lower().endswith(".zip") else name
            entries = [(path, info.filename, (lambda handle, budget, i=info: _copy_member(archive, i, shown,
                                                                                           handle, budget)))
                       for path, info in zip(planned, members) if path is not None]
            return _materialise(entries, label, digest, destination, sum(i.file_size for i in members))


@contextlib.contextmanager
def zip_stream(source: bytes | BinaryIO | Path) -> Iterator[BinaryIO]:
    """A seekable binary stream over `source`, rewound, without copying bytes or a seekable file."""
    if isinstance(source, Path):
        with open(source, "rb") as handle:
            yield handle
    elif isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source)
    elif source.seekable():
        source.seek(0)
        yield source
    else:  # a pipe or socket: zipfile needs to seek, so this one is read whole
        yield io.BytesIO(source.read())


def _stream_digest(stream: BinaryIO, chunk: int = 1024**2) -> str:
    """blake2b (8 bytes) of the whole stream, read in chunks, leaving it rewound."""
    digest = hashlib.blake2b(digest_size=8)
    stream.seek(0)
    while block := stream.read(chunk):
        digest.update(block)
    stream.seek(0)
    return digest.hexdigest()


def _checked_members(archive: zipfile.ZipFile, name: str) -> list[zipfile.ZipInfo]:
    """The zip's regular files, after refusing links, encryption, bombs and oversized content."""
    limits = upload_limits()
    try:
        infos = [i for i in archive.infolist() if not i.is_dir()]
    except Exception:
        raise StudioError(f"{name} is not a valid .zip file; zip the dataset folder and upload it again.") from None
    if len(infos) > limits.max_files:
        raise StudioError(f"{name} holds {len(infos):,} files, more than the {limits.max_files:,} an upload may "
                          "hold (file count limit); upload a smaller dataset.")
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos)
    if total > limits.max_total_bytes:
        raise StudioError(f"{name} unpacks to {_size(total)}, over the {_size(limits.max_total_bytes)} limit on "
                          "one upload (total size limit); upload a smaller dataset.")
    if total > RATIO_CHECK_FROM_BYTES and total / max(packed, 1) > limits.max_compression_ratio:
        raise StudioError(f"{name} unpacks to {total / max(packed, 1):.0f} times its size (compression ratio "
                          f"limit {limits.max_compression_ratio:.0f}), which images never do; it looks like a zip "
                          "bomb and was not unpacked.")
    for info in infos:
        if stat.S_ISLNK(info.external_attr >> 16):
            raise StudioError(f"{name} holds a symbolic link ({_shown(info.filename)}); zip the image files "
                              "themselves.")
        if info.flag_bits & 0x1:
            raise StudioError(f"{name} is password-protected ({_shown(info.filename)}); zip it without a password.")
    return infos


class OverBudget(Exception):
    """Writing the next chunk would pass what this upload may still write (said by _materialise)."""


def _write_bytes(handle: BinaryIO, data: bytes, budget: int) -> int:
    if len(data) > budget:
        raise OverBudget()
    handle.write(data)
    return len(data)


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, handle: BinaryIO, budget: int) -> int:
    """Stream one entry into `handle` a chunk at a time, never past `budget` bytes; returns the bytes written.
    zipfile stops at the declared size and checks the CRC at the end, so a lying header fails here."""
    written = 0
    try:
        with archive.open(info) as source:
            while chunk := source.read(COPY_CHUNK):
                written += len(chunk)
                if written > budget:
                    raise OverBudget()
                handle.write(chunk)
    except (OverBudget, OSError):
        raise
    except Exception as err:  # BadZipFile (CRC), zlib.error, NotImplementedError (method), EOFError, ...
        raise StudioError(f"{name}: the entry {_shown(info.filename)} cannot be unpacked "
                          f"({type(err).__name__}: {str(err)[:120]}); zip the folder again.") from None
    return written


Writer = Callable[[BinaryIO, int], int]  # (open file, bytes it may still write) -> bytes written


def _materialise(entries: Iterable[tuple[PurePosixPath, str, Writer]], label: str, digest: str,
                 destination: Path | None, expected_bytes: int) -> Path:
    """Write entries (clean path, name as uploaded, writer) into `<destination>/<label>-<digest>/` via a temporary
    folder; reuse it if complete. The bytes written so far are checked against the upload limit and the visitor's
    quota before each chunk is kept."""
    parent = Path(destination or datasets_dir())
    visitor = workspace_of(parent)
    quota_left = visitor.quota_left() if visitor is not None else None
    limit = upload_limits().max_total_bytes
    budget, rule, advice = limit, f"the {_size(limit)} limit on one upload (total size limit)", "upload less"
    if quota_left is not None and quota_left < budget:
        budget, rule = quota_left, f"the {_size(quota_left)} left of your workspace's quota"
        advice = "delete datasets or runs you no longer need on the Workspace page, or upload less"
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(parent, err) from None
    target = parent / f"{safe_name(label)}-{digest[:8]}"
    if (target / COMPLETE_MARKER).is_file():
        return target  # the same content was uploaded before
    if expected_bytes > budget:
        raise StudioError(f"The upload unpacks to {_size(expected_bytes)}, over {rule}; nothing was kept: "
                          f"{advice}.")
    free = shutil.disk_usage(parent).free
    if expected_bytes + FREE_SPACE_MARGIN > free:
        raise StudioError(f"Not enough disk space for this upload: it needs {_size(expected_bytes)} and "
                          f"{_size(free)} is free in {parent}. Delete old datasets or runs, or upload less.")
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=parent))
        inside = staging.resolve()
        written = 0
        total = 0
        for clean, uploaded_name, write in entries:
            out = staging / clean
            if not out.resolve().is_relative_to(inside):  # belt and braces: plan_paths already refused this
                raise StudioError(f"The upload holds the path '{clean}', which points outside its folder.")
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "xb") as handle:  # never follows or replaces anything already there
                try:
                    total += write(handle, budget - total)
                except OverBudget:
                    raise StudioError(f"The upload passed {rule} while unpacking {_shown(uploaded_name)} (it "
                                      f"holds more than its headers declared); nothing was kept: {advice}.") \
                        from None
            written += 1
        if not written:
            raise StudioError("The upload holds no usable files; it needs one sub-folder of images per class.")
        (staging / COMPLETE_MARKER).write_text("complete\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)  # a half-written folder from an interrupted upload
        staging.rename(target)
    except OSError as err:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise _write_error(parent, err) from None
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _write_error(where: Path, err: OSError) -> StudioError:
    """A disk-full or permission error while saving an upload, as a sentence (nothing half-written is kept)."""
    reason = err.strerror or type(err).__name__
    return StudioError(f"The upload could not be saved in {where} ({reason}); nothing was kept. Free some disk "
                       "space or check the workspace folder's permissions, then upload again.")


# ------------------------------------------------------------------------------------------------ listing
def list_datasets(parent: Path | None = None) -> list[Path]:
    """Complete dataset folders in the workspace, newest first."""
    parent = Path(parent or datasets_dir())
    found = [p for p in parent.iterdir() if p.is_dir() and (p / COMPLETE_MARKER).is_file()] if parent.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def iter_tree_files(folder: Path) -> Iterator[Path]:
    """Every regular file below `folder` (used to fingerprint a dataset for caching), overrides files aside: a
    relabel must not make the whole folder look changed and be scanned again."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.endswith(OVERRIDES_SUFFIX):
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


def dataset_folder(data: Path | str, destination: Path | None = None) -> Path:
    """The dataset folder a command line names: a folder as it is, or a .zip unpacked through the same checks as
    an upload (names, links, bombs, sizes, streamed to disk) into the workspace's datasets folder. The same zip
    twice gives the same folder, unpacked once."""
    path = Path(data)
    if path.suffix.lower() != ".zip" or not path.is_file():
        return path
    return ingest_zip(path, path.name, destination=destination)
