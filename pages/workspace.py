"""Workspace: what this visitor keeps on the server (datasets, runs), its size against the quota, and deletion."""

import streamlit as st

from core import StudioError
from core.base.safetext import markdown_literal
from core.base.workspace import hosted_mode, idle_seconds_allowed, visitor_quota_bytes
from core.upkeep import delete_holding, holdings
from pages._common import show_error
from pages._session import current_workspace, ensure_app_shell

KIND_ICONS = {"dataset": ":material/folder:", "run": ":material/model_training:"}


def megabytes(n: int) -> str:
    return f"{n / 1024**2:,.1f} MB"


def usage_summary(used: int) -> None:
    """Used space, against the quota when there is one, and how long an idle workspace is kept."""
    quota = None if not current_workspace(sync_address=False).is_session else visitor_quota_bytes()
    if quota:
        st.progress(min(1.0, used / quota), text=f"{megabytes(used)} of {megabytes(quota)} used")
    else:
        st.caption(f"{megabytes(used)} used · no quota on this server")
    idle = idle_seconds_allowed()
    if idle and current_workspace(sync_address=False).is_session:
        st.caption(f"A workspace nobody has opened for {idle / 3600:g} hours is deleted"
                   + (" (this is a hosted demo)." if hosted_mode() else "."))


ensure_app_shell()
st.title("Workspace")
workspace = current_workspace()
items = holdings(workspace)
usage_summary(workspace.usage_bytes())  # what the quota counts: everything in the folder, not only the list
if not items:
    st.info("Nothing is kept for you yet: upload a dataset on the Data page, or train a model.",
            icon=":material/inventory_2:")
for index, item in enumerate(items):
    row = st.columns([6, 2, 2], vertical_alignment="center")
    row[0].markdown(f"{KIND_ICONS[item.kind]} {item.kind} · {markdown_literal(item.name, 60)}",
                    help=item.name if len(item.name) > 60 else None)
    row[1].caption(megabytes(item.bytes) + (" · in use" if item.busy else ""))
    if row[2].button("Delete", key=f"delete_{index}", icon=":material/delete:", disabled=item.busy,
                     help="Stop its training run first." if item.busy else f"Delete this {item.kind} for good."):
        try:
            delete_holding(workspace, item)
        except StudioError as err:
            show_error(err)
        else:
            st.toast(f"Deleted {item.kind} {item.name[:60]}")
            st.rerun()
