"""Augment: choose a preset or switch transforms, and preview augmented copies of real images."""

import json

import streamlit as st

from core import StudioError
from core.data.images import ImageError, read_image, resize_for_model
from core.data.previews import EDITABLE_TRANSFORMS, augmented_copies, editable_state, preview_images, spec_from_editor
from pages._common import literal_names, require_train_profile
from pages._loaders import need_dataset
from pages._session import current_augmentation, current_workspace, ensure_app_shell

PREVIEW_SIZE = 224
COPIES = 5
CUSTOM = "custom"


@st.cache_data(max_entries=64, show_spinner=False)
def model_sized(path: str) -> object:
    """One dataset image at the preview size, as training would see it before augmentation."""
    try:
        return resize_for_model(read_image(path, target_size=PREVIEW_SIZE), PREVIEW_SIZE)
    except ImageError:
        return None


@st.cache_data(max_entries=64, show_spinner=False)
def preview_copies(path: str, spec_json: str, seed: int) -> list:
    """Augmented copies of one preview image, cached: revisiting the page or re-running it with the same spec
    and seed costs nothing (the spec's size is bounded by core.data.augment.check_bounds)."""
    image = model_sized(path)
    return augmented_copies(image, json.loads(spec_json), COPIES, seed=seed) if image is not None else []


def spec_texts(spec: object, depth: int = 0) -> list[str]:
    """Every text in a spec (transform and parameter names, values), so an error quoting one shows it as written;
    a few levels are enough (core.data.augment refuses deeper specs) and keep a hostile nesting from recursing."""
    if isinstance(spec, str):
        return [spec]
    if depth > 6:
        return []
    if isinstance(spec, dict):
        return [text for key, value in spec.items() for text in (str(key), *spec_texts(value, depth + 1))]
    if isinstance(spec, list):
        return [text for item in spec for text in spec_texts(item, depth + 1)]
    return []


def custom_editor(saved: list) -> list:
    """Switches, probabilities and main parameters for each editable transform; returns the spec."""
    state = editable_state(saved)
    extra = [e for e in saved if e.get("name") not in EDITABLE_TRANSFORMS]
    choices = {}
    cols = st.columns(3)
    for i, (name, params) in enumerate(EDITABLE_TRANSFORMS.items()):
        with cols[i % 3].container(border=True):
            enabled = st.toggle(name, value=state[name]["enabled"], key=f"aug_on_{name}")
            p = st.slider("probability", 0.0, 1.0, state[name]["p"], 0.05, key=f"aug_p_{name}", disabled=not enabled)
            values = {}
            for key, (_, low, high, step) in params.items():
                kind = int if all(float(v).is_integer() for v in (low, high, step)) else float
                values[key] = st.slider(key, kind(low), kind(high), kind(state[name]["params"][key]), kind(step),
                                        key=f"aug_{name}_{key}", disabled=not enabled)
            choices[name] = {"enabled": enabled, "p": p, "params": values}
    if extra:
        st.caption(f"Also kept from the JSON spec: {describe_spec(extra)}")
    return spec_from_editor(choices, extra)


def json_editor(spec: list) -> None:
    """Edit the spec as JSON (groups like OneOf included); applying it switches to the custom editor."""
    with st.expander("Edit the spec as JSON"):
        text = st.text_area("Augmentation spec", json.dumps(spec, indent=1), height=220, key="aug_json")
        if st.button("Apply JSON"):
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as err:
                st.error(f"That is not valid JSON ({err.msg} at line {err.lineno}).")
                return
            except RecursionError:
                st.error("That JSON is nested too deeply; a spec is a list of transforms, at most 3 levels deep.")
                return
            try:
                parsed = resolve_spec(raw)
            except StudioError as err:
                st.error(literal_names(str(err), spec_texts(raw)))
                return
            current_workspace(sync_address=False).save_state(augmentation=parsed)
            for key in [k for k in st.session_state if str(k).startswith("aug_")]:
                del st.session_state[key]  # let the switches show the applied spec
            st.session_state["aug_mode"] = CUSTOM
            st.rerun()


def preview(dataset, spec: list) -> None:
    """Original and augmented copies of a few images from different classes."""
    seed = st.session_state.setdefault("aug_seed", 0)
    left, right = st.columns([1, 4])
    if left.button("Re-draw", icon=":material/casino:", help="New random draws with a new seed"):
        st.session_state["aug_seed"] = seed = seed + 1
    right.caption(f"Seed {seed}. Training uses the same pipeline on every training image, each epoch anew.")
    for rel in preview_images(dataset, rows=3, seed=seed):
        image = model_sized(str(dataset.root / rel))
        if image is None:
            continue
        copies = preview_copies(str(dataset.root / rel), json.dumps(spec, sort_keys=True), seed) if spec else []
        captions = ["original"] + [f"augmented {i + 1}" for i in range(len(copies))]
        st.image([image] + copies, caption=captions, width=150)


ensure_app_shell()
st.title("Augment")
require_train_profile("Previewing augmentations")
# albumentations exists only in the train profile, so it is imported after the check above.
from core.data.augment import PRESETS, describe_spec, resolve_spec  # noqa: E402

st.markdown("Augmentation shows the model slightly changed copies of each training image, so it learns the "
            "flower, not the photo. The spec chosen here is what training uses and is saved in the run.")
dataset = need_dataset()
saved = current_augmentation()
try:
    resolve_spec(saved)
except StudioError as err:  # a spec saved before today's limits (or edited by hand): never run it again
    st.warning(literal_names(f"The saved augmentation was set back to the light preset: {err}", spec_texts(saved)),
               icon=":material/restart_alt:")
    saved = "light"
    current_workspace(sync_address=False).save_state(augmentation=saved)
    st.session_state.pop("aug_mode", None)
modes = list(PRESETS) + [CUSTOM]
if "aug_mode" not in st.session_state:
    st.session_state["aug_mode"] = saved if isinstance(saved, str) and saved in PRESETS else CUSTOM
mode = st.radio("Start from", modes, horizontal=True, key="aug_mode",
                format_func=lambda m: {"none": "none", "light": "light (default)", "seed": "seed recipe",
                                       CUSTOM: "custom"}[m])
try:
    if mode == CUSTOM:
        base = resolve_spec(saved)  # a preset's entries become the switches' starting point
        spec = resolve_spec(custom_editor(base))
        if spec != saved:
            current_workspace(sync_address=False).save_state(augmentation=spec)
    else:
        spec = resolve_spec(mode)
        if saved != mode:
            current_workspace(sync_address=False).save_state(augmentation=mode)
except StudioError as err:
    st.error(literal_names(str(err), spec_texts(saved)))
    st.stop()
st.markdown(f"**Training will use:** {describe_spec(spec)}")
json_editor(spec)
if dataset is not None and dataset.report.usable_images:
    st.subheader("Preview")
    preview(dataset, spec)
