"""Train: settings with quick defaults, Start launches the trainer process, then live progress and curves."""

from pathlib import Path

import streamlit as st

from core import StudioError
from core.results import charts
from core.training import jobs, pairs
from core.base.backbones import BACKBONES, DEFAULT_BACKBONE
from core.base.config import (OPTIMIZERS, PRESET_SUMMARIES, PRESETS, SGD_MOMENTUM, TrainConfig, all_defaults,
                               default_preset)
from core.training.estimate import estimate_against_actual, estimate_run, planned_counts
from core.training.hosting import training_limits
from core.base.progress import format_seconds
from core.data.imagecache import cache_size, clear as clear_cache, default_cache_dir
from core.base.runs import RunDamaged, RunDir
from core.base.safetext import markdown_literal
from core.base.workspace import workspace_dir
from pages._common import literal_names, require_train_profile, show_error
from pages._loaders import device_info, need_dataset, overrides_file
from pages._session import current_augmentation, current_workspace, ensure_app_shell, remember_run, selected_run_id
from pages._common import page_file

POLL_SECONDS = 2.0
SEEN_STATE_KEY = "train_seen_state"  # (run id, state, active) at the last redraw, to notice a run changing state
PAIR_SEEN_KEY = "train_seen_pair"  # (pair number, each run's state) at the last redraw of the newest pair
IMAGE_SIZES = [96, 128, 160, 192, 224, 240, 256, 260, 288, 300, 320, 380, 384, 456, 528, 600]
LEARNING_RATES = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
DEFAULTS = TrainConfig()


def saved_setting(state: dict, key: str, default: float) -> float:
    """A number the Data page saved in the workspace (split share, seed), or the default when it is not one:
    a hand-edited state.json must not break this page (Start then checks its range like any setting)."""
    value = state.get(key, default)
    return value if isinstance(value, type(default)) and not isinstance(value, bool) else default


def follow_backbone_size(sizes: list[int]) -> None:
    """A newly chosen backbone brings its own recipe size: the slider kept the old one, so picking the 128 px
    baseline CNN after Lite0 trained it at 288 px, about 5x the time (found in a new user's walk)."""
    recipe = BACKBONES[st.session_state["backbone"]].recipe_size
    st.session_state["image_size"] = recipe if recipe in sizes else min(sizes, key=lambda s: abs(s - recipe))


def preset_choice(accelerator: str) -> str:
    """Quick or Best, named with what each does; the device's default is preselected (Best on a GPU)."""
    names = list(PRESETS)
    return st.radio("Recipe", names, index=names.index(default_preset(accelerator)), horizontal=True,
                    key="preset", format_func=str.capitalize, captions=[PRESET_SUMMARIES[n] for n in names],
                    help="Each preset is a set of the settings below; change any of them after choosing one. "
                         "Switching the preset sets them back to its values.")


def preset_key(name: str, preset: str) -> str:
    """A widget's key under a preset: switching the preset makes fresh widgets that start from its values."""
    return name if preset == "quick" else f"{name}@{preset}"


