"""What several pages share: cached loaders, the current dataset and run, the sidebar. Streamlit only here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import streamlit as st

from core import StudioError
from core.network import device as core_device
from core.training import jobs
from core.serving import profile
from core.data import samples
from core.data.datasets import Dataset, scan
from core.data.images import ImageError
from core.data.overrides import Applied, apply_overrides, file_beside, file_in_store
from core.data.ingest import fingerprint
from core.base.runs import RunDir, list_runs
from core.base.safetext import markdown_literal
from core.base.workspace import (SESSIONS, Workspace, is_plain_name, new_session_id, shared_workspace,
                                 valid_session_id, workspace_dir)
from core.upkeep import remove_idle_workspaces

RUN_PARAM = "run"  # ?run=<id> in the address bar reattaches a reload or a second tab to a run
DEMO_PARAM = "demo"  # ?demo=<bundle file name>: the demo bundle Evaluate/Classify show, kept across reloads
WORKSPACE_PARAM = "ws"  # ?ws=<session id> keeps a reload (or a bookmark) in the same private workspace
WORKSPACE_KEY = "workspace_id"


SHELL_FLAG = "_in_app_shell"
ENTRY_POINT = Path(__file__).resolve().parent.parent / "streamlit_app.py"


def ensure_app_shell() -> None:
    """Run every page inside streamlit_app.py (navigation, sidebar), even on a server's first visit to /train.

    Streamlit treats a folder named pages/ as an old-style multipage app until st.navigation has run once in
    the server process (AppTest even resets that before every run), and in that mode a request for /train runs
    pages/train.py alone. Then switch the mode off, run the entry point here (it runs this page inside the
    real navigation, in this same script run, so no click is lost) and stop this bare copy.
    """
    if st.session_state.get(SHELL_FLAG):
        return
    import runpy

    from streamlit.runtime.pages_manager import PagesManager

    PagesManager.uses_pages_directory = False
    runpy.run_path(str(ENTRY_POINT))
    st.stop()


def run_in_shell(page) -> None:
    """Run the chosen page, marked as running inside the app shell (see ensure_app_shell).

    A StudioError, an image problem or a disk/permission error that a page did not handle itself is shown as
    the sentence it is instead of a traceback: a public demo must not die on a strange file or a full disk.
    """
    st.session_state[SHELL_FLAG] = True
    try:
        page.run()
    except (StudioError, ImageError, OSError) as err:
        show_error(err)
    finally:
        st.session_state[SHELL_FLAG] = False


# ----------------------------------------------------------------------------------------- workspace
def current_workspace(sync_address: bool = True) -> Workspace:
    """This browser session's workspace (or the shared one when STUDIO_SHARED_WORKSPACE is set).

    The session's id lives in st.session_state (kept across page switches) and in the address bar as ?ws=
    (kept across reloads and bookmarks); an id in the address that new_session_id() could not have made is
    ignored and a fresh one is issued, so the address can never point at a folder.
    """
    if shared_workspace():
        return Workspace.root()
    session_id = st.session_state.get(WORKSPACE_KEY)
    if not valid_session_id(session_id):
        from_address = st.query_params.get(WORKSPACE_PARAM)
        session_id = from_address if valid_session_id(from_address) else new_session_id()
        st.session_state[WORKSPACE_KEY] = session_id
        Workspace.for_session(session_id).touch()  # a visit: resets its idle clock (creates nothing)
        sweep_idle_workspaces()
    if sync_address and st.query_params.get(WORKSPACE_PARAM) != session_id:
        st.query_params[WORKSPACE_PARAM] = session_id
    return Workspace.for_session(session_id)


@st.cache_data(ttl=600, show_spinner=False)
def sweep_idle_workspaces() -> int:
    """Remove visitors' folders idle past STUDIO_IDLE_HOURS (hosted mode): at most once per 10 minutes per server."""
    return len(remove_idle_workspaces())


def allowed_dataset(path: Path) -> bool:
    """Datasets a page may open: this workspace's own, and the server's samples (never another session's)."""
    workspace = current_workspace(sync_address=False)
    if workspace.contains(path):
        return True
    resolved = path.resolve()
    if resolved.is_relative_to((workspace_dir() / SESSIONS).resolve()):
        return False  # another session's folder
    shared_samples = [samples.flowers_mini_dir(), samples.tf_flowers_dir()]
    return any(s is not None and resolved.is_relative_to(Path(s).resolve()) for s in shared_samples)


# ----------------------------------------------------------------------------------------- cached work
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


# ----------------------------------------------------------------------------------------- shared state
def current_dataset_path() -> Path | None:
    """The dataset chosen on the Data page (remembered in the workspace, so reloads keep it)."""
    value = current_workspace(sync_address=False).load_state().get("dataset")
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    return path if path.is_dir() and allowed_dataset(path) else None


