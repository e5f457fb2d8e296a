"""Cached loaders: the device probe, scanned datasets with this workspace's corrections, a run's classifier and a
demo bundle, each read through Streamlit's caches and only from where this session may read. Streamlit only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from core import StudioError
from core.network import device as core_device
from core.serving import profile
from core.data.datasets import Dataset, scan
from core.data.overrides import Applied, apply_overrides, file_beside, file_in_store
from core.data.ingest import fingerprint
from core.base.runs import RunDir
from pages._common import show_error
from pages._session import current_dataset_path, current_workspace
from pages._common import page_file


@st.cache_resource(show_spinner="Looking for a GPU…")
def device_info() -> dict[str, Any]:
    """The compute device, detected once per server process (it imports the ML backend, which is slow)."""
    return core_device.detect_device().to_dict()


@st.cache_data(show_spinner="Checking every image…", max_entries=8)
def scan_cached(path: str, signature: str) -> Dataset:
    """Scan a dataset folder; `signature` changes when its files do, so edits are seen."""
    return scan(path)


def load_dataset(path: Path | str) -> Dataset:
    """The scanned dataset at `path` (cached until its files change), with this workspace's corrections applied
    (core.data.overrides: relabelled photos under their new class, excluded ones left out)."""
    return load_dataset_and_corrections(path)[0]


def load_dataset_plain(path: Path | str) -> Dataset:
    """The scanned dataset as its folders give it, without corrections."""
    return scan_cached(str(path), fingerprint(path))


def load_dataset_and_corrections(path: Path | str) -> tuple[Dataset, Applied]:
    """The corrected dataset and what the corrections did (counts, and entries that no longer match a photo).
    A damaged overrides file is a StudioError naming it (core.data.overrides.read_overrides)."""
    dataset = load_dataset_plain(path)
    return apply_overrides(dataset, overrides_file(dataset.root))


def overrides_file(root: Path | str) -> Path:
    """Where this session keeps the corrections of the dataset whose classes are in `root`: beside the folder when
    it is one of this workspace's uploads (where `python -m core train` finds it too), else in the workspace: the
    shared sample is every visitor's, and one visitor's relabels must never reach another's runs."""
    workspace = current_workspace(sync_address=False)
    if workspace.contains(Path(root)):
        return file_beside(root)
    return file_in_store(root, workspace.path / "overrides")


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def classifier_cached(run_path: str, model_stamp: float):
    """A loaded Classifier for a run; `model_stamp` (the model file's mtime) reloads a newer best model."""
    from core.serving.predict import Classifier

    return Classifier(RunDir(run_path))


def load_classifier(run: RunDir):
    """The run's classifier (only a run of this workspace; Keras safe mode), kept while its model is unchanged."""
    from core.base.runs import MODEL

    if not current_workspace(sync_address=False).contains(run.path):
        raise StudioError(f"Run {run.run_id} is not in this workspace.")
    return classifier_cached(str(run.path), run.file(MODEL).stat().st_mtime)


@st.cache_resource(show_spinner="Loading the demo bundle…", max_entries=4)
def bundle_cached(path: str, stamp: tuple[float, int]):
    """A checked, loaded demo bundle (LiteRT/ONNX, no TensorFlow); `stamp` (mtime, size) reloads a replaced one."""
    from core.serving.bundle import load_demo_bundle

    return load_demo_bundle(path)


def load_bundle(path: Path):
    """The demo bundle at `path` (only one from the demo folder: the address bar can't name other files)."""
    if path.resolve().parent != profile.demo_dir().resolve():
        raise StudioError(f"{path.name} is not a demo bundle of this deployment.")
    info = path.stat()
    return bundle_cached(str(path), (info.st_mtime, info.st_size))


def need_dataset() -> Dataset | None:
    """The current dataset, or a message with a link to the Data page (and None)."""
    path = current_dataset_path()
    if path is None:
        st.info("No dataset yet. Pick the sample or upload a folder on the Data page first.")
        st.page_link(page_file("data"), label="Go to Data", icon=":material/folder_open:")
        return None
    try:
        return load_dataset(path)
    except StudioError as err:
        show_error(err)
        return None