def settings(dataset_root: Path, accelerator: str) -> dict:
    """The training settings as config values; defaults make Start alone work."""
    preset = preset_choice(accelerator)
    chosen = {**DEFAULTS.to_dict(), **PRESETS[preset]}  # the preset's values start the widgets it sets
    state = current_workspace().load_state()
    limits = training_limits()  # a hosted demo offers only what a visitor may start
    if limits is not None:
        st.caption(limits.describe())
    names = [n for n in BACKBONES if limits is None or n in limits.backbones]
    sizes = [s for s in IMAGE_SIZES if limits is None or s <= limits.max_image_size]
    left, middle, right = st.columns(3)
    backbone = left.selectbox("Backbone", names, index=names.index(DEFAULT_BACKBONE) if DEFAULT_BACKBONE in names
                              else 0, key="backbone", on_change=follow_backbone_size, args=(sizes,),
                              format_func=lambda n: f"{BACKBONES[n].label} · {BACKBONES[n].native_size} px")
    notes = getattr(BACKBONES[backbone], "notes", "")  # what a backbone is for, when the registry says
    if notes:
        left.caption(notes[:1].upper() + notes[1:] + ".")
    native = BACKBONES[backbone].native_size
    recipe = BACKBONES[backbone].recipe_size
    size = middle.select_slider("Image size (pixels)", sizes, value=recipe if recipe in sizes else sizes[-1],
                                key="image_size",
                                help=f"Native size of {BACKBONES[backbone].label}: {native} px. Smaller trains "
                                     "faster; larger sees more detail.")
    middle.caption(f"Native size: {native} px" + (f" · recipe default: {recipe} px (frozen features are better a "
                                                   "little above the training size)" if recipe != native else ""))
    most_head = limits.max_head_epochs if limits else 200
    if BACKBONES[backbone].from_scratch:  # no frozen base: one phase over the whole network, no fine-tuning
        head_epochs = right.number_input("Epochs (the whole network, from scratch)", 1, most_head,
                                         min(all_defaults(backbone)["head_epochs"], most_head), key="scratch_epochs",
                                         help="An upper bound: early stopping ends sooner when the validation loss "
                                              "stops improving.")
        right.caption("No fine-tuning: a network trained from random weights has no pretrained base to unfreeze.")
        finetune_epochs = 0
    else:
        head_epochs = right.number_input("Head epochs (phase 1, frozen base)", 1, most_head, DEFAULTS.head_epochs,
                                         key="head_epochs",
                                         help="With cached features (the default) the head is fitted exactly in "
                                              "seconds and this only needs to be above 0; with head_mode 'images' "
                                              "it is an upper bound that early stopping ends sooner.")
        most_finetune = limits.max_finetune_epochs if limits else 100
        finetune_epochs = right.number_input("Fine-tune epochs (phase 2)", 0, most_finetune,
                                             min(chosen["finetune_epochs"], most_finetune),
                                             key=preset_key("finetune_epochs", preset),
                                             help="0 trains the head only (quick on a CPU). Fine-tuning unfreezes the "
                                                  "top of the backbone at a ~100x lower learning rate.")
    with st.expander("More settings"):
        a, b, c = st.columns(3)
        batch_size = a.select_slider("Batch size (per device)", ["auto", 4, 8, 16, 32, 64, 128, 256, 512], "auto",
                                     key="batch_size",
                                     help="auto: 32 on a CPU; on a GPU the largest that fits its memory.")
        scratch = BACKBONES[backbone].from_scratch  # one phase over every layer: no head, no fine-tuning
        head_lr = a.select_slider("Learning rate" if scratch else "Head learning rate", LEARNING_RATES,
                                  DEFAULTS.head_lr, key="head_lr", format_func=lambda v: f"{v:g}",
                                  help="The rate of every epoch of a network trained from scratch." if scratch else
                                  "The rate of the head's epochs (head_mode 'images'); the default exact fit on "
                                  "cached features has none.")
        finetune_lr = DEFAULTS.finetune_lr
        if not scratch:
            finetune_lr = a.select_slider("Fine-tune learning rate", LEARNING_RATES, chosen["finetune_lr"],
                                          key=preset_key("finetune_lr", preset), format_func=lambda v: f"{v:g}")
        optimizer = a.selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(DEFAULTS.optimizer), key="optimizer",
                                format_func={"adam": "Adam", "sgd": f"SGD with momentum {SGD_MOMENTUM:g}"}.get,
                                help="For every phase that trains over images (fine-tuning, a head on images, a "
                                     "network from scratch); SGD usually wants a ~10x higher learning rate.")
        unfreeze = DEFAULTS.unfreeze_stages if scratch else \
            b.slider("Stages to unfreeze when fine-tuning", 0, 7, chosen["unfreeze_stages"],
                     key=preset_key("unfreeze", preset))
        patience = b.slider("Early stopping patience (epochs)", 1, 20,
                            all_defaults(backbone)["early_stopping_patience"] if scratch
                            else chosen["early_stopping_patience"],
                            key="scratch_patience" if scratch else preset_key("patience", preset))
        dropout = b.slider("Dropout", 0.0, 0.8, chosen["dropout"], 0.05, key=preset_key("dropout", preset))
        smoothing = c.slider("Label smoothing", 0.0, 0.3, chosen["label_smoothing"], 0.05,
                             key=preset_key("smoothing", preset))
        class_weights = c.checkbox("Weight classes by inverse frequency", DEFAULTS.class_weights, key="class_weights")
        tta = c.checkbox("Mirror test-time augmentation", chosen["tta"], key=preset_key("tta", preset))
        run_name = c.text_input("Run name (optional)", key="run_name")
    return {"data": str(dataset_root), "backbone": backbone, "image_size": int(size), "batch_size": None if batch_size == "auto" else int(batch_size),
            "head_epochs": int(head_epochs), "finetune_epochs": int(finetune_epochs), "head_lr": head_lr,
            "finetune_lr": finetune_lr, "optimizer": optimizer, "unfreeze_stages": int(unfreeze), "early_stopping_patience": int(patience),
            "dropout": float(dropout), "label_smoothing": float(smoothing), "class_weights": bool(class_weights),
            "tta": bool(tta), "run_name": run_name, "augmentation": current_augmentation(), "preset": preset,
            "val_fraction": float(saved_setting(state, "val_fraction", DEFAULTS.val_fraction)),
            "seed": int(saved_setting(state, "seed", DEFAULTS.seed)), "overrides": corrections_setting(dataset_root)}


