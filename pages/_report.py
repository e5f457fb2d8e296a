"""The Evaluate page's "Stakeholder report" section: build a run's report (core.serving.report), then offer it as a file."""

from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from core import StudioError
from core.serving.report import build_in_own_process, comparison_candidates, default_report_name
from core.base.runs import RunDir
from pages._common import show_error

# The last report built in this browser session: (run id, file name, HTML bytes). Kept so the download button
# survives the rerun its own click causes; one report at a time, since each holds ~5 MB of plotly.js.
REPORT_KEY = "stakeholder_report"


def report_download(run: RunDir) -> None:
    """A button that builds the run's report in its own process, then a download button for it."""
    st.subheader("Stakeholder report")
    st.caption("One HTML file for people without the app, that opens offline in any browser: a model card (intended "
               "use, classes, data, metrics with a 95% interval, limits, date and versions), the dataset and its "
               "health check, the training curves, the confusion matrix and per-class scores, the most confident "
               "mistakes with heatmaps, and the exports' parity; optionally, a comparison with another run.")
    other = comparison_choice(run)
    if st.button("Build report", icon=":material/description:", key="build_report"):
        with st.spinner("Building the report (the heatmaps load the model)…"):
            try:
                data = _built(run, other)
            except StudioError as err:
                show_error(err)
                return
        st.session_state[REPORT_KEY] = (run.run_id, other.run_id if other else None, default_report_name(run), data)
    saved = st.session_state.get(REPORT_KEY)
    if saved and saved[:2] == (run.run_id, other.run_id if other else None):
        _, _, name, data = saved
        st.download_button(f"Download {name} ({len(data) / 1e6:.1f} MB)", data=data, file_name=name,
                           mime="text/html", icon=":material/download:", key="download_report", on_click="ignore")


def comparison_choice(run: RunDir) -> RunDir | None:
    """'Include a comparison with': another finished run of this workspace (its experiment-pair partner offered
    first), or none."""
    candidates = {other.run_id: other for other in comparison_candidates(run)}
    if not candidates:
        return None
    chosen = st.selectbox("Include a comparison with", [None, *candidates], key=f"report_compare_{run.run_id}",
                          format_func=lambda i: "no comparison" if i is None else
                          f"{i} · {candidates[i].display_name()}",
                          help="Another run scored on the same photos: the report then opens with the verdict, both "
                               "differences with their 95% intervals and recall per class.")
    return candidates.get(chosen) if chosen else None


def _built(run: RunDir, other: RunDir | None = None) -> bytes:
    """The report's bytes, made by `python -m core report` (TensorFlow stays out of the server process)."""
    with tempfile.TemporaryDirectory(prefix="studio-report-") as folder:
        return build_in_own_process(run, Path(folder) / default_report_name(run), compare_with=other).read_bytes()
