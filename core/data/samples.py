"""Sample datasets: flowers-mini (offline, from ../shared/data) and TensorFlow's flowers (download, cached)."""

from __future__ import annotations

import os
import shutil
import socket
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from core import StudioError
from core.base.workspace import REPO_ROOT, datasets_dir, downloads_dir

TF_FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
TF_FLOWERS_BYTES = 228_813_984  # size of the archive, for the progress bar when the server sends no length
CHUNK_BYTES = 1 << 20

Progress = Callable[[int, int | None], None]  # (bytes done, bytes total or None)


@dataclass(frozen=True)
class SampleDataset:
    """One row of the sample table, as the Data page lists it."""

    name: str
    label: str
    description: str
    needs_download: bool


SAMPLES: dict[str, SampleDataset] = {s.name: s for s in [
    SampleDataset("flowers-mini", "flowers-mini (offline, 400 photos)",
                  "5 flower classes, 64 train + 16 validation photos each: trains in about a minute on a CPU.",
                  needs_download=False),
    SampleDataset("tf-flowers", "TensorFlow flowers (download, 218 MB)",
                  "The full 3,670-photo flower_photos archive from TensorFlow's tutorials, cached after one download.",
                  needs_download=True),
]}


def flowers_mini_candidates() -> list[Path]:
    """Where flowers-mini is looked for, in order: $STUDIO_SAMPLE_DIR, then ../shared/data/flowers-mini."""
    found = [Path(os.environ["STUDIO_SAMPLE_DIR"]).expanduser()] if os.environ.get("STUDIO_SAMPLE_DIR") else []
    return found + [REPO_ROOT.parent / "shared" / "data" / "flowers-mini"]


def flowers_mini_dir() -> Path | None:
    """The flowers-mini folder if it is present, else None."""
    for candidate in flowers_mini_candidates():
        if candidate.is_dir():
            return candidate
    return None


def flowers_mini_missing_message() -> str:
    """What to do when flowers-mini is not found (names the exact place)."""
    where = flowers_mini_candidates()[-1].resolve()
    return (f"The offline sample 'flowers-mini' was not found. Put the folder (train/ and val/, one sub-folder "
            f"per flower class) at {where}, or set STUDIO_SAMPLE_DIR to the folder that holds it.")


OFFLINE_ENV = "STUDIO_OFFLINE"


def is_online(host: str = "storage.googleapis.com", port: int = 443, timeout: float = 1.5) -> bool:
    """True when a TCP connection to the download host opens quickly (no data is sent). STUDIO_OFFLINE=1 says no
    without asking: a server started by the tests (or on an air-gapped machine) never reaches outside."""
    if os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tf_flowers_dir(parent: Path | None = None) -> Path:
    """Where the unpacked TensorFlow flowers dataset lives once downloaded."""
    return Path(parent or datasets_dir()) / "tf-flowers"


def tf_flowers_ready(parent: Path | None = None) -> bool:
    """True when the download was unpacked completely before (nothing to download)."""
    return (tf_flowers_dir(parent) / ".studio-complete").is_file()


def download(url: str, destination: Path, progress: Progress | None = None,
             opener: Callable = urllib.request.urlopen, timeout: float = 60.0) -> Path:
    """Download `url` to `destination` via a temporary file (no half file is ever left under the real name)."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as out, opener(url, timeout=timeout) as response:
            total = _content_length(response)
            done = 0
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if total is not None and done != total:
            raise StudioError(f"The download of {url} stopped after {done:,} of {total:,} bytes; try again.")
        os.replace(temporary, destination)
    except StudioError:
        Path(temporary).unlink(missing_ok=True)
        raise
    except OSError as err:  # URLError, timeouts, refused connections, full disks
        Path(temporary).unlink(missing_ok=True)
        host = urlparse(url).netloc or url
        raise StudioError(f"Could not download {url} ({getattr(err, 'reason', None) or err}). Check that this "
                          f"machine can reach {host}, or use the offline sample.") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return destination


def _content_length(response) -> int | None:
    """The announced size in bytes, if the server (or file:// opener) sent one."""
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def fetch_tf_flowers(progress: Progress | None = None, url: str = TF_FLOWERS_URL,
                     parent: Path | None = None, cache: Path | None = None,
                     opener: Callable = urllib.request.urlopen) -> Path:
    """The TensorFlow flowers dataset folder: downloaded once (cached archive), unpacked once."""
    target = tf_flowers_dir(parent)
    if tf_flowers_ready(parent):
        return target
    archive = Path(cache or downloads_dir()) / "flower_photos.tgz"
    if not archive.is_file():
        download(url, archive, progress, opener)
    unpack_tgz(archive, target)
    return target


def unpack_tgz(archive: Path, target: Path) -> Path:
    """Unpack a .tgz into `target` with tarfile's 'data' filter (no links out, no absolute paths)."""
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent if target.parent.exists() else None))
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(staging, filter="data")
        (staging / ".studio-complete").write_text("complete\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), target)
    except (tarfile.TarError, OSError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)  # a damaged cache must not be reused
        raise StudioError(f"{archive.name} could not be unpacked ({err}); it was deleted, download it again.") from None
    return target
