"""Evaluate: one run's scores, confusion matrix and mistakes; then several runs compared."""

from pathlib import Path

import pandas as pd
import streamlit as st

from core import StudioError, charts, jobs
from core.augment import describe_spec
from core.previews import mistakes_with_images, thumbnail
from pages._common import ensure_app_shell, pick_run, runs, show_error


@st.cache_data(max_entries=128, show_spinner=False)
def picture(path: str):
    """A mistake's image, small."""
    return thumbnail(path, 200)


def summary(evaluation: dict) -> None:
    """Accuracy, top-k and macro AUC on the evaluated split."""
    cols = st.columns(4)
    cols[0].metric("Accuracy", f"{evaluation['accuracy']:.1%}")
    cols[1].metric(f"Top-{evaluation['top_k']} accuracy", f"{evaluation['top_k_accuracy']:.1%}")
    auc = evaluation.get("macro_auc")
    cols[2].metric("Macro AUC", f"{auc:.3f}" if auc is not None else "n/a")
    cols[3].metric("Images evaluated", f"{evaluation['images']} ({evaluation['split']})")


def confusion(evaluation: dict) -> None:
    """The confusion matrix with a counts / normalised switch, beside the per-class scores."""
    view = st.segmented_control("Confusion matrix", ["Counts", "Normalised"], default="Counts", key="cm_view")
    left, right = st.columns([3, 2])
    left.plotly_chart(charts.confusion_figure(evaluation["confusion_matrix"], evaluation["classes"],
                                              normalised=view == "Normalised"), key="confusion_matrix")
    with right:
        st.markdown("**Per class**")
        table = pd.DataFrame(evaluation["per_class"]).set_index("class")
        st.dataframe(table.style.format({"precision": "{:.1%}", "recall": "{:.1%}", "f1": "{:.1%}"}),
                     width="stretch")
        if evaluation.get("most_confused"):
            st.markdown("**Most confused pairs**")
            st.dataframe(pd.DataFrame(evaluation["most_confused"]), hide_index=True, width="stretch")


def mistakes(evaluation: dict) -> None:
    """The most confident mistakes, with their pictures."""
    root = evaluation.get("root")
    found = mistakes_with_images(evaluation.get("mistakes", []), Path(root) if root else None)
    st.markdown(f"**Most confident mistakes** ({len(evaluation.get('mistakes', []))} in all)")
    if not evaluation.get("mistakes"):
        st.caption("No mistakes on this split.")
        return
    if not found:
        st.caption(f"The images are no longer at {root}, so only the list is shown.")
        st.dataframe(pd.DataFrame(evaluation["mistakes"]), hide_index=True)
        return
    cols = st.columns(6)
    for i, item in enumerate(found[:18]):
        image = picture(str(item["file"]))
        if image is not None:
            cols[i % 6].image(image, caption=f"true {item['true']} → predicted {item['predicted']} "
                                             f"({item['confidence']:.0%})")


def single_run() -> None:
    """Pick a run and show its evaluation (evaluating it on request when it has a model but no report)."""
    candidates = [r for r in runs() if r.has_model()]
    run = pick_run("Run", candidates, key="evaluate_run")
    if run is None:
        st.info("No trained model yet. Train one on the Train page first.")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        return
    evaluation = run.read_evaluation()
    if evaluation is None:
        state = jobs.run_state(run).get("state")
        st.info(f"This run is {state} and has no evaluation yet.")
        if st.button("Evaluate now", disabled=state in jobs.ACTIVE_STATES):
            from core.evaluate import evaluate_run

            try:
                with st.spinner("Evaluating…"):
                    evaluate_run(run)
            except StudioError as err:
                show_error(err)
                return
            except Exception as err:  # a damaged or unsafe model file: report it, keep the page
                st.error(f"Run {run.run_id} could not be evaluated ({type(err).__name__}: {str(err)[:300]}).")
                return
            st.rerun()
        return
    summary(evaluation)
    confusion(evaluation)
    mistakes(evaluation)


def settings_row(run) -> dict:
    """The key settings and final scores of one run, for the comparison table."""
    config, evaluation = run.read_config(), run.read_evaluation() or {}
    best = charts.best_epoch(charts.epoch_rows(run.read_metrics())) or {}
    spec = config.get("augmentation")
    return {"run": run.run_id, "state": jobs.run_state(run).get("state"), "backbone": config.get("backbone"),
            "image size": (config.get("resolved") or {}).get("image_size") or config.get("image_size"),
            "head epochs": config.get("head_epochs"), "fine-tune epochs": config.get("finetune_epochs"),
            "augmentation": describe_spec(spec) if isinstance(spec, list) else spec,
            "best val loss": best.get("val_loss"), "best val accuracy": best.get("val_accuracy"),
            "test/val accuracy": evaluation.get("accuracy"), "macro AUC": evaluation.get("macro_auc")}


def compare() -> None:
    """Overlay validation curves of several runs and list their final numbers and settings."""
    everything = runs()
    if len(everything) < 2:
        st.caption("Train a second run to compare runs here.")
        return
    ids = [r.run_id for r in everything]
    chosen = st.multiselect("Runs to compare", ids, default=ids[:3], key="compare_runs")
    picked = [r for r in everything if r.run_id in chosen]
    if not picked:
        return
    curves = {r.run_id: charts.epoch_rows(r.read_metrics()) for r in picked}
    left, right = st.columns(2)
    left.plotly_chart(charts.compare_figure(curves, "val_accuracy"), key="compare_accuracy")
    right.plotly_chart(charts.compare_figure(curves, "val_loss"), key="compare_loss")
    st.dataframe(pd.DataFrame([settings_row(r) for r in picked]), hide_index=True, width="stretch")


ensure_app_shell()
st.title("Evaluate")
single, several = st.tabs(["One run", "Compare runs"])
with single:
    single_run()
with several:
    compare()
