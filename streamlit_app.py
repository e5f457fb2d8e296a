"""EfficientNet Studio: routes to the pages (in workflow order) and draws the shared sidebar."""

import streamlit as st

from core import StudioError
from core.base.workspace import check_server_settings
from core.serving import profile
from pages._session import run_in_shell
from pages._sidebar import sidebar

st.set_page_config(page_title="EfficientNet Studio", page_icon=":material/local_florist:", layout="wide")

# A serve-profile deployment (no TensorFlow) can only show demo bundles, so it opens on Evaluate, not on Data.
serving = not profile.is_train_profile()
page = st.navigation([
    st.Page("pages/data.py", title="Data", icon=":material/folder_open:", default=not serving),
    st.Page("pages/augment.py", title="Augment", icon=":material/auto_fix_high:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/analytics:", default=serving),
    st.Page("pages/classify.py", title="Classify", icon=":material/image_search:"),
    st.Page("pages/workspace.py", title="Workspace", icon=":material/inventory_2:"),
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
