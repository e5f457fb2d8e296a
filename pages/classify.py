"""Classify: photos (uploaded or from the camera) -> top-k classes and where the model looked.

A workspace run classifies with its Keras model (heatmaps included); a demo bundle with LiteRT/ONNX Runtime through
core.serving.bundle.BundleClassifier, whose preprocessing is core.serving.predict.Classifier's own, so the answers are the same.
"""

import re
import time

import pandas as pd
import streamlit as st

from core import StudioError
from core.results import charts
from core.data.images import IMAGE_EXTENSIONS
from core.serving.predict import (MAX_PHOTOS_PER_BATCH, NamedPhoto, decode_uploads, is_unknown, result_rows, results_csv,
                          unknown_reason)
from core.base.runs import RunDamaged
from core.base.safetext import markdown_literal, plain
from pages._common import show_error
from pages._loaders import load_bundle, load_classifier
from pages._model_choice import no_model_message, pick_model
from pages._session import ensure_app_shell

IMAGE_TYPES = [ext.lstrip(".") for ext in IMAGE_EXTENSIONS]
MAX_DETAILED = 12  # photos shown with chart and heatmap; the table lists all of them
NAME_CHARS = 60  # longer names are cut in the middle on the page; the full name is in the tooltip


def code_literal(name: str) -> str:
    """A name as inline code: Markdown shows a code span verbatim (no emphasis, math or HTML), and the name stays
    readable as typed, dots and dashes included. The fence is longer than any run of backticks in the name."""
    text = plain(name)
    fence = "`" * (1 + max([0] + [len(run) for run in re.findall(r"`+", text)]))
    return f"{fence} {text} {fence}" if text.startswith("`") or text.endswith("`") else f"{fence}{text}{fence}"


def show_one(classifier, item: NamedPhoto, top: list[dict], with_heatmap: bool, unknown: str | None = None) -> None:
    """The photo, its heatmap for the predicted class, and the top-k bars; `unknown` (why) when its best guess is
    below the run's "unknown" threshold."""
    label = markdown_literal(top[0]["class"], NAME_CHARS)
    answer = f"{label} ({top[0]['probability']:.1%})" if unknown is None else \
        f"unknown ({unknown}); best guess {label} ({top[0]['probability']:.1%})"
    st.markdown(f"**{markdown_literal(item.name, NAME_CHARS)}**: {answer}",
                help=markdown_literal(item.name) if len(plain(item.name)) > NAME_CHARS else None)
    cols = st.columns([1, 1, 2])
    cols[0].image(item.photo.thumbnail, caption="photo", width="stretch")
    if with_heatmap:
        class_index = classifier.classes.index(top[0]["class"])
        # Computed from the model's own input (what it classified); shown at that size, stretched.
        overlay = classifier.heatmap(item.photo.model_input, class_index)
        cols[1].image(overlay, caption=f"where it saw {label}", width="stretch")
    # Keyed by position: two uploads may share a name (IMG_0001.jpg from two folders).
    cols[2].plotly_chart(charts.top_k_figure(top), key=f"topk_{item.position}")


ensure_app_shell()
st.title("Classify")
choice = pick_model("Model (run or demo bundle)", key="classify_run")
if choice is None:
    no_model_message()
    st.stop()
try:
    classifier = load_classifier(choice.run) if choice.run is not None else load_bundle(choice.bundle_path).classifier
except StudioError as err:
    show_error(err)
    st.stop()
except Exception as err:  # a damaged file, or code in it that Keras safe mode refuses to run: say so, don't crash
    st.error(f"The model of {markdown_literal(choice.name)} cannot be loaded ({type(err).__name__}: {str(err)[:300]}). "
             "Pick another one, or train again.")
    st.stop()
# Heatmaps read the Keras model's feature map; an exported model (a demo bundle) has no Keras model to ask.
can_heatmap = choice.run is not None
class_list = ", ".join(markdown_literal(name, NAME_CHARS) for name in classifier.classes)
st.caption(f"{len(classifier.classes)} classes: {class_list} · input {classifier.image_size} px")
controls = st.columns([3, 1, 1])
uploads = controls[0].file_uploader("Photos to classify", type=IMAGE_TYPES, accept_multiple_files=True,
                                    key="photos")
top_k = controls[1].number_input("Top-k", 1, max(1, len(classifier.classes)), min(3, len(classifier.classes)),
                                 key="top_k")
if can_heatmap:
    heatmaps = controls[2].toggle("Heatmaps", value=True, key="heatmaps",
                                  help="Class-activation map: red where the model found the most evidence.")
else:
    heatmaps = False
    st.caption("Heatmaps need the run's Keras model (train profile); a demo bundle shows predictions only.")
calibration = None
if choice.run is not None:
    try:
        calibration = choice.run.read_calibration()
    except RunDamaged as err:  # only the threshold is lost: classifying goes on without it
        st.caption(markdown_literal(str(err)))
threshold = None
if calibration is not None and controls[2].toggle(
        f"Unknown < {calibration['threshold']:.0%}", value=True, key="use_unknown",
        help=f"A photo whose best guess is {unknown_reason(calibration)} reads \"unknown\" (the threshold keeps "
             f"{calibration['kept_correct']:.0%} of the right answers on those {calibration['photos']} photos). "
             "Turn it off to see every best guess as the answer."):
    threshold = float(calibration["threshold"])
if controls[2].toggle("Use the camera", key="use_camera"):
    shot = st.camera_input("Take a photo")
    uploads = list(uploads or []) + ([shot] if shot is not None else [])

uploads = list(uploads or [])
# Decoded straight to the model's input size and a preview (never the full-size photo), within the batch's limits.
batch = decode_uploads(uploads, classifier.image_size, thumbnails=MAX_DETAILED)
if batch.not_classified:
    st.warning(f"{MAX_PHOTOS_PER_BATCH} photos are classified at a time: the last {batch.not_classified} of the "
               f"{len(uploads)} uploaded were not classified. Remove some and classify the rest in another batch.")
for name, reason in batch.problems:
    st.warning(f"Skipped {code_literal(name)}: {markdown_literal(reason)}")
if batch.photos:
    started = time.perf_counter()
    results = classifier.classify_arrays([item.photo.model_input for item in batch.photos], top_k=int(top_k))
    seconds = time.perf_counter() - started
    st.caption(f"Classified {len(batch.photos)} photo(s) in {seconds:.2f} s.")
    rows = result_rows([item.name for item in batch.photos], results, threshold)
    # A dataframe cell is plain text (no Markdown); the CSV's text cells are neutralised for spreadsheets.
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.download_button("Download results as CSV", results_csv(rows), file_name=f"predictions-{choice.name}.csv",
                       mime="text/csv", icon=":material/download:")
    unknowns = sum(is_unknown(top, threshold) for top in results)
    if unknowns:
        st.caption(f"{unknowns} of {len(results)} photo(s) read unknown: {unknown_reason(calibration)}.")
    for item, top in list(zip(batch.photos, results))[:MAX_DETAILED]:
        show_one(classifier, item, top, heatmaps, unknown_reason(calibration) if is_unknown(top, threshold) else None)
    if len(batch.photos) > MAX_DETAILED:
        st.caption(f"Charts and heatmaps are shown for the first {MAX_DETAILED} photos; the table has them all.")
