"""Evaluate: one run's (or demo bundle's) scores, confusion matrix and mistakes, its exports; then runs compared."""

import re
from pathlib import Path

import pandas as pd
import streamlit as st

from core import StudioError
from core.results import charts
from core.training import jobs, pairs
from core.serving import profile
from core.results.metrics import cell_photos, mistake_count
from core.data.previews import mistakes_with_images, thumbnail
from core.base.runs import RUN_ID, RunDamaged, RunDir, evaluation_problem
from core.base.safetext import csv_cell, markdown_literal, shorten
from pages._report import report_download
from pages._common import literal_names, show_error
from pages._loaders import load_bundle
from pages._model_choice import no_model_message, pick_model, run_label
from pages._session import current_workspace, ensure_app_shell, runs
from pages._common import page_file

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
    """Rows for st.dataframe, every text cell through core.base.safetext.csv_cell (the table's CSV download is
    opened in spreadsheets; bidi controls are dropped too)."""
    return pd.DataFrame([{key: csv_cell(value) for key, value in row.items()} for row in rows])


@st.cache_data(max_entries=128, show_spinner=False)
def picture(path: str):
    """A mistake's image, small."""
    return thumbnail(path, 200)


def summary(evaluation: dict) -> None:
    """Accuracy, top-k, macro F1 and macro AUC on the evaluated photos (a field a report lacks reads n/a)."""
    cols = st.columns(5)
    cols[0].metric("Accuracy", f"{evaluation['accuracy']:.1%}")
    top_k = evaluation.get("top_k_accuracy")
    cols[1].metric(f"Top-{evaluation.get('top_k', 1)} accuracy", f"{top_k:.1%}" if top_k is not None else "n/a")
    f1 = evaluation.get("macro_f1")
    cols[2].metric("Macro F1", f"{f1:.1%}" if f1 is not None else "n/a",
                   help="The mean of the per-class F1 scores over the classes that have photos here: every class "
                        "counts the same, however many photos it has.")
    auc = evaluation.get("macro_auc")
    cols[3].metric("Macro AUC", f"{auc:.3f}" if auc is not None else "n/a")
    split = "test folder" if evaluation.get("split") == "data" else evaluation.get("split") or "n/a"
    cols[4].metric("Images evaluated", f"{evaluation.get('images', 'n/a')} ({split})")


def confusion(evaluation: dict, key: str) -> tuple[int, int] | None:
    """The confusion matrix with a counts / normalised switch, beside the per-class scores. A click on a cell (or
    the two select boxes under it) picks that cell; returns the picked (true, predicted) indices."""
    view = st.segmented_control("Confusion matrix", ["Counts", "Normalised"], default="Counts", key="cm_view")
    left, right = st.columns([3, 2])
    classes = evaluation["classes"]
    true_key, predicted_key = f"cell_true_{key}", f"cell_predicted_{key}"
    for widget in (true_key, predicted_key):  # a class no longer among the options (another run) is forgotten
        if st.session_state.get(widget) not in (None, *classes):
            del st.session_state[widget]
    picked = _picked_cell(classes, true_key, predicted_key)
    chart_key = f"confusion_matrix_{key}"

    def clicked() -> None:
        """A click on the chart: its cell goes into the select boxes (the one place the pick is kept)."""
        state = st.session_state.get(chart_key) or {}
        cell = charts.clicked_cell((state.get("selection") or {}).get("points") or [], len(classes))
        if cell is not None:
            st.session_state[true_key], st.session_state[predicted_key] = classes[cell[0]], classes[cell[1]]

    left.plotly_chart(charts.confusion_figure(evaluation["confusion_matrix"], classes,
                                              normalised=view == "Normalised", selected=picked),
                      key=chart_key, on_select=clicked, selection_mode="points")
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
    # The same pick without a mouse: a select box per axis (a click on the chart fills both).
    st.caption("Click a cell of the matrix to see its photos, or choose the two classes here.")
    pick_true, pick_predicted = st.columns(2)
    pick_true.selectbox("True class", classes, index=None, key=true_key, placeholder="Choose a true class",
                        format_func=lambda c: shorten(c, 60))
    pick_predicted.selectbox("Predicted class", classes, index=None, key=predicted_key,
                             placeholder="Choose a predicted class", format_func=lambda c: shorten(c, 60))
    return _picked_cell(classes, true_key, predicted_key)


