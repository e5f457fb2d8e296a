"""Evaluate: one run's (or demo bundle's) scores, confusion matrix and mistakes, its exports; then runs compared."""

import re
from pathlib import Path

import pandas as pd
import streamlit as st

from core import StudioError, charts, jobs, profile
from core.metrics import mistake_count
from core.previews import mistakes_with_images, thumbnail
from core.runs import RUN_ID, RunDamaged, evaluation_problem
from core.safetext import csv_cell, markdown_literal, shorten
from pages._common import (ensure_app_shell, literal_names, load_bundle, no_model_message, pick_model, runs,
                           show_error)

# An absolute path inside an error text (Keras and converters name the files they choke on): only its last part is
# shown, since a hosted demo must not describe its server's folders.
SERVER_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/'\"():,;]+/)+([^\s/'\"():,;]*)")
CLASS_LIST_CHARS = 60  # a class name in the caption under the confusion matrix; the caption's help has it whole


def error_text(err: Exception, limit: int = 300) -> str:
    """An unexpected error as one short line: its type and message, server paths cut to their file names."""
    message = SERVER_PATH.sub(r"\1", str(err))
    return shorten(f"{type(err).__name__}: {message}", limit)


def id_text(value: object) -> str:
    """A run id for Markdown: as it is when it is a plain id (every run folder's is), else escaped."""
    return str(value) if isinstance(value, str) and RUN_ID.fullmatch(value) else markdown_literal(value, 60)


def cells(rows: list[dict]) -> pd.DataFrame:
    """Rows for st.dataframe, every text cell through core.safetext.csv_cell (the table's CSV download is
    opened in spreadsheets; bidi controls are dropped too)."""
    return pd.DataFrame([{key: csv_cell(value) for key, value in row.items()} for row in rows])


@st.cache_data(max_entries=128, show_spinner=False)
def picture(path: str):
    """A mistake's image, small."""
    return thumbnail(path, 200)


def summary(evaluation: dict) -> None:
    """Accuracy, top-k and macro AUC on the evaluated split (a field a report lacks reads n/a)."""
    cols = st.columns(4)
    cols[0].metric("Accuracy", f"{evaluation['accuracy']:.1%}")
    top_k = evaluation.get("top_k_accuracy")
    cols[1].metric(f"Top-{evaluation.get('top_k', 1)} accuracy", f"{top_k:.1%}" if top_k is not None else "n/a")
    auc = evaluation.get("macro_auc")
    cols[2].metric("Macro AUC", f"{auc:.3f}" if auc is not None else "n/a")
    cols[3].metric("Images evaluated", f"{evaluation.get('images', 'n/a')} ({evaluation.get('split') or 'n/a'})")


def confusion(evaluation: dict) -> None:
    """The confusion matrix with a counts / normalised switch, beside the per-class scores."""
    view = st.segmented_control("Confusion matrix", ["Counts", "Normalised"], default="Counts", key="cm_view")
    left, right = st.columns([3, 2])
    classes = evaluation["classes"]
    left.plotly_chart(charts.confusion_figure(evaluation["confusion_matrix"], classes,
                                              normalised=view == "Normalised"), key="confusion_matrix")
    long_names = [c for c in classes if len(c) > charts.AXIS_LABEL_CHARS]
    if long_names:
        left.caption("Long class names are shortened on the axes (hover a cell for the whole name): "
                     + ", ".join(markdown_literal(c, CLASS_LIST_CHARS) for c in long_names),
                     help="\n\n".join(markdown_literal(c) for c in long_names))
    with right:
        if evaluation.get("per_class"):
            st.markdown("**Per class**")
            table = cells(evaluation["per_class"]).set_index("class")
            st.dataframe(table.style.format({"precision": "{:.1%}", "recall": "{:.1%}", "f1": "{:.1%}"}),
                         width="stretch")
        if evaluation.get("most_confused"):
            st.markdown("**Most confused pairs**")
            st.dataframe(cells(evaluation["most_confused"]), hide_index=True, width="stretch")


MISTAKE_PICTURES = 18  # three rows of six; a demo bundle carries thumbnails for as many (core.export)


def mistakes(evaluation: dict) -> None:
    """The most confident mistakes, with their pictures, counted against every error in the confusion matrix."""
    listed = evaluation.get("mistakes", [])
    total = max(mistake_count(evaluation), len(listed))  # evaluation.json lists only the most confident ones
    if not total:
        st.markdown("**Most confident mistakes**")
        st.caption("No mistakes on this split.")
        return
    root = evaluation.get("root")
    found = mistakes_with_images(listed, Path(root) if root else None)
    pictured = [(item, image) for item in found[:MISTAKE_PICTURES]
                if (image := picture(str(item["file"]))) is not None]
    if not pictured:
        st.markdown(f"**Most confident mistakes: {len(listed)} of {total} shown**")
        if not listed:
            st.caption("This report lists none of them.")
            return
        st.caption("The images are no longer at the place they were evaluated from (moved or deleted), so only "
                   "the list is shown." if not found else "The images could not be read, so only the list is shown.")
        st.dataframe(cells(listed), hide_index=True)
        return
    st.markdown(f"**Most confident mistakes: {len(pictured)} of {total} shown**")
    cols = st.columns(6)
    for i, (item, image) in enumerate(pictured):
        cols[i % 6].image(image, caption=f"true {markdown_literal(item['true'], 40)} → predicted "
                                         f"{markdown_literal(item['predicted'], 40)} ({item['confidence']:.0%})")


