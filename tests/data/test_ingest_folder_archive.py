"""Folder uploads packed by the browser: the manifest, the accounting of every picked file, and zip reading
from a file object (no whole copy in memory)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from core import StudioError
from core.data.datasets import scan
from core.data.ingest import ingest_zip
from core.data.upload_manifest import (MANIFEST_NAME, FileNote, PickedFile, UploadAccount, account_upload,
                                  ingest_folder_archive, manifest_json, parse_manifest)


def jpeg(seed: int) -> bytes:
    import cv2

    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", pixels)[1].tobytes()


def browser_archive(files: dict[str, bytes], unreadable_by_browser: dict[str, str] | None = None,
                    listed_but_lost: tuple[str, ...] = ()) -> bytes:
    """What the folder picker sends: stored entries in picked order, then the manifest of everything picked."""
    unreadable_by_browser = unreadable_by_browser or {}
    picked = [PickedFile(path, len(data)) for path, data in files.items()]
    picked += [PickedFile(path, 10, error) for path, error in unreadable_by_browser.items()]
    picked += [PickedFile(path, 10) for path in listed_but_lost]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        folder = next(iter(files)).split("/")[0]
        archive.writestr(MANIFEST_NAME, manifest_json(picked, folder))
    return buffer.getvalue()


def account_for(tmp_path: Path, archive: bytes) -> UploadAccount:
    upload = ingest_folder_archive(io.BytesIO(archive), "pick.zip", destination=tmp_path / "datasets")
    return account_upload(upload.picked, upload.arrived, upload.folder, scan(upload.folder))


def test_every_picked_file_lands_in_exactly_one_pile(tmp_path: Path) -> None:
    files = {f"pets/{cls}/{i}.jpg": jpeg(10 * c + i) for c, cls in enumerate(["cat", "dog"]) for i in range(5)}
    files["pets/cat/broken.jpg"] = b"\xff\xd8 not really a jpeg"
    files["pets/dog/notes.txt"] = b"taken in May"
    files["pets/.DS_Store"] = b"\0\0"
    files["pets/readme.md"] = b"# pets"
    archive = browser_archive(files, unreadable_by_browser={"pets/dog/locked.jpg": "NotReadableError: denied"},
                              listed_but_lost=("pets/cat/lost.jpg",))

    account = account_for(tmp_path, archive)

    assert (account.picked, account.received) == (16, 10)
    assert {n.path for n in account.skipped} == {"pets/dog/notes.txt", "pets/.DS_Store", "pets/readme.md"}
    assert [n.path for n in account.unreadable] == ["pets/cat/broken.jpg"]
    assert [n.path for n in account.missing] == ["pets/cat/lost.jpg", "pets/dog/locked.jpg"]  # sorted
    assert account.received + len(account.skipped) + len(account.unreadable) + len(account.missing) == account.picked
    assert not account.complete
    summary = account.summary()
    assert "2 of the 16 picked files did not arrive: 10 received, 3 skipped, 1 unreadable, 2 missing." in summary
    assert "Missing: pets/cat/lost.jpg (not in the upload), pets/dog/locked.jpg (your browser could not read it: " \
           "NotReadableError: denied)." in summary
    assert "Unreadable, so left out: pets/cat/broken.jpg." in summary
    reasons = {n.path: n.reason for n in account.skipped}
    assert reasons["pets/.DS_Store"] == "system or hidden file"
    assert "not an image type" in reasons["pets/dog/notes.txt"]
    assert "not inside a class folder" in reasons["pets/readme.md"]


def test_a_complete_upload_says_so_and_names_the_unreadable(tmp_path: Path) -> None:
    files = {f"set/{cls}/{i}.jpg": jpeg(10 * c + i) for c, cls in enumerate(["a", "b"]) for i in range(3)}
    files["set/a/zero.jpg"] = b""
    account = account_for(tmp_path, browser_archive(files))
    assert account.complete
    assert account.summary().startswith("All 7 picked files arrived: 6 received, 0 skipped, 1 unreadable, 0 missing.")
    assert account.summary().endswith("Unreadable, so left out: set/a/zero.jpg.")


def test_split_folders_duplicates_and_cleaned_names_are_followed(tmp_path: Path) -> None:
    same = jpeg(1)
    files = {"flowers/train/rose/1.jpg": same, "flowers/train/rose/copy.jpg": same,  # duplicate: still received
             "flowers/train/tulip/a:b.jpg": jpeg(2),  # ':' is cleaned to '_' on disk
             "flowers/val/rose/2.jpg": jpeg(3), "flowers/val/tulip/3.jpg": jpeg(4),
             "flowers/extra/x.jpg": jpeg(5)}  # a folder beside train/ is skipped as a whole
    account = account_for(tmp_path, browser_archive(files))
    assert (account.picked, account.received, len(account.missing), len(account.unreadable)) == (6, 5, 0, 0)
    assert account.skipped == (FileNote("flowers/extra/x.jpg", "folder beside train/ is not a split; ignored"),)


def test_a_zip_without_manifest_accounts_for_what_arrived(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(2):
            archive.writestr(f"x/a/{i}.jpg", jpeg(i))
            archive.writestr(f"x/b/{i}.jpg", jpeg(10 + i))
    account = account_for(tmp_path, buffer.getvalue())
    assert (account.picked, account.received, account.complete) == (4, 4, True)


def test_a_damaged_or_oversized_manifest_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in (b"{not json", b'{"format": "something else", "version": 1, "files": []}',
                b'{"format": "efficientnet-studio/folder-manifest", "version": 1, "files": [{"path": 3}]}',
                b"\xff\xfe"):
        with pytest.raises(StudioError, match="list of picked files is damaged"):
            parse_manifest(bad)
    monkeypatch.setenv("STUDIO_MAX_UPLOAD_FILES", "3")
    with pytest.raises(StudioError, match="4 files, more than the 3"):
        parse_manifest(manifest_json([PickedFile(f"f/{i}.jpg", 1) for i in range(4)], "f"))
    assert not (tmp_path / "datasets").exists()


def test_missing_names_are_listed_up_to_ten_then_counted() -> None:
    missing = tuple(FileNote(f"f/a/{i}.jpg", "not in the upload") for i in range(13))
    summary = UploadAccount(picked=20, received=7, missing=missing).summary()
    assert "f/a/9.jpg (not in the upload) and 3 more." in summary and "f/a/10.jpg" not in summary
    assert "Pick the folder again" in summary


class CountingReads(io.BytesIO):
    """A seekable upload that records how much each read asks for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.largest = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.largest = max(self.largest, len(chunk))
        return chunk