def _picked_cell(classes: list[str], true_key: str, predicted_key: str) -> tuple[int, int] | None:
    true, predicted = st.session_state.get(true_key), st.session_state.get(predicted_key)
    if true in classes and predicted in classes:
        return classes.index(true), classes.index(predicted)
    return None


CELL_PAGE = 24  # photos of a clicked cell shown at a time (four rows of six)


def cell_section(evaluation: dict, cell: tuple[int, int], key: str, editable: bool) -> None:
    """The photos of one confusion-matrix cell: mistakes most confident first, correct ones least confident
    first, CELL_PAGE at a time, each with its confidence (and the cleaning buttons on the run's own dataset)."""
    classes = evaluation["classes"]
    row, column = cell
    true, predicted = classes[row], classes[column]
    count = int(evaluation["confusion_matrix"][row][column])
    photos = cell_photos(evaluation, row, column)
    heading = (f"true {markdown_literal(true, 40)} → predicted {markdown_literal(predicted, 40)}: "
               f"{count} photo{'' if count == 1 else 's'}")
    st.markdown(f"**{heading}**" + (" (correct)" if row == column else ""))
    if photos is None and evaluation.get("predictions_left_out"):
        st.caption("A demo bundle carries the thumbnails of its most confident mistakes (below), not every test "
                   "photo, so a cell's photos are listed only in the app that trained the run.")
        return
    if photos is None:
        st.caption("This report was written before evaluations kept every photo's prediction, so the photos of a "
                   "cell cannot be listed: evaluate the run again to list them.")
        return
    if not photos:
        return
    pages = (len(photos) + CELL_PAGE - 1) // CELL_PAGE
    page = 1
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"cell_page_{key}_{row}_{column}"))
    shown = photos[(page - 1) * CELL_PAGE:page * CELL_PAGE]
    order = "least confident first" if row == column else "most confident first"
    st.caption(f"Photos {(page - 1) * CELL_PAGE + 1}–{(page - 1) * CELL_PAGE + len(shown)} of {len(photos)}, "
               f"{order}.")
    root = evaluation.get("root")
    found = mistakes_with_images(shown, Path(root) if root else None)
    pictured = [(item, image) for item in found if (image := picture(str(item["file"]))) is not None]
    if not pictured:
        st.caption("The photos are no longer at the place they were evaluated from (moved or deleted), so only the "
                   "list is shown." if not found else "The photos could not be read, so only the list is shown.")
        st.dataframe(cells(shown), hide_index=True)
        return
    if len(pictured) < len(shown):
        st.caption(f"{len(shown) - len(pictured)} of these photos can no longer be read or found.")
    columns = st.columns(6)
    for i, (item, image) in enumerate(pictured):
        with columns[i % 6]:
            st.image(image, caption=f"{item['confidence']:.0%} · {markdown_literal(Path(item['path']).name, 30)}",
                     width="stretch")
            if editable:
                _corrections(Path(root), item, classes, f"cell{row}_{column}")


def _corrections(root: Path, item: dict, classes: list[str], key: str) -> None:
    """The cleaning loop's Relabel / Exclude / Undo under a photo of the run's own dataset (pages/_cleaning)."""
    from pages._cleaning import correction_controls

    correction_controls(root, item["path"], classes, key=key, source="mistakes",
                        suggested=item["predicted"] if item["predicted"] != item["true"] else None)


def calibration_section(evaluation: dict, run=None) -> None:
    """The reliability diagram and ECE; for a run, the "unknown" threshold Classify uses and where it came from."""
    reliability = evaluation.get("reliability")
    if not reliability:
        st.caption("This report predates calibration figures; evaluate the run again for its reliability diagram.")
        return
    left, right = st.columns([3, 2])
    ece = evaluation.get("ece")
    left.plotly_chart(charts.reliability_figure(reliability, ece), key="reliability")
    with right:
        st.markdown(f"**Calibration: ECE {ece:.1%}**" if ece is not None else "**Calibration**")
        st.caption("When the model says 80%, is it right 80% of the time? Each bar is how often it was right at that "
                   "confidence; the dashed diagonal is a perfectly calibrated model, and the expected calibration "
                   f"error (ECE) is the average gap between the two, weighted by the photos in each of the "
                   f"{len(reliability['counts'])} bins.")
        if run is not None:
            unknown_threshold_note(run)