def single_run() -> None:
    """Pick a run or a demo bundle and show its evaluation (a run without a report can be evaluated on request)."""
    choice = pick_model("Run or demo bundle", key="evaluate_run")
    if choice is None:
        no_model_message()
        return
    if choice.bundle_path is not None:
        demo_bundle(choice.bundle_path)
        return
    run = choice.run
    view = jobs.run_view(run)
    for line in run.damage():  # one sentence per damaged file of this run; other runs are unaffected
        st.warning(line, icon=":material/report:")
    damaged = False
    try:
        evaluation = run.read_evaluation()
    except RunDamaged:  # said above; a new evaluation replaces the damaged report
        evaluation, damaged = None, True
    if evaluation is None:
        st.info(f"This run is {view.state} and its evaluation cannot be read; Evaluate now writes a new one."
                if damaged else f"This run is {view.state} and has no evaluation yet.")
        if st.button("Evaluate now", disabled=view.active):
            from core.evaluate import evaluate_run

            try:
                with st.spinner("Evaluating…"):
                    evaluate_run(run)
            except StudioError as err:
                show_error(err)
                return
            except Exception as err:  # a damaged or unsafe model file: report it, keep the page
                st.error(markdown_literal(f"Run {run.run_id} could not be evaluated ({error_text(err)})."))
                return
            st.rerun()
        return
    verdict = jobs.model_verdict(run)
    if not verdict.usable:  # chosen explicitly: say why it is not offered by default
        st.warning(literal_names(f"This run's model is not offered by default. {verdict.reason}",
                                 evaluation["classes"]), icon=":material/info:")
    summary(evaluation)
    confusion(evaluation)
    mistakes(evaluation)
    export_section(run)


def demo_bundle(path: Path) -> None:
    """A demo bundle's report: what it is, its scores, confusion matrix, mistakes and export parity."""
    bundle = load_bundle(path)
    manifest = bundle.manifest
    problem = evaluation_problem(bundle.evaluation)
    if problem is not None:
        st.error(markdown_literal(f"Demo bundle {path.name}: its evaluation.json is damaged: {problem}. Make the "
                                  "bundle again."))
        return
    st.caption(f"Demo bundle of run {id_text(bundle.run_id)}: {markdown_literal(manifest.get('backbone'), 40)} at "
               f"{markdown_literal(manifest.get('image_size'), 10)} px, {len(bundle.classes)} classes, "
               f"{markdown_literal(manifest.get('format'), 20)} model classified without TensorFlow.")
    summary(bundle.evaluation)
    confusion(bundle.evaluation)
    mistakes(bundle.evaluation)
    if bundle.parity:
        parity_table(bundle.parity, "How the bundled model agrees with the Keras model it was exported from")


def parity_table(parity: dict, title: str) -> None:
    """exports/parity.json as a table: top-1 agreement with Keras per format, accuracies, sizes."""
    st.markdown(f"**{title}**")
    st.dataframe(pd.DataFrame(charts.parity_rows(parity)).style.format(
        {"top-1 agreement": "{:.1%}", "Keras accuracy": "{:.1%}", "export accuracy": "{:.1%}",
         "max prob. difference": "{:.1e}"}, na_rep="—"), hide_index=True, width="stretch")


def export_section(run) -> None:
    """Export the run to the chosen formats (each checked for parity), pack a demo bundle and offer its .zip."""
    from core.bundle import DEFAULT_RUNTIME_FORMAT
    from core.export import BUNDLES, FORMATS, exports_dir, read_parity

    st.subheader("Export")
    st.caption("Every export is checked against the Keras model on held-out images: the validation split, else the "
               "test split (float formats must give "
               "the same top-1 on at least 99%). The demo bundle holds the first format that runs without "
               "TensorFlow, with the classes and this report: put it in a hosted demo's demo/ folder.")
    left, right = st.columns([3, 1])
    formats = left.multiselect("Formats", list(FORMATS), default=[DEFAULT_RUNTIME_FORMAT], key="export_formats")
    busy = jobs.run_view(run).active
    right.write("")  # aligns the button with the select box
    if right.button("Export and bundle", icon=":material/ios_share:", disabled=busy or not formats,
                    key="export_run"):
        run_export(run, formats)
    parity = read_parity(run)
    if parity:
        parity_table(parity, "Parity of the exports with the Keras model")
    for archive in sorted((exports_dir(run) / BUNDLES).glob("*.zip")):
        st.download_button(f"Download {archive.name} ({archive.stat().st_size / 1e6:.1f} MB)",
                           data=archive.read_bytes, file_name=archive.name, mime="application/zip",
                           icon=":material/download:", key=f"download_{archive.name}", on_click="ignore")