def set_current_dataset(path: Path) -> None:
    """Make `path` the dataset every page works on."""
    if not allowed_dataset(Path(path)):
        raise StudioError(f"{path} is neither in this workspace nor a sample dataset.")
    current_workspace(sync_address=False).save_state(dataset=str(path))


def current_augmentation() -> Any:
    """The augmentation chosen on the Augment page: a preset name or an explicit spec list."""
    return current_workspace(sync_address=False).load_state().get("augmentation", "light")


def runs() -> list[RunDir]:
    """All runs in the workspace, newest first."""
    return list_runs(current_workspace(sync_address=False).runs_dir())


def run_label(run: RunDir, view: jobs.RunView | None = None) -> str:
    """'run-2026…-ab12 · flowers-mini · succeeded' for select boxes (a model not offered by default says so)."""
    name = run.display_name()  # never raises: a damaged config.json must not hide the other runs
    view = view or jobs.run_view(run)
    note = "" if view.model.usable or view.active else " · not offered by default"
    return f"{run.run_id} · {name} · {view.state}{note}"


def selected_run_id() -> str | None:
    """The run named in the address bar, else the last one this session looked at (a plain run id, or None)."""
    for candidate in (st.query_params.get(RUN_PARAM), st.session_state.get("run_id")):
        if candidate and is_plain_name(candidate):
            return candidate
    return None


def remember_run(run: RunDir) -> None:
    """Put the run in the address bar and the session, so a reload or another page shows it."""
    st.session_state["run_id"] = run.run_id
    if st.query_params.get(RUN_PARAM) != run.run_id:
        st.query_params[RUN_PARAM] = run.run_id


def require_train_profile(what: str) -> None:
    """In the serve profile: say plainly why this page can't work here, point to the pages that do, stop."""
    if profile.is_train_profile():
        return
    st.info(profile.train_profile_message(what), icon=":material/info:")
    links = st.columns(4)
    links[0].page_link("pages/evaluate.py", label="Evaluate the demo", icon=":material/analytics:")
    links[1].page_link("pages/classify.py", label="Classify photos", icon=":material/image_search:")
    st.stop()


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the Evaluate/Classify pickers: a run of this workspace, or a demo bundle shipped with the app."""

    key: str
    label: str
    run: RunDir | None = None
    bundle_path: Path | None = None
    usable: bool = True  # may be preselected: a demo bundle, or a run whose model core.training.jobs.model_verdict accepts

    @property
    def name(self) -> str:
        """The run id, or the bundle's file name (for file names and captions)."""
        return self.run.run_id if self.run is not None else Path(self.bundle_path or "").name


def model_choices() -> list[ModelChoice]:
    """Runs with a model (train profile only: they need Keras), newest first, then the demo bundles by name."""
    choices = []
    if profile.is_train_profile():
        for run in runs():
            if run.has_model():
                view = jobs.run_view(run)
                choices.append(ModelChoice(run.run_id, run_label(run, view), run=run, usable=view.model.usable))
    for path in profile.demo_bundles():
        choices.append(ModelChoice(f"demo:{path.name}", f"{path.name} · demo bundle", bundle_path=path))
    return choices


def no_model_message() -> None:
    """What to do when there is nothing to evaluate or classify, for the profile this app runs in."""
    if model_choices():
        return  # there are models, none chosen: pick_model has said why
    if profile.is_train_profile():
        st.info("No trained model yet. Train one on the Train page first.")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    else:
        st.info(f"No demo bundle found in {profile.demo_dir()}. Make one with the train profile "
                "(`python -m core export RUN --format tflite --bundle`, or Export on the Evaluate page), then put "
                f"its folder or .zip there, or point {profile.DEMO_DIR_ENV} at the folder that holds it.")


def pick_model(label: str, key: str) -> ModelChoice | None:
    """A select box of runs and demo bundles, preselecting the remembered one; remembers the choice."""
    choices = model_choices()
    if not choices:
        return None
    keys = [c.key for c in choices]
    demo = st.query_params.get(DEMO_PARAM)
    wanted = ([f"demo:{demo}"] if demo and is_plain_name(demo) else []) + [selected_run_id()]
    # The run or bundle this session chose (the address bar, the last run looked at, "Evaluate this run") is
    # honoured; otherwise the default is a usable model (evaluated, better than the majority class): the newest
    # such run, else a demo bundle. A run that is not usable is listed but never picked by default: with none
    # usable, nothing is preselected.
    usable = [c.key for c in choices if c.usable]
    index = next((keys.index(w) for w in wanted if w in keys), keys.index(usable[0]) if usable else None)
    labels = {c.key: c.label for c in choices}
    picked = st.selectbox(label, keys, index=index, format_func=labels.get, key=key,
                          placeholder="Choose a run: none has a model that is offered by default")
    if picked is None:
        st.info("No run has a usable model yet: each was stopped before it was evaluated, or scores no better than "
                "always answering the commonest class. Choose one above to look at it anyway, or train again.")
        return None
    chosen = choices[keys.index(picked)]
    if chosen.run is not None:
        remember_run(chosen.run)
        if DEMO_PARAM in st.query_params:
            del st.query_params[DEMO_PARAM]
    elif st.query_params.get(DEMO_PARAM) != chosen.name:
        st.query_params[DEMO_PARAM] = chosen.name
    return chosen