def corrections_setting(dataset_root: Path) -> str | None:
    """The overrides file the run trains with: this workspace's corrections of the dataset, when it has any."""
    file = overrides_file(dataset_root)
    return str(file) if file.is_file() else None


def start(values: dict) -> None:
    """Validate and launch; a refusal (bad setting, a run already training) is shown as the sentence it is."""
    try:
        # The lock folder is the root workspace: one training at a time on this machine, across sessions.
        run = jobs.start_training(TrainConfig.from_dict(values), current_workspace().runs_dir(),
                                  values.get("run_name", ""), lock_dir=workspace_dir())
    except StudioError as err:
        show_error(err)
        return
    remember_run(run)
    st.rerun()


def pair_starter(values: dict, disabled: bool) -> None:
    """One click starts two runs that differ in one setting (core.training.pairs), the second queued behind the
    first, both with these settings otherwise."""
    kinds = {k.name: k for k in pairs.available_kinds()}
    with st.container(border=True, key="pair_starter"):
        left, right = st.columns([4, 1])
        chosen = left.selectbox("Experiment pair: two runs that differ in one setting, on the same split and seed",
                                list(kinds), format_func=lambda n: kinds[n].title, key="pair_kind")
        left.caption(kinds[chosen].explanation + " Both use the settings above otherwise and train one after the "
                     "other; when both have finished, Compare says what the difference is worth.")
        right.write("")  # aligns the button with the select box
        if right.button("Start the pair", icon=":material/compare_arrows:", disabled=disabled, key="start_pair"):
            try:
                pair = pairs.start_pair(chosen, TrainConfig.from_dict(values), current_workspace().runs_dir(),
                                        values.get("run_name", ""), lock_dir=workspace_dir())
            except StudioError as err:
                show_error(err)
                return
            remember_run(pair.first)
            st.rerun()


def pair_section() -> None:
    """The newest experiment pair of this workspace: where each run stands, Stop the pair while it trains, and
    Compare this pair once both have finished. While it trains the page follows the run that is training."""
    found = pairs.find_pairs(current_workspace(sync_address=False).runs_dir())
    if not found:
        return
    pair = found[0]
    state = pairs.pair_state(pair)
    if state.active and selected_run_id() in pair.run_ids():
        follow = pairs.run_to_follow(pair, state)
        if follow is not None and follow.run_id != selected_run_id():
            remember_run(follow)
    st.session_state[PAIR_SEEN_KEY] = (pair.number, tuple(v.state if v else None for v in state.views))
    if state.active:
        live_pair(pair.number)
    else:
        pair_panel(pair, state)