def test_zip_from_a_file_object_is_read_in_place_and_named_as_from_bytes(tmp_path: Path) -> None:
    files = {f"big/{cls}/{i}.bin": bytes([i]) * 700_000 for cls in ("a", "b") for i in range(2)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    data = buffer.getvalue()
    stream = CountingReads(data)
    from_stream = ingest_zip(stream, "big.zip", destination=tmp_path / "one")
    assert stream.largest <= 1024**2 < len(data)  # never read whole
    from_bytes = ingest_zip(data, "big.zip", destination=tmp_path / "two")
    assert from_stream.name == from_bytes.name  # the same content hash, however it was passed
    assert (from_stream / "big" / "a" / "1.bin").read_bytes() == files["big/a/1.bin"]


def test_a_damaged_archive_is_refused_in_words(tmp_path: Path) -> None:
    for junk in (b"not a zip at all", browser_archive({"a/b/1.jpg": jpeg(1)})[:-30]):
        with pytest.raises(StudioError, match="is not a valid .zip file"):
            ingest_folder_archive(io.BytesIO(junk), "pick.zip", destination=tmp_path / "datasets")


NAME_PART = hs.text(alphabet="ab.:_ -é\\", min_size=1, max_size=6)  # dots, cleaned characters, separators


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(hs.lists(hs.tuples(hs.lists(NAME_PART, min_size=1, max_size=3), hs.sampled_from(["photo", "damaged", "note", "lost"])),
                min_size=1, max_size=12, unique_by=lambda item: "/".join(item[0])))
def test_property_every_picked_file_is_in_exactly_one_pile(tmp_path_factory: pytest.TempPathFactory,
                                                           picks: list[tuple[list[str], str]]) -> None:
    files: dict[str, bytes] = {}
    lost = []
    for i, (parts, kind) in enumerate(picks):
        path = "pick/" + "/".join(parts) + (".txt" if kind == "note" else ".jpg")
        if kind == "lost":
            lost.append(path)
        else:
            files[path] = jpeg(i) if kind == "photo" else b"junk %d" % i
    if not files:
        return
    try:
        account = account_for(tmp_path_factory.mktemp("prop"), browser_archive(files, listed_but_lost=tuple(lost)))
    except StudioError:
        return  # a refused upload (e.g. a name used as both a file and a folder) is a sentence, never a crash
    piles = account.received + len(account.skipped) + len(account.unreadable) + len(account.missing)
    assert piles == account.picked == len(files) + len(lost)
    assert {n.path for n in account.missing} == set(lost)