def unknown_threshold_note(run) -> None:
    """What Classify does with low-confidence photos of this run, or a button to choose its threshold."""
    from core.serving.predict import unknown_reason

    try:
        calibration = run.read_calibration()
    except RunDamaged as err:
        st.caption(markdown_literal(str(err)))
        return
    if calibration is not None:
        wrong = calibration.get("flagged_wrong")
        st.caption(f"Classify says **unknown** for a photo {unknown_reason(calibration)} ({calibration['photos']} "
                   f"photos, none of them test photos): it keeps {calibration['kept_correct']:.0%} of the right "
                   "answers there" + (f" and turns {wrong:.0%} of the wrong ones into unknown." if wrong is not None
                                      else "; none was wrong."))
        return
    split = run.read_split()
    if not split.get("val"):
        st.caption('This run has no "unknown" threshold for Classify (it was trained before runs chose one on '
                   "their held-out photos): train again to get one.")
        return
    st.caption('This run has no "unknown" threshold for Classify yet: it can be chosen on its validation photos.')
    if st.button("Choose the \"unknown\" threshold", key="calibrate_run", disabled=jobs.run_view(run).active):
        from core.results.evaluate import calibrate_run

        try:
            with st.spinner("Scoring the validation photos…"):
                calibrate_run(run)
        except StudioError as err:
            show_error(err)
            return
        st.rerun()


MISTAKE_PICTURES = 18  # three rows of six; a demo bundle carries thumbnails for as many (core.serving.export)


def mistakes(evaluation: dict, editable: bool = False) -> None:
    """The most confident mistakes, with their pictures, counted against every error in the confusion matrix
    (with the cleaning loop's buttons under each when `editable`: the run's own dataset)."""
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
        with cols[i % 6]:
            st.image(image, caption=f"true {markdown_literal(item['true'], 40)} → predicted "
                                    f"{markdown_literal(item['predicted'], 40)} ({item['confidence']:.0%})")
            if editable:
                _corrections(Path(root), item, evaluation["classes"], "mistake")


OWN = ":own"  # the evaluation picker's entry for the run's own evaluation.json (no file stem holds a ':')
SHOW_NEXT_KEY = "evaluation_show_next"  # a named evaluation to show once the page reruns


def evaluation_label(evaluation: dict, name: str) -> str:
    """An entry of the evaluation picker: which photos, how many, and when for a named one."""
    photos = f"{evaluation.get('images', '?')} photos"
    if name == OWN:
        return f"{evaluation.get('split') or 'held-out'} split of the run's dataset ({photos})"
    when = evaluation.get("evaluated")
    stamp = f", {pd.Timestamp(when, unit='s'):%Y-%m-%d %H:%M}" if isinstance(when, (int, float)) else ""
    return f"{shorten(evaluation.get('dataset') or name, 60)} ({photos}{stamp})"


def pick_evaluation(run, own: dict | None) -> tuple[str, dict | None]:
    """Which evaluation to show: the run's own, or one of its named evaluations on other folders (newest first).
    Returns (name, report); a damaged named report is said and left out."""
    reports: dict[str, dict | None] = {OWN: own} if own is not None else {}
    for name in run.named_evaluations():
        try:
            reports[name] = run.read_named_evaluation(name)
        except RunDamaged as err:
            st.warning(str(err), icon=":material/report:")
    reports = {name: report for name, report in reports.items() if report is not None}
    if not reports:
        return OWN, None
    names = list(reports)
    if st.session_state.get(SHOW_NEXT_KEY) in names:  # an evaluation just made on a test folder
        st.session_state["evaluation_shown"] = st.session_state.pop(SHOW_NEXT_KEY)
    if st.session_state.get("evaluation_shown") not in names:
        st.session_state["evaluation_shown"] = names[0]
    if len(names) > 1:
        st.selectbox("Evaluation shown", names, key="evaluation_shown",
                     format_func=lambda n: evaluation_label(reports[n], n),
                     help="The run's own held-out split, or a labelled test folder it was evaluated on here.")
    name = st.session_state["evaluation_shown"]
    return name, reports[name]


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
            from core.results.evaluate import evaluate_run

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
    name, shown = pick_evaluation(run, evaluation)
    if shown is not None:
        verdict = jobs.model_verdict(run)
        if not verdict.usable:  # chosen explicitly: say why it is not offered by default
            st.warning(literal_names(f"This run's model is not offered by default. {verdict.reason}",
                                     shown["classes"]), icon=":material/info:")
        own_dataset = shown.get("split") != "data"  # a labelled folder uploaded to test it is not trained on
        if not own_dataset:
            st.caption(f"Evaluated on {markdown_literal(shown.get('dataset') or name, 60)}, a labelled folder the "
                       f"run was not scored on; the run's own evaluation is kept"
                       + (" and can be chosen above." if evaluation is not None else "."))
            if _same_folder(shown.get("root"), run.read_split().get("root")):
                st.warning("This is the dataset the run was trained on: its scores include photos the model learned "
                           "from.", icon=":material/info:")
        summary(shown)
        cell = confusion(shown, key=f"{run.run_id}_{name}")
        if cell is not None:
            with st.container(key="cell_photos"):
                cell_section(shown, cell, key=f"{run.run_id}_{name}", editable=own_dataset)
        calibration_section(shown, run)
        mistakes(shown, editable=own_dataset)
    test_folder_section(run, busy=view.active)
    if evaluation is not None:
        export_section(run)
        report_download(run)