def literal_names(message: str, names: Iterable[str], folders: Iterable[Path] = ()) -> str:
    """A sentence from core, for st.error/st.markdown, with each visitor-given name in it (class, file, run)
    escaped by core.base.safetext.markdown_literal, so a name reads as written and never as a link, bold or math;
    each of `folders` (a dataset root) is named by its folder name, not by its path on the server."""
    import re

    from core.base.safetext import markdown_literal, plain

    message = plain(message)
    folders = [Path(f) for f in folders if Path(f).name]  # "/" would name nothing
    for folder in folders:
        message = message.replace(str(folder), folder.name)
    names = [*names, *(f.name for f in folders)]
    # Only names Markdown would act on need it; one pass, longest first, so no name is escaped twice.
    risky = sorted({plain(n) for n in names if n and markdown_literal(n) != plain(n)}, key=len, reverse=True)
    if not risky:
        return message
    return re.sub("|".join(map(re.escape, risky)), lambda m: markdown_literal(m.group()), message)


def show_error(err: Exception) -> None:
    """A StudioError as the sentence it is; anything else with its type, so it can be reported."""
    st.error(str(err) if isinstance(err, StudioError) else f"{type(err).__name__}: {err}")


def need_dataset() -> Dataset | None:
    """The current dataset, or a message with a link to the Data page (and None)."""
    path = current_dataset_path()
    if path is None:
        st.info("No dataset yet. Pick the sample or upload a folder on the Data page first.")
        st.page_link("pages/data.py", label="Go to Data", icon=":material/folder_open:")
        return None
    try:
        return load_dataset(path)
    except StudioError as err:
        show_error(err)
        return None


# ----------------------------------------------------------------------------------------- sidebar
def sidebar(live_progress: bool = True) -> None:
    """Device, backend, current dataset and the active run, on every page."""
    current_workspace()  # issue or confirm this session's workspace id, and put it in the address bar
    with st.sidebar:
        if not profile.is_train_profile():
            serve_sidebar()
            return
        st.caption("Profile")
        st.markdown("**train profile**: training available")
        st.caption("Compute")
        try:
            device = core_device.DeviceInfo(**device_info())
            line = core_device.device_line(device, core_device.precision_policy("auto", device),
                                           core_device.use_xla("auto", device))
        except Exception as err:  # a broken ML install must not hide the pages
            line = f"Device unknown ({type(err).__name__}: {err})"
        st.markdown(f"{line}  \n**Backend:** {core_device.keras_backend()}")
        st.caption("Dataset")
        path = current_dataset_path()
        st.markdown(markdown_literal(path.name, 40) if path else "none chosen")  # a visitor's folder name: text
        st.caption("Training")
        training_status(live_progress)


def training_status(live_progress: bool = True) -> None:
    """The sidebar's run line, from core.training.jobs.run_view like the Train page; it polls while a run is active
    (except on the Train page, which shows that run's progress itself and redraws everything when it ends)."""
    active = jobs.active_run(current_workspace(sync_address=False).runs_dir())
    if active is not None and live_progress:
        live_training_status(active.run_id)
        return
    if active is not None:
        st.markdown(f"`{active.run_id}`  \n**{jobs.run_view(active).label}**: its progress is on this page")
        return
    latest = runs()[:1]
    if latest:
        view = jobs.run_view(latest[0])
        st.markdown(f"No run active. Latest: `{view.run_id}` (**{view.state}**)"
                    + ("" if view.model.usable else "  \nno usable model"))
    else:
        st.markdown("No run yet.")


@st.fragment(run_every=2.0)
def live_training_status(run_id: str) -> None:
    """The active run's state and phase; when it changes state the whole page is redrawn to agree with it."""
    run = current_workspace(sync_address=False).run(run_id)
    if run is None:
        return
    view = jobs.run_view(run)
    if not view.active:
        st.rerun()  # it just ended: redraw everything (Train page, Start button) from the final state
    phase = view.status.get("phase_label") or ""
    st.markdown(f"`{view.run_id}`  \n**{view.label}**" + (f" · {phase}" if phase and view.state == "running"
                                                          else ""))
    st.progress(view.fraction)
    st.page_link("pages/train.py", label="Watch it", icon=":material/monitoring:")


def serve_sidebar() -> None:
    """The serve profile's sidebar: no device probe (it would import the ML backend), just the demo bundles."""
    st.caption("Profile")
    st.markdown("**serve profile**: showing demo bundles")
    count = len(profile.demo_bundles())
    st.markdown(f"{count} bundle{'' if count == 1 else 's'} in `{profile.demo_dir()}`  \n"
                "Predictions run on the CPU with LiteRT; training needs the train profile.")
