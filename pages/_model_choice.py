"""The Evaluate and Classify pickers: which model to look at, a run of this workspace or a demo bundle shipped with
the app, preselected from the address bar or the session, and what to say when there is none. Streamlit only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.training import jobs
from core.serving import profile
from core.base.runs import RunDir
from core.base.workspace import is_plain_name
from pages._session import remember_run, runs, selected_run_id
from pages._common import page_file

DEMO_PARAM = "demo"  # ?demo=<bundle file name>: the demo bundle Evaluate/Classify show, kept across reloads


def run_label(run: RunDir, view: jobs.RunView | None = None) -> str:
    """'run-2026…-ab12 · flowers-mini · succeeded' for select boxes (a model not offered by default says so)."""
    name = run.display_name()  # never raises: a damaged config.json must not hide the other runs
    view = view or jobs.run_view(run)
    note = "" if view.model.usable or view.active else " · not offered by default"
    return f"{run.run_id} · {name} · {view.state}{note}"


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
        st.page_link(page_file("train"), label="Go to Train", icon=":material/model_training:")
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