@st.fragment(run_every=POLL_SECONDS)
def live_pair(number: int) -> None:
    """The pair's panel, redrawn every few seconds while one of its runs is queued or training; a run changing
    state redraws the whole page (the run shown, Start and the sidebar follow it)."""
    pair = pairs.find_pair(current_workspace(sync_address=False).runs_dir(), number)
    if pair is None:
        return
    state = pairs.pair_state(pair)
    seen = (pair.number, tuple(v.state if v else None for v in state.views))
    if st.session_state.get(PAIR_SEEN_KEY) != seen:
        st.session_state[PAIR_SEEN_KEY] = seen
        st.rerun()
    pair_panel(pair, state)


def pair_panel(pair: pairs.Pair, state: pairs.PairState) -> None:
    """Each run of the pair with its state (a bar while it trains), the pair's sentence and its one button."""
    with st.container(border=True, key="pair_panel"):
        st.markdown(f"**{pair.title}**")
        for (role, label, run), view, run_id in zip(pair.members(), state.views, pair.run_ids()):
            line = f"{role} · {label} · {run_id}"
            if view is not None and view.active:
                st.progress(view.fraction, text=f"{line}: {view.caption if view.queue is None else view.label}")
            else:
                st.caption(f"{line}: {view.state if view is not None else 'deleted'}")
        if state.comparable:
            st.success(state.sentence, icon=":material/check_circle:")
            if st.button("Compare this pair", type="primary", icon=":material/compare_arrows:", key="compare_pair"):
                st.switch_page(page_file("evaluate"), query_params={"pair": str(pair.number)})
        elif state.active:
            st.caption(state.sentence)
            st.button("Stop the pair", icon=":material/stop_circle:", key="stop_pair", on_click=pairs.stop_pair,
                      args=(pair,))
        else:
            st.warning(state.sentence, icon=":material/info:")


def phase_steps(view: jobs.RunView) -> str:
    """'✓ Loading the backbone · ✓ Decoding images · ▸ Computing frozen-base features · ○ Fitting the head'."""
    marks = {"done": "✓", "running": "▸", "pending": "○"}
    phases = view.status.get("phases") or []
    # Labels come from status.json: shown as text, whatever that file holds.
    return " · ".join(f"{marks.get(str(p.get('state')), '○')} {markdown_literal(p.get('label'), 60)}"
                      for p in phases)


def run_text(run: RunDir, sentence: str) -> str:
    """A sentence about the run for Markdown: its class names kept literal, its dataset named by its folder name
    rather than its path on the server (a damaged classes.json or config.json just leaves them as they are)."""
    try:
        classes = run.read_classes()
    except RunDamaged:
        classes = []
    try:
        data = run.read_config().get("data")
    except RunDamaged:
        data = None
    return literal_names(sentence, classes, [Path(data)] if data else [])


def damage_notes(run: RunDir, view: jobs.RunView, metrics_note: str | None) -> None:
    """One warning per damaged file of the run (status, config, classes, split, report) and skipped metrics;
    a damage the headline already gives as the run's error is not said twice."""
    for line in run.damage() + ([metrics_note] if metrics_note else []):
        if line != view.error:
            st.warning(line, icon=":material/report:")