def _same_folder(a: str | None, b: str | None) -> bool:
    try:
        return bool(a and b) and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ test folders
EVALUATED_UPLOAD_KEY = "evaluated_test_upload"  # the .zip upload last evaluated (not again on every rerun)
TEST_FOLDER_ERROR_KEY = "test_folder_error"  # a refused folder upload's sentence, shown after the picker redraws


def test_folder_section(run, busy: bool) -> None:
    """Evaluate the run on a labelled test folder (uploaded, or a dataset of this workspace): saved as a named
    evaluation beside the run's own, then shown."""
    if not profile.is_train_profile():
        return
    st.subheader("Evaluate on a labelled test folder")
    st.caption("A folder with one sub-folder of photos per class: all or some of the run's classes, and no others. "
               "Every photo in it is scored; the result is saved beside the run's own evaluation (which stays as "
               "it is) and can be chosen in 'Evaluation shown' above.")
    if busy:
        st.caption("The run is still training; evaluate it when it has finished.")
        return
    from core.data.ingest import list_datasets, upload_limits

    folder_tab, zip_tab, earlier_tab = st.tabs(["Upload a folder", "Upload a .zip", "A dataset of this workspace"])
    workspace = current_workspace()
    limits = upload_limits()  # the Data page's: an upload here is unpacked by the same core.data.ingest checks
    with folder_tab:
        from pages._folder_upload import folder_picker, forget

        per_file = st.get_option("server.maxUploadSize") * 1024**2
        max_bytes, rule = per_file, "the server's maxUploadSize"
        if limits.max_total_bytes < max_bytes:
            max_bytes, rule = limits.max_total_bytes, "STUDIO_MAX_UPLOAD_MB, the limit on what one upload unpacks to"
        quota_left = workspace.quota_left()
        if quota_left is not None and quota_left < max_bytes:
            max_bytes, rule = quota_left, "what is left of your workspace's quota; the Workspace page frees space"
        upload = folder_picker(max_bytes, rule, limits.max_files)
        if st.session_state.get(TEST_FOLDER_ERROR_KEY):
            st.error(st.session_state[TEST_FOLDER_ERROR_KEY], icon=":material/error:")
        st.session_state.pop(TEST_FOLDER_ERROR_KEY, None)
        limits_caption(limits)
        if upload is not None:
            from core.data.upload_manifest import ingest_folder_archive

            before = set(list_datasets(workspace.datasets_dir()))
            try:
                with st.spinner(f"Unpacking {upload.name}…"):
                    folder = ingest_folder_archive(upload, upload.name, workspace.datasets_dir()).folder
            except StudioError as err:
                forget(upload)
                st.session_state[TEST_FOLDER_ERROR_KEY] = str(err)
                st.rerun()
            forget(upload)
            problem = evaluate_on(run, folder, Path(upload.name).stem)
            st.session_state[TEST_FOLDER_ERROR_KEY] = problem
            if problem is not None:
                drop_new_upload(folder, before)
            st.rerun()  # redraws the picker with a fresh uploader, so it stops waiting for the server
    with zip_tab:
        upload = st.file_uploader("Choose a .zip of the test folder", type=["zip"], key="test_zip")
        limits_caption(limits)
        if upload is not None and st.session_state.get(EVALUATED_UPLOAD_KEY) != upload.file_id:
            from core.data.ingest import ingest_zip

            before = set(list_datasets(workspace.datasets_dir()))
            try:
                with st.spinner(f"Unpacking {upload.name}…"):
                    folder = ingest_zip(upload, upload.name, destination=workspace.datasets_dir())
            except StudioError as err:
                show_error(err)
            else:
                st.session_state[EVALUATED_UPLOAD_KEY] = upload.file_id
                problem = evaluate_on(run, folder, Path(upload.name).stem)
                if problem is not None:
                    drop_new_upload(folder, before)
                show_problem(problem)
    with earlier_tab:
        earlier = list_datasets(workspace.datasets_dir())
        if not earlier:
            st.caption("No dataset has been uploaded to this workspace yet.")
        else:
            chosen = st.selectbox("Dataset", earlier, format_func=lambda p: shorten(p.name), key="test_dataset")
            if st.button("Evaluate on this dataset", key="evaluate_on_dataset"):
                show_problem(evaluate_on(run, chosen, chosen.name))


