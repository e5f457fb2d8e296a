"""The sidebar on every page: the profile, the compute device, the current dataset and the active or latest run
(polled while one trains); in the serve profile, the demo bundles. Streamlit only; it reads the session and the
loaders, and nothing imports it but the entry point.
"""

from __future__ import annotations

import streamlit as st

from core.network import device as core_device
from core.training import jobs
from core.serving import profile
from core.base.safetext import markdown_literal
from pages._loaders import device_info
from pages._session import current_dataset_path, current_workspace, runs
from pages._common import page_file


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
    st.page_link(page_file("train"), label="Watch it", icon=":material/monitoring:")


def serve_sidebar() -> None:
    """The serve profile's sidebar: no device probe (it would import the ML backend), just the demo bundles."""
    st.caption("Profile")
    st.markdown("**serve profile**: showing demo bundles")
    count = len(profile.demo_bundles())
    st.markdown(f"{count} bundle{'' if count == 1 else 's'} in `{profile.demo_dir()}`  \n"
                "Predictions run on the CPU with LiteRT; training needs the train profile.")