def render_run(run_id: str) -> None:
    """Status, progress, Stop, error text and curves of one run, read from its folder (core.training.jobs.run_view)."""
    run = current_workspace(sync_address=False).run(run_id)
    if run is None:
        st.warning(f"Run {run_id} is not in this workspace.")
        return
    view = jobs.run_view(run)
    seen = st.session_state.get(SEEN_STATE_KEY)
    st.session_state[SEEN_STATE_KEY] = (run_id, view.state, view.active)
    if seen is not None and seen[0] == run_id and seen[1] != view.state and seen[2]:
        st.rerun()  # an active run changed state: redraw the whole page, so the sidebar and Start agree with it
    st.subheader(f"Run {run_id}")
    if view.active:
        st.progress(view.fraction, text=view.caption if view.state != "stopping" else view.headline)
        steps = phase_steps(view)
        if steps:
            st.caption(steps)
        if view.stalled:
            st.warning(view.stalled)
        if view.state == "stopping":
            st.info(view.headline, icon=":material/hourglass_top:")
        else:
            # on_click runs before the redraw, so the very next drawing already says "Stopping…"
            st.button("Stop", icon=":material/stop_circle:", key="stop_run", on_click=jobs.stop, args=(run,))
    elif view.state == "failed":
        st.error(run_text(run, view.headline))
        with st.expander("End of the trainer's log"):
            st.code(jobs.log_tail(run, 40), language=None)
    metrics = run.read_metric_lines()
    damage_notes(run, view, metrics.note(run.run_id))
    epochs = charts.epoch_rows(metrics.records)
    if not view.active and view.state != "failed":
        if view.model.usable:
            st.success(run_text(run, view.headline), icon=":material/check_circle:")
        else:
            kept = " Its curves are kept below." if epochs else " Its log is kept in the run folder."
            st.warning(run_text(run, view.headline) + kept, icon=":material/info:")
        timing = estimate_against_actual(run)
        if timing is not None:
            st.caption(f"Expected before the start: {format_seconds(timing[0])} · took {format_seconds(timing[1])} "
                       f"({timing[1] / max(timing[0], 1.0):.1f}× the estimate). Later estimates use this run's rates.")
        links = st.columns(4)
        if view.has_model:  # only a run with a model can be picked on Evaluate
            links[0].page_link(page_file("evaluate"), label="Evaluate this run", icon=":material/analytics:")
        if view.model.usable:
            links[1].page_link(page_file("classify"), label="Classify photos", icon=":material/image_search:")
    if not epochs:
        if view.active:
            st.caption("Curves appear after the first head fit or epoch.")
        return
    cols = st.columns(3)
    cols[0].plotly_chart(charts.curve_figure(epochs, "loss", "Loss"), key="loss_curve")
    cols[1].plotly_chart(charts.curve_figure(epochs, "accuracy", "Accuracy"), key="accuracy_curve")
    cols[2].plotly_chart(charts.learning_rate_figure(epochs), key="lr_curve")
    if any(e.get("l2") is not None for e in epochs):
        st.caption(charts.head_fit_caption(epochs))


@st.fragment(run_every=POLL_SECONDS)
def live_run(run_id: str) -> None:
    """The run view, redrawn from the run folder every few seconds while it trains."""
    render_run(run_id)


@st.fragment
def finished_run(run_id: str) -> None:
    """The run view of a finished run (no polling)."""
    render_run(run_id)


def megabytes(size: int) -> str:
    """1234567 -> '1.2 MB'; 123456789 -> '118 MB'."""
    value = size / 1024**2
    return f"{value:,.1f} MB" if value < 10 else f"{value:,.0f} MB"


@st.cache_data(ttl=60, show_spinner=False)
def expected_seconds(values_json: str, accelerator: str, runs_dir: str, runs_seen: int) -> tuple[str, dict] | None:
    """The estimate for these settings on this device (core.training.estimate), kept a minute: the split it needs
    scans the folder. `runs_seen` makes a newly finished run's rates count at once."""
    import json

    try:
        config = TrainConfig.from_dict(json.loads(values_json))
        counts, cross_validated = planned_counts(config, accelerator)
    except StudioError:
        return None  # Start says what is wrong with the settings or the data
    estimate = estimate_run(config, counts, accelerator, Path(runs_dir), cross_validated=cross_validated)
    return estimate.describe(), counts