def drop_new_upload(folder: Path, before: set[Path]) -> None:
    """A test folder refused for evaluation is not kept in the workspace (it would count against the visitor's
    quota), unless it was there before this upload (then it is a dataset the visitor uploaded on purpose)."""
    import shutil

    if folder not in before:
        shutil.rmtree(folder, ignore_errors=True)


def limits_caption(limits) -> None:
    """The upload limits (the Data page's), short, with the whole rule in the tooltip."""
    st.caption(f"Limits: up to {limits.max_files:,} files and {limits.max_total_bytes / 1024**2:,.0f} MB unpacked "
               "per upload, as on the Data page.", help=limits.describe())


def evaluate_on(run, folder: Path, title: str) -> str | None:
    """Score every photo of `folder` with the run's model (a progress bar meanwhile) and save it as a named
    evaluation, to be shown next; or the sentence saying why not (e.g. a class the run does not know)."""
    from core.results.evaluate import evaluate_run

    bar = st.progress(0.0, text="Reading the photos…")

    def report(stage: str, done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        bar.progress(min(fraction, 1.0), text=f"{'Reading' if stage == 'decoding' else 'Scoring'} the photos: "
                                              f"{done:,} of {total:,}")

    try:
        result = evaluate_run(run, data=folder, name=folder.name, title=title, progress=report)
    except StudioError as err:
        bar.empty()
        subfolders = [p.name for p in folder.rglob("*") if p.is_dir()]  # the folder's class names, as given
        return literal_names(str(err), [*run.read_classes(), *subfolders], folders=[folder])
    except Exception as err:  # a damaged model file or an unreadable folder: report it, keep the page
        bar.empty()
        return markdown_literal(f"Run {run.run_id} could not be evaluated on {title} ({error_text(err)}).")
    st.session_state[SHOW_NEXT_KEY] = result["name"]  # the picker is drawn already: it takes this on the rerun
    return None


def show_problem(problem: str | None) -> None:
    """After evaluate_on: its refusal in one sentence, or the new evaluation shown (a rerun puts it on top)."""
    if problem is not None:
        st.error(problem, icon=":material/error:")
    else:
        st.rerun()


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
    cell = confusion(bundle.evaluation, key=f"bundle_{path.name}")
    if cell is not None:
        with st.container(key="cell_photos"):
            cell_section(bundle.evaluation, cell, key=f"bundle_{path.name}", editable=False)
    calibration_section(bundle.evaluation)
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
    from core.serving.bundle import DEFAULT_RUNTIME_FORMAT
    from core.serving.export import BUNDLES, FORMATS, exports_dir, read_parity

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
    from core.serving.bundle import DEFAULT_RUNTIME_FORMAT
    from core.serving.export import FORMATS, export_run, make_demo_bundle

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
        from core.data.augment import describe_spec  # albumentations: compare() runs only in the train profile

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


# ------------------------------------------------------------------------------------------------ two runs compared
PAIR_PARAM = "pair"  # ?pair=<number>: the experiment pair Compare opens on (Train's "Compare this pair")
MY_CHOICE = 0  # the pair picker's entry for two runs chosen by hand (pair numbers start at 1)
COMPARE_DATA_KEY = "compare_data"  # (run A, run B, folder): the labelled folder both runs were last scored on


def compare() -> None:
    """Two finished runs scored on the same photos (core.results.compare), then every run's numbers side by side."""
    if not profile.is_train_profile():
        st.caption("Comparing runs works on the runs trained in this workspace, which needs the train profile.")
        return
    if len(runs()) < 2:
        st.caption("Train a second run to compare runs here, or start an experiment pair on the Train page.")
        return
    two_runs()
    st.divider()
    side_by_side()


def finished_runs() -> list:
    """Runs that ended with a model and an evaluation, newest first: the ones a comparison can score."""
    finished = []
    for run in runs():
        view = jobs.run_view(run)
        if view.active or not view.has_model:
            continue
        try:
            if run.read_evaluation():
                finished.append(run)
        except RunDamaged:
            continue
    return finished


def pick_pair(found: list[pairs.Pair]) -> pairs.Pair | None:
    """The experiment pair to compare, from ?pair= (Train's "Compare this pair"), else the newest pair whose runs
    both finished; MY_CHOICE (None) lets the person choose two runs by hand. Keeps ?pair= in step."""
    numbers = [p.number for p in found]
    states = {p.number: pairs.pair_state(p) for p in found}
    wanted = st.query_params.get(PAIR_PARAM)
    if st.session_state.get("compare_pair") not in (MY_CHOICE, *numbers):  # first drawn (or its pair deleted)
        ready = next((n for n in numbers if states[n].comparable), MY_CHOICE)
        st.session_state["compare_pair"] = int(wanted) if wanted and wanted.isdigit() \
            and int(wanted) in (MY_CHOICE, *numbers) else ready
    by_number = {p.number: p for p in found}
    marks = {"ready": "both finished", "training": "still training", "unfinished": "cannot be compared"}

    def label(number: int) -> str:
        if number == MY_CHOICE:
            return "Two runs of my choice"
        return f"{by_number[number].title} ({marks[states[number].state]})"

    number = st.selectbox("Experiment pair", [*numbers, MY_CHOICE], format_func=label, key="compare_pair")
    if number == MY_CHOICE:
        # Kept as ?pair=0 rather than dropped: the page's tabs open on Compare while ?pair= is there, and a default
        # that changed under a person's eyes could move them to the other tab.
        if PAIR_PARAM in st.query_params and st.query_params[PAIR_PARAM] != str(MY_CHOICE):
            st.query_params[PAIR_PARAM] = str(MY_CHOICE)
        return None
    if st.query_params.get(PAIR_PARAM) != str(number):
        st.query_params[PAIR_PARAM] = str(number)
    return by_number[number]


def two_runs() -> None:
    """Choose runs A and B (an experiment pair, or two runs by hand) and show what core.results.compare says."""
    st.subheader("Two runs on the same photos")
    st.caption("Both runs are scored on the same test photos. The differences (B minus A) come with 95% intervals "
               "(a paired bootstrap over the photos) and McNemar's test on the photos only one of the two gets right, "
               "so a difference that chance alone could make is called so.")
    found = pairs.find_pairs(current_workspace(sync_address=False).runs_dir())
    pair = pick_pair(found) if found else None
    if pair is not None:
        state = pairs.pair_state(pair)
        if not state.comparable:
            (st.info if state.active else st.warning)(state.sentence, icon=":material/info:")
            if state.active:
                st.page_link(page_file("train"), label="Watch it on the Train page", icon=":material/model_training:")
            return
        first, second = pair.first, pair.second
        st.caption(f"{pair.title}: A is {pair.kind.labels[0]} ({id_text(first.run_id)}), B is "
                   f"{pair.kind.labels[1]} ({id_text(second.run_id)}); every other setting is the same.")
    else:
        finished = finished_runs()
        if len(finished) < 2:
            st.caption("Two runs that finished with an evaluation are needed; the others are listed below.")
            return
        ids = [r.run_id for r in finished]
        labels = {r.run_id: run_label(r) for r in finished}
        left, right = st.columns(2)
        a = left.selectbox("Run A", ids, index=0, format_func=labels.get, key="compare_a")
        b = right.selectbox("Run B", ids, index=1, format_func=labels.get, key="compare_b")
        if a == b:
            st.caption("Choose two different runs.")
            return
        first, second = finished[ids.index(a)], finished[ids.index(b)]
    data = other_folder(first, second)
    try:
        with st.spinner("Scoring both runs on the same photos…"):
            result = comparison(str(first.path), str(second.path), str(data) if data else None,
                                _stamp(first) + _stamp(second))
    except StudioError as err:
        st.warning(literal_names(str(err), [*_classes(first), *_classes(second)], [data] if data else []),
                   icon=":material/block:")
        return
    comparison_view(result, first, second)


def _classes(run) -> list[str]:
    try:
        return run.read_classes()
    except RunDamaged:
        return []


def _stamp(run) -> tuple:
    """When the run's model and its own evaluation last changed: a new one makes a new comparison. (Not its
    evaluations/ folder: a comparison on another folder writes there itself, and would then never be reused.)"""
    files = [run.file("model.keras"), run.file("evaluation.json")]
    return tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in files)


