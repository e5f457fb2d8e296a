"""Classify: photos (uploaded or from the camera) -> top-k classes and where the model looked.

A workspace run classifies with its Keras model (heatmaps included); a demo bundle with LiteRT/ONNX Runtime through
core.bundle.BundleClassifier, whose preprocessing is core.predict.Classifier's own, so the answers are the same.
"""

import time

import pandas as pd
import streamlit as st

from core import StudioError, charts
from core.cam import heatmap_for
from core.images import IMAGE_EXTENSIONS, ImageError, decode_image
from pages._common import ensure_app_shell, load_bundle, load_classifier, no_model_message, pick_model, show_error

IMAGE_TYPES = [ext.lstrip(".") for ext in IMAGE_EXTENSIONS]
MAX_DETAILED = 12  # photos shown with chart and heatmap; the table lists all of them


def read_uploads(uploads) -> tuple[list[tuple[str, object]], list[str]]:
    """Decoded (name, image) pairs and one message per unreadable upload (which never stops the rest)."""
    images, problems = [], []
    for upload in uploads:
        try:
            images.append((upload.name, decode_image(upload.getvalue(), upload.name)))
        except ImageError as err:
            problems.append(str(err))
    return images, problems


def results_table(names: list[str], results: list[list[dict]]) -> pd.DataFrame:
    """One row per photo: predicted class, confidence and the top-k as text."""
    return pd.DataFrame([{"file": name, "predicted": top[0]["class"], "confidence": round(top[0]["probability"], 4),
                          "top_k": "; ".join(f"{t['class']} {t['probability']:.3f}" for t in top)}
                         for name, top in zip(names, results)])


def show_one(classifier, name: str, image, top: list[dict], with_heatmap: bool) -> None:
    """The photo, its heatmap for the predicted class, and the top-k bars."""
    st.markdown(f"**{name}**: {top[0]['class']} ({top[0]['probability']:.1%})")
    cols = st.columns([1, 1, 2])
    cols[0].image(image, caption="photo", width="stretch")
    if with_heatmap:
        index = classifier.classes.index(top[0]["class"])
        overlay = heatmap_for(classifier.model, image, index, classifier.image_size)
        cols[1].image(overlay, caption=f"where it saw {top[0]['class']}", width="stretch")
    cols[2].plotly_chart(charts.top_k_figure(top), key=f"topk_{name}")


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
    st.error(f"The model of {choice.name} cannot be loaded ({type(err).__name__}: {str(err)[:300]}). "
             "Pick another one, or train again.")
    st.stop()
# Heatmaps read the Keras model's feature map; an exported model (a demo bundle) has no Keras model to ask.
can_heatmap = choice.run is not None
st.caption(f"{len(classifier.classes)} classes: {', '.join(classifier.classes)} · input {classifier.image_size} px")
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
if controls[2].toggle("Use the camera", key="use_camera"):
    shot = st.camera_input("Take a photo")
    uploads = list(uploads or []) + ([shot] if shot is not None else [])

images, problems = read_uploads(uploads or [])
for problem in problems:
    st.warning(f"Skipped: {problem}")
if images:
    started = time.perf_counter()
    results = classifier.classify_arrays([image for _, image in images], top_k=int(top_k))
    seconds = time.perf_counter() - started
    names = [name for name, _ in images]
    st.caption(f"Classified {len(images)} photo(s) in {seconds:.2f} s.")
    table = results_table(names, results)
    st.dataframe(table, hide_index=True, width="stretch")
    st.download_button("Download results as CSV", table.to_csv(index=False).encode("utf-8"),
                       file_name=f"predictions-{choice.name}.csv", mime="text/csv", icon=":material/download:")
    for (name, image), top in list(zip(images, results))[:MAX_DETAILED]:
        show_one(classifier, name, image, top, heatmaps)
    if len(images) > MAX_DETAILED:
        st.caption(f"Charts and heatmaps are shown for the first {MAX_DETAILED} photos; the table has them all.")