def expected_time(values: dict, accelerator: str) -> None:
    """'Best on this CPU: at most 5:40 (rates measured on this machine) for 750 photos', said before Start."""
    import json

    runs_dir = current_workspace(sync_address=False).runs_dir()
    seen = sum(1 for _ in runs_dir.iterdir()) if runs_dir.is_dir() else 0
    found = expected_seconds(json.dumps(values, sort_keys=True, default=str), accelerator, str(runs_dir), seen)
    if found is None:
        return
    described, counts = found
    st.markdown(f"**{values['preset'].capitalize()}** on this {accelerator.upper()}: {described}, "
                f"learning from {counts.get('train', 0):,} photos.")


def cache_section(busy: bool) -> None:
    """The decoded-image cache: its size on disk, and a button to clear it (not while a run may be reading it)."""
    folder = default_cache_dir(current_workspace(sync_address=False).runs_dir())
    size = cache_size(folder)
    left, right = st.columns([4, 1])
    left.caption(f"Decoded-image cache: {megabytes(size)} on disk. Training decodes each photo once into "
                 "it (memory stays flat for large folders) and later runs on the same photos and size reuse it.")
    if size and right.button("Clear the cache", icon=":material/delete_sweep:", key="clear_cache", disabled=busy,
                             help="Available when no run is training."):
        freed = clear_cache(folder)
        st.toast(f"Freed {megabytes(freed)}.")
        st.rerun()


def run_to_show() -> RunDir | None:
    """The run in the address bar or this session; else the one training now (a second tab sees it)."""
    workspace = current_workspace()
    wanted = selected_run_id()
    run = workspace.run(wanted) if wanted else None
    if run is not None:
        return run
    if wanted:
        st.warning(f"Run {wanted} was not found in this workspace.")
    return jobs.active_run(workspace.runs_dir())


ensure_app_shell()
st.title("Train")
require_train_profile("Training")
# albumentations exists only in the train profile, so it is imported after the check above.
from core.data.augment import describe_spec, resolve_spec  # noqa: E402

dataset = need_dataset()
active = jobs.active_run(current_workspace().runs_dir())
if dataset is not None:
    if not dataset.report.trainable:
        st.error(literal_names("This dataset cannot be trained on: " + " ".join(dataset.report.errors),
                               dataset.classes, [dataset.root]))
        st.page_link(page_file("data"), label="Fix it on the Data page", icon=":material/folder_open:")
    else:
        device = device_info()
        st.markdown(f"Dataset **{markdown_literal(Path(dataset.root).name, 60)}**: {len(dataset.classes)} classes, "
                    f"{dataset.report.usable_images:,} images. Augmentation: "
                    f"{describe_spec(resolve_spec(current_augmentation()))} (change it on the Augment page).")
        if dataset.unoverridden is not None:
            st.caption("Your corrections from the Data page are used: the run records them (overrides.json in "
                       "its folder). Undo them on the Data page to train on the folders as they are.")
        values = settings(dataset.root, device.get("accelerator", "cpu"))
        expected_time(values, device.get("accelerator", "cpu"))
        jobs.dispatch(workspace_dir())  # a slot freed by a trainer that died is handed on here
        busy_elsewhere = active is None and jobs.slot_busy(workspace_dir())
        if active is not None:
            doing = "waiting in the queue" if jobs.run_view(active).queue is not None else "training"
            st.caption(f"Run {active.run_id} is {doing}; a new run can start when it ends or is stopped.")
        elif busy_elsewhere:
            st.caption("Another session is training on this machine: a run started now waits in the queue, with its "
                       "place in line and an estimate of when it starts.")
        if st.button("Start training", type="primary", icon=":material/play_arrow:", disabled=active is not None):
            start(values)
        pair_starter(values, disabled=active is not None)
        cache_section(busy=active is not None)

pair_section()
shown = run_to_show()
if shown is not None:
    st.divider()
    remember_run(shown)
    if jobs.run_view(shown).active:
        live_run(shown.run_id)  # keeps polling after the run ends (cheap) until the page is left or reloaded
    else:
        finished_run(shown.run_id)