@st.cache_data(max_entries=16, show_spinner=False)
def comparison(first: str, second: str, data: str | None, stamp: tuple) -> dict:
    """core.results.compare.compare_runs, kept while neither run changes (`stamp`)."""
    from core.results.compare import compare_runs

    return compare_runs(RunDir(first), RunDir(second), data=Path(data) if data else None)


def other_folder(first, second) -> Path | None:
    """The labelled folder of this workspace both runs were last asked to be scored on, or None for the runs'
    own test photos; a select box and a button to choose one."""
    from core.data.ingest import list_datasets

    key = (first.run_id, second.run_id)
    saved = st.session_state.get(COMPARE_DATA_KEY)
    chosen = Path(saved[2]) if saved and saved[:2] == key and Path(saved[2]).is_dir() else None
    with st.expander("Score both on another labelled folder"):
        st.caption("A folder with one sub-folder of photos per class (all or some of the runs' classes), uploaded "
                   "as a dataset of this workspace (the Data page, or 'Evaluate on a labelled test folder' under "
                   "One run). Both runs score every photo in it.")
        folders = list_datasets(current_workspace(sync_address=False).datasets_dir())
        if not folders:
            st.caption("This workspace has no dataset to choose yet.")
        else:
            st.selectbox("Labelled folder", folders, format_func=lambda p: shorten(p.name), key="compare_folder")
            left, right = st.columns(2)
            # Callbacks: the choice is made before the page is drawn, so the buttons below already agree with it.
            left.button("Compare on this folder", key="compare_on_folder", on_click=lambda: st.session_state.update(
                {COMPARE_DATA_KEY: (*key, str(st.session_state["compare_folder"]))}))
            if chosen is not None:
                right.button("Back to the runs' own test photos", key="compare_own",
                             on_click=lambda: st.session_state.pop(COMPARE_DATA_KEY, None))
    if chosen is not None:
        st.caption(f"Scored on the labelled folder {markdown_literal(chosen.name, 60)} rather than the runs' own "
                   "test photos.")
    return chosen


