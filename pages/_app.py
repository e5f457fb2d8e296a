"""The app as every entrypoint starts it: the page list (in workflow order), the start-up checks and the shared
sidebar. streamlit_app.py at the root (`make run`, Heroku, Community Cloud's serve demo) and
train_demo/streamlit_app.py (a training demo on Community Cloud) both call run_app()."""

from __future__ import annotations

import streamlit as st

from core import StudioError
from core.base.workspace import check_server_settings
from core.serving import profile
from pages._common import page_file
from pages._session import run_in_shell
from pages._sidebar import sidebar


def run_app() -> None:
    st.set_page_config(page_title="EfficientNet Studio", page_icon=":material/local_florist:", layout="wide")
    # A serve-profile deployment (no TensorFlow) can only show demo bundles, so it opens on Evaluate, not on Data.
    serving = not profile.is_train_profile()
    page = st.navigation([
        st.Page(page_file("data"), title="Data", icon=":material/folder_open:", default=not serving),
        st.Page(page_file("augment"), title="Augment", icon=":material/auto_fix_high:"),
        st.Page(page_file("train"), title="Train", icon=":material/model_training:"),
        st.Page(page_file("evaluate"), title="Evaluate", icon=":material/analytics:", default=serving),
        st.Page(page_file("classify"), title="Classify", icon=":material/image_search:"),
        st.Page(page_file("workspace"), title="Workspace", icon=":material/inventory_2:"),
    ])
    try:
        check_server_settings()  # settings that contradict each other stop every page, before anything is shown
    except StudioError as err:
        st.error(str(err), icon=":material/block:")
        st.stop()
    # The Train page draws the active run's progress itself, so there the sidebar names the run without a second,
    # separately refreshed progress bar that could disagree with it for a moment.
    sidebar(live_progress=page.url_path != "train")
    run_in_shell(page)
