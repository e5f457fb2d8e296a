"""A folder picked in the browser: its manifest of picked files, and where each of them ended up.

The Data page's folder picker packs the picked folder into one .zip in the browser (one request, so no file
can be dropped on the way) and adds a manifest, `.studio-manifest.json`, naming every file the person picked and
its size, including files the browser could not read. After unpacking, `account_upload` puts each picked file
in exactly one pile, so the page can say what happened to all of them:

- received: it arrived and is an image in the dataset (duplicate copies included; the report lists those),
- skipped: it arrived but is no image we read, a system or hidden file, or lies outside the class folders,
- unreadable: it arrived but the image is damaged or cannot be decoded,
- missing: it never arrived (the browser could not read it, or it is not in the archive).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Sequence

from core import StudioError
from core.data.datasets import Dataset
from core.data.ingest import ingest_zip, plan_paths, upload_limits, zip_stream

MANIFEST_NAME = ".studio-manifest.json"  # hidden, so ingestion leaves it out of the dataset folder
MANIFEST_FORMAT = "efficientnet-studio/folder-manifest"
MANIFEST_MAX_BYTES = 64 * 1024**2  # 50,000 entries of long paths fit in a tenth of this
SHOWN_NAMES = 10  # names listed in a message before "and N more"


@dataclass(frozen=True)
class PickedFile:
    """One file the person picked: its path as the browser gave it (picked folder first), size, read error."""

    path: str
    size: int
    error: str | None = None  # why the browser could not read it; such a file is not in the archive


@dataclass(frozen=True)
class FileNote:
    """A picked file that did not become a training image, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class UploadAccount:
    """Every picked file in exactly one pile: received, skipped, unreadable or missing."""

    picked: int
    received: int
    skipped: tuple[FileNote, ...] = ()
    unreadable: tuple[FileNote, ...] = ()
    missing: tuple[FileNote, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether every picked file arrived (skipped and unreadable ones did arrive)."""
        return not self.missing

    def counts(self) -> str:
        """'2,000 received, 12 skipped, 8 unreadable, 0 missing'."""
        return (f"{self.received:,} received, {len(self.skipped):,} skipped, {len(self.unreadable):,} unreadable, "
                f"{len(self.missing):,} missing")

    def summary(self) -> str:
        """One paragraph for the Data page: the four counts, then the missing (and why) and unreadable files."""
        if self.complete:
            text = f"All {self.picked:,} picked files arrived: {self.counts()}."
        else:
            text = (f"{len(self.missing):,} of the {self.picked:,} picked files did not arrive: {self.counts()}. "
                    f"Missing: {_names(self.missing, reasons=True)}. Pick the folder again to send them, or upload "
                    "it as a .zip.")
        if self.unreadable:
            text += f" Unreadable, so left out: {_names(self.unreadable)}."
        return text


def _names(notes: Sequence[FileNote], reasons: bool = False) -> str:
    """'a.jpg, b.jpg and 3 more' (with each reason in brackets when asked)."""
    shown = [f"{n.path} ({n.reason.rstrip('.')})" if reasons else n.path for n in notes[:SHOWN_NAMES]]
    return ", ".join(shown) + (f" and {len(notes) - SHOWN_NAMES:,} more" if len(notes) > SHOWN_NAMES else "")


# ------------------------------------------------------------------------------------------------ manifest
def manifest_json(picked: Sequence[PickedFile], folder: str) -> bytes:
    """The manifest as the browser writes it (tests use this to build what the picker sends)."""
    files: list[dict[str, Any]] = []
    for f in picked:
        files.append({"path": f.path, "size": f.size, **({"error": f.error} if f.error else {})})
    return json.dumps({"format": MANIFEST_FORMAT, "version": 1, "folder": folder, "files": files}).encode("utf-8")


def parse_manifest(data: bytes) -> list[PickedFile]:
    """The picked files a manifest lists; raises a StudioError on anything but a well-formed manifest."""
    damaged = StudioError("The folder upload's list of picked files is damaged, so it cannot be checked; pick "
                          "the folder again, or upload it as a .zip.")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise damaged from None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT \
            or document.get("version") != 1 or not isinstance(document.get("files"), list):
        raise damaged
    if len(document["files"]) > upload_limits().max_files:
        raise StudioError(f"The picked folder holds {len(document['files']):,} files, more than the "
                          f"{upload_limits().max_files:,} an upload may hold (file count limit); upload a smaller "
                          "folder.")
    picked = []
    for entry in document["files"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) \
                or not isinstance(entry.get("size"), int) or not isinstance(entry.get("error") or "", str):
            raise damaged
        picked.append(PickedFile(entry["path"], entry["size"], entry.get("error") or None))
    return picked


def read_manifest(archive: zipfile.ZipFile) -> list[PickedFile] | None:
    """The manifest inside a folder archive, or None for a .zip made elsewhere (which has none)."""
    try:
        info = archive.getinfo(MANIFEST_NAME)
    except KeyError:
        return None
    if info.file_size > MANIFEST_MAX_BYTES:
        raise StudioError(f"The folder upload's list of picked files is {info.file_size / 1024**2:.0f} MB, over "
                          f"the {MANIFEST_MAX_BYTES // 1024**2} MB a list may take; upload the folder as a .zip.")
    try:
        data = archive.read(info)
    except Exception as err:  # BadZipFile (CRC), zlib.error, EOFError, ...
        raise StudioError(f"The folder upload's list of picked files cannot be unpacked ({type(err).__name__}); "
                          "pick the folder again.") from None
    return parse_manifest(data)


# ------------------------------------------------------------------------------------------------ ingest
@dataclass(frozen=True)
class FolderUpload:
    """What a folder archive from the browser became: the dataset folder, the picked files, the arrived names."""

    folder: Path
    picked: tuple[PickedFile, ...]
    arrived: tuple[str, ...]  # the archive's file names in order, as ingestion planned them


def ingest_folder_archive(source: bytes | BinaryIO | Path, name: str, destination: Path | None = None) -> FolderUpload:
    """Unpack the browser's archive of a picked folder (see module docstring) and read its manifest."""
    with zip_stream(source) as stream:
        try:
            archive = zipfile.ZipFile(stream)
        except Exception:  # hostile bytes raise many types; ingest_zip below says what is wrong, in its words
            archive = None
        arrived: tuple[str, ...] = ()
        picked = None
        if archive is not None:
            with archive:
                arrived = tuple(i.filename for i in archive.infolist() if not i.is_dir())
                picked = read_manifest(archive)
        folder = ingest_zip(stream, name, destination)
    if picked is None:  # no manifest: what arrived is all that can be known about what was picked
        picked = [PickedFile(n, 0) for n in arrived if n != MANIFEST_NAME]
    return FolderUpload(folder, tuple(picked), arrived)


# ------------------------------------------------------------------------------------------------ accounting
def account_upload(picked: Sequence[PickedFile], arrived: Sequence[str], folder: Path | str,
                   dataset: Dataset) -> UploadAccount:
    """Put each picked file in one pile by following it from the archive to the dataset scan.

    `arrived` is the archive's file names in order (ingestion cleans them with `plan_paths`, so the same call
    here finds where each one was written inside `folder`); `dataset` is `folder` scanned, whose paths are
    relative to its root (`folder` itself or a wrapper folder inside it).
    """
    planned = dict(zip(arrived, plan_paths(list(arrived))))
    root = PurePosixPath(Path(dataset.root).as_posix()).relative_to(PurePosixPath(Path(folder).as_posix()))
    report = dataset.report
    images = {s.path for s in dataset.samples} | {p for group in report.duplicates for p in group}
    unreadable_why = {u["path"]: u["reason"] for u in report.unreadable}
    skipped_why = {s["path"]: s["reason"] for s in report.skipped}
    skipped_folders = {p: why for p, why in skipped_why.items() if p.endswith("/")}

    received = 0
    skipped: list[FileNote] = []
    unreadable: list[FileNote] = []
    missing: list[FileNote] = []
    for f in picked:
        if f.error:
            missing.append(FileNote(f.path, f"your browser could not read it: {f.error}"))
            continue
        if f.path not in planned:
            missing.append(FileNote(f.path, "not in the upload"))
            continue
        written = planned[f.path]
        if written is None:
            skipped.append(FileNote(f.path, "system or hidden file"))
            continue
        if not written.is_relative_to(root):
            skipped.append(FileNote(f.path, "outside the dataset folder"))
            continue
        rel = written.relative_to(root).as_posix()
        folder_why = next((why for p, why in skipped_folders.items() if rel.startswith(p)), None)
        if rel in unreadable_why:
            unreadable.append(FileNote(f.path, unreadable_why[rel]))
        elif rel in skipped_why or folder_why is not None:
            skipped.append(FileNote(f.path, skipped_why.get(rel) or folder_why or ""))
        elif rel in images:
            received += 1
        else:
            skipped.append(FileNote(f.path, "not part of the dataset the scan found"))
    return UploadAccount(len(picked), received, _by_path(skipped), _by_path(unreadable), _by_path(missing))


def _by_path(notes: list[FileNote]) -> tuple[FileNote, ...]:
    return tuple(sorted(notes, key=lambda note: note.path))