def comparison_view(result: dict, first, second) -> None:
    """The verdict first, then the two differences (B minus A, as core.results.compare gives them) with their
    intervals, McNemar's test, the classes and the curves of both runs overlaid."""
    verdict = markdown_literal(result.get("verdict") or "")
    with st.container(key="compare_verdict"):
        (st.success if result.get("significant") else st.info)(f"**{verdict}**", icon=":material/balance:")
    photos, source = result.get("photos"), result.get("source")
    st.caption((f"Both runs scored on the same {photos:,} photos" if isinstance(photos, int) else
                "Both runs scored on the same photos") + (f" ({markdown_literal(Path(str(source)).name, 60)})"
                                                          if source else "") + ". Differences are B minus A.")
    if result.get("note"):
        st.caption(literal_names(str(result["note"]), [], [Path(str(r)) for r in (result.get("roots") or {}).values()
                                                           if r]))
    if result.get("warning"):  # e.g. scored on photos the runs trained on
        st.warning(markdown_literal(str(result["warning"])), icon=":material/warning:")
    cols = st.columns(4)
    for col, key, title in ((cols[0], "accuracy", "Accuracy"), (cols[1], "macro_f1", "Macro F1")):
        figure = result.get(key) or {}
        col.metric(f"{title}: B − A", _points(figure.get("difference")),
                   help=f"{title} of A {_share_text(figure.get('a'))}, of B {_share_text(figure.get('b'))}.")
        col.caption(f"95% interval {_interval(figure.get('ci95'))}")
    mcnemar = result.get("mcnemar") or {}
    p_value = mcnemar.get("p_value")
    cols[2].metric("McNemar's p", f"{p_value:.3g}" if isinstance(p_value, (int, float)) else "n/a",
                   help="How likely a split at least this uneven between the photos only A gets right and those "
                        "only B gets right would be if the two runs were equally good.")
    cols[2].caption(f"Only A right: {mcnemar.get('a_only_right', 'n/a')} · only B right: "
                    f"{mcnemar.get('b_only_right', 'n/a')}")
    cols[3].metric("A real difference", "yes" if result.get("significant") else "no",
                   help=result.get("significance_rule") or "When the accuracy interval leaves out 0 and McNemar's p "
                                                           "is below 0.05.")
    st.dataframe(cells([_run_row(name, entry, result) for name, entry in zip(("A", "B"), _entries(result))]),
                 hide_index=True, width="stretch")
    per_class = result.get("per_class") or []
    if per_class:
        left, right = st.columns([3, 2])
        left.plotly_chart(charts.class_difference_figure(per_class), key="compare_classes")
        table = cells([{"class": row.get("class"), "recall A": row.get("recall_a"), "recall B": row.get("recall_b"),
                        "B − A (points)": 100 * row["difference"] if isinstance(row.get("difference"), (int, float))
                        else None} for row in per_class])
        right.dataframe(table.style.format({"recall A": "{:.1%}", "recall B": "{:.1%}", "B − A (points)": "{:+.1f}"},
                                           na_rep="—"), hide_index=True, width="stretch")
    curves = _curves(result, (first, second), _entries(result))
    if any(curves.values()):
        left, right = st.columns(2)
        left.plotly_chart(charts.compare_figure(curves, "val_accuracy"), key="compare_pair_accuracy")
        right.plotly_chart(charts.compare_figure(curves, "val_loss"), key="compare_pair_loss")
        fitted = [name for name, rows in curves.items() if any("l2" in row for row in rows)]
        if fitted:  # an exact head fit logs one point per L2 strength tried, not per epoch
            st.caption(f"For {', '.join(markdown_literal(str(n), 60) for n in fitted)} the points are the exact head "
                       "fit's L2 strengths, one point each, scored on held-out photos (out of fold when "
                       "cross-validated): not epochs, so a loss that rises along them compares penalties, not "
                       "overfitting over time. The verdict above is what to compare.")