def run_export(run, formats: list[str]) -> None:
    """export_run with a progress bar, then make_demo_bundle in the first serve-able format chosen."""
    from core.bundle import DEFAULT_RUNTIME_FORMAT
    from core.export import FORMATS, export_run, make_demo_bundle

    bundle_format = next((f for f in formats if FORMATS[f].serve), DEFAULT_RUNTIME_FORMAT)
    steps, done = len(formats) + 2, [0]  # decoding the images, each format, the bundle
    bar = st.progress(0.0, text="Loading the model…")

    def report(message: str) -> None:
        bar.progress(min(done[0] / steps, 1.0), text=f"{message}…")
        done[0] += 1

    try:
        result = export_run(run, formats, progress=report)
        report(f"Packing the demo bundle ({bundle_format})")
        folder = make_demo_bundle(run, bundle_format)
    except StudioError as err:
        bar.empty()
        show_error(err)
        return
    except Exception as err:  # a converter crash must not take the page down
        bar.empty()
        st.error(markdown_literal(f"Exporting run {run.run_id} failed ({error_text(err)})."))
        return
    bar.progress(1.0, text=f"Exported {', '.join(formats)}; demo bundle {folder.name}.zip is ready.")
    if result["failed"]:
        st.warning(f"These exports failed or missed the parity rule: {', '.join(result['failed'])} "
                   "(see the table).")


def settings_row(run, epochs: list[dict]) -> dict:
    """The key settings and final scores of one run, for the comparison table (RunDamaged when its config or
    report cannot be read)."""
    config, evaluation = run.read_config(), run.read_evaluation() or {}
    best = charts.best_epoch(epochs) or {}
    spec = config.get("augmentation")
    if isinstance(spec, list):
        from core.augment import describe_spec  # albumentations: compare() runs only in the train profile

        try:
            spec = describe_spec(spec)
        except (TypeError, KeyError, AttributeError):  # entries that are not transforms: the spec is damaged
            spec = "unreadable spec"
    view = jobs.run_view(run)
    return {"run": run.run_id, "state": view.state, "usable model": view.model.usable,
            "backbone": config.get("backbone"),
            "image size": (config.get("resolved") or {}).get("image_size") or config.get("image_size"),
            "head epochs": config.get("head_epochs"),
            "fine-tune epochs": (config.get("resolved") or {}).get("finetune_epochs", config.get("finetune_epochs")),
            "augmentation": spec,
            "best val loss": best.get("val_loss"), "best val accuracy": best.get("val_accuracy"),
            "test/val accuracy": evaluation.get("accuracy"), "macro AUC": evaluation.get("macro_auc")}


def compare() -> None:
    """Overlay validation curves of several runs and list their final numbers and settings."""
    if not profile.is_train_profile():
        st.caption("Comparing runs works on the runs trained in this workspace, which needs the train profile.")
        return
    everything = runs()
    if len(everything) < 2:
        st.caption("Train a second run to compare runs here.")
        return
    ids = [r.run_id for r in everything]
    # Preselected: the newest runs with a usable model (core.jobs.model_verdict); others can still be added.
    usable = [r.run_id for r in everything if jobs.run_view(r).model.usable]
    chosen = st.multiselect("Runs to compare", ids, default=usable[:3], key="compare_runs")
    picked = [r for r in everything if r.run_id in chosen]
    if not picked:
        return
    curves, rows = {}, []
    for run in picked:  # a damaged run is named and left out; the others are compared as usual
        metrics = run.read_metric_lines()
        note = metrics.note(run.run_id)
        if note:
            st.caption(note)
        try:
            rows.append(settings_row(run, charts.epoch_rows(metrics.records)))
        except RunDamaged as err:
            st.warning(str(err), icon=":material/report:")
            continue
        curves[run.run_id] = charts.epoch_rows(metrics.records)
    if not rows:
        return
    left, right = st.columns(2)
    left.plotly_chart(charts.compare_figure(curves, "val_accuracy"), key="compare_accuracy")
    right.plotly_chart(charts.compare_figure(curves, "val_loss"), key="compare_loss")
    st.dataframe(cells(rows), hide_index=True, width="stretch")


ensure_app_shell()
st.title("Evaluate")
single, several = st.tabs(["One run", "Compare runs"])
with single:
    single_run()
with several:
    compare()