def _entries(result: dict) -> list[dict]:
    """Run A's and run B's descriptions ({"a": ..., "b": ...}, or a list in that order)."""
    given = result.get("runs")
    if isinstance(given, dict):
        given = [given.get("a"), given.get("b")]
    if not isinstance(given, (list, tuple)) or len(given) != 2:
        return [{}, {}]
    return [entry if isinstance(entry, dict) else {} for entry in given]


def _run_row(name: str, entry: dict, result: dict) -> dict:
    """One run of the comparison as a table row: which run, what it is, its two scores and its settings that
    differ from the other run's."""
    row = {"": name, "run": entry.get("id"), "what": entry.get("label") or entry.get("backbone"),
           "accuracy": _share_text((result.get("accuracy") or {}).get(name.lower())),
           "macro F1": _share_text((result.get("macro_f1") or {}).get(name.lower()))}
    settings = entry.get("settings")
    if isinstance(settings, dict) and settings:
        row["settings that differ"] = ", ".join(f"{k}: {shorten(v if isinstance(v, str) else repr(v), 40)}"
                                                for k, v in settings.items() if k != "data")
    return row


def _curves(result: dict, members: tuple, entries: list[dict]) -> dict[str, list[dict]]:
    """Each run's epoch lines, keyed 'A · its label' for the legend: from the comparison when it carries them
    ({"a": ..., "b": ...}, or a list in run order), else read from the run folders."""
    given = result.get("curves")
    out = {}
    for index, (name, run, entry) in enumerate(zip(("A", "B"), members, entries)):
        records = None
        if isinstance(given, (list, tuple)) and len(given) == 2:
            records = given[index]
        elif isinstance(given, dict):
            records = given.get(name.lower(), given.get(run.run_id))
        if not isinstance(records, list):
            records = run.read_metric_lines().records
        out[f"{name} · {entry.get('label') or run.run_id}"] = charts.epoch_rows([r for r in records
                                                                               if isinstance(r, dict)])
    return out


def _points(value) -> str:
    return f"{100 * value:+.1f} points" if isinstance(value, (int, float)) else "n/a"


def _share_text(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "n/a"


def _interval(interval) -> str:
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(isinstance(v, (int, float))
                                                                        for v in interval):
        return f"{100 * interval[0]:+.1f} to {100 * interval[1]:+.1f} points"
    return "n/a"


def side_by_side() -> None:
    """Overlay validation curves of several runs and list their final numbers and settings."""
    everything = runs()
    st.subheader("All runs side by side")
    ids = [r.run_id for r in everything]
    # Preselected: the newest runs with a usable model (core.training.jobs.model_verdict); others can still be added.
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
# Train's "Compare this pair" opens the page on the comparison (?pair=N).
single, several = st.tabs(["One run", "Compare runs"], default="Compare runs" if st.query_params.get(PAIR_PARAM)
                          else None)
with single:
    single_run()
with several:
    compare()
