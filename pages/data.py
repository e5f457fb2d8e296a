"""Data: pick the sample or upload a labelled folder (or zip), then read the inspection report."""

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from core import StudioError
from core.results import charts
from core.data import samples
from core.data.datasets import split_samples
from core.data.images import MAX_IMAGE_PIXELS
from core.data.ingest import ingest_zip, list_datasets, upload_limits
from core.data.previews import examples_per_class, thumbnail
from core.base.safetext import csv_cell, markdown_literal, shorten
from core.data.upload_manifest import UploadAccount, account_upload, ingest_folder_archive
from pages._camera import camera_section, camera_tab
from pages._cleaning import correction_controls, show_last_correction
from pages._common import literal_names, require_train_profile, show_error
from pages._loaders import load_dataset, load_dataset_and_corrections, load_dataset_plain, overrides_file
from pages._session import current_dataset_path, current_workspace, ensure_app_shell, set_current_dataset
from pages._folder_upload import folder_picker, forget
from pages._common import page_file

CORRECTIONS_SHOWN = 24  # photos with an Undo each; the table under them lists every correction
GROUPS_SHOWN = 8  # near-duplicate groups shown with their photos and corrections
SUSPECTS_SHOWN = 12  # suspect photos with one-click corrections per page of the health list
ACCOUNT_KEY = "folder_upload_account"  # (dataset folder, UploadAccount) of the last folder upload
FOLDER_ERROR_KEY = "folder_upload_error"  # why the last folder archive was refused, shown after the rerun


@st.cache_data(ttl=300, show_spinner=False)
def online() -> bool:
    """Whether the TensorFlow download host answers (checked at most every 5 minutes)."""
    return samples.is_online()


@st.cache_data(max_entries=256, show_spinner=False)
def thumb(path: str):
    """A small picture of one dataset image (None when unreadable)."""
    return thumbnail(path, 160)


def choose(path) -> None:
    """Make `path` the current dataset and redraw the page with its report."""
    set_current_dataset(path)
    st.rerun()


def sample_tab() -> None:
    """The offline sample and the downloadable TensorFlow flowers."""
    mini = samples.flowers_mini_dir()
    st.markdown(f"**{samples.SAMPLES['flowers-mini'].label}**: {samples.SAMPLES['flowers-mini'].description}")
    if mini is None:
        st.warning(samples.flowers_mini_missing_message())
    elif st.button("Use flowers-mini", type="primary", icon=":material/local_florist:"):
        choose(mini)
    st.markdown(f"**{samples.SAMPLES['tf-flowers'].label}**: {samples.SAMPLES['tf-flowers'].description}")
    if samples.tf_flowers_ready():
        if st.button("Use TensorFlow flowers (downloaded)"):
            choose(samples.tf_flowers_dir())
    elif online():
        if st.button("Download TensorFlow flowers (218 MB)", icon=":material/download:"):
            bar = st.progress(0.0, text="Downloading…")

            def report(done: int, total: int | None) -> None:
                total = total or samples.TF_FLOWERS_BYTES
                bar.progress(min(1.0, done / total), text=f"Downloading… {done / 1e6:.0f} of {total / 1e6:.0f} MB")

            try:
                folder = samples.fetch_tf_flowers(report)
            except StudioError as err:
                show_error(err)
            else:
                choose(folder)
    else:
        st.caption("This machine cannot reach storage.googleapis.com, so the download is not offered.")


def limits_caption() -> None:
    """The upload limits in force, so a refusal never comes as a surprise."""
    per_file = st.get_option("server.maxUploadSize")
    st.caption(f"Limits: a folder (sent as one archive) or a .zip up to {per_file:,} MB. "
               f"{upload_limits().describe()} Images over "
               f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, smaller than 2x2 pixels, damaged or truncated are listed "
               "as unreadable and left out; nothing else stops the upload.")


def folder_tab() -> None:
    """The folder picker: the browser packs the folder into one archive, and every picked file is accounted for."""
    per_file_mb = st.get_option("server.maxUploadSize")
    limits = upload_limits()
    max_bytes, rule = per_file_mb * 1024**2, "the server's maxUploadSize"
    if limits.max_total_bytes < max_bytes:
        max_bytes, rule = limits.max_total_bytes, "STUDIO_MAX_UPLOAD_MB, the limit on what one upload unpacks to"
    quota_left = current_workspace(sync_address=False).quota_left()
    if quota_left is not None and quota_left < max_bytes:  # refused in the browser: nothing is sent
        max_bytes, rule = quota_left, "what is left of your workspace's quota; the Workspace page frees space"
    upload = folder_picker(max_bytes, rule, limits.max_files)
    if FOLDER_ERROR_KEY in st.session_state:
        st.error(st.session_state.pop(FOLDER_ERROR_KEY), icon=":material/error:")
    limits_caption()
    if upload is None:
        return
    try:
        with st.spinner(f"Unpacking {upload.name} and checking every image…"):
            result = ingest_folder_archive(upload, upload.name, destination=current_workspace().datasets_dir())
            dataset = load_dataset(result.folder)
    except StudioError as err:
        forget(upload)
        st.session_state[FOLDER_ERROR_KEY] = str(err)
        st.rerun()  # redraws the picker with a fresh uploader, so it stops waiting for the server
    st.session_state[ACCOUNT_KEY] = (str(result.folder),
                                     account_upload(result.picked, result.arrived, result.folder, dataset))
    forget(upload)
    choose(result.folder)


def zip_tab() -> None:
    """A .zip of the dataset folder."""
    upload = st.file_uploader("Choose a .zip of the dataset folder", type=["zip"], key="zip_upload")
    limits_caption()
    if upload is not None and st.session_state.get("ingested") != upload.file_id:
        try:
            with st.spinner(f"Unpacking {upload.name}…"):
                folder = ingest_zip(upload, upload.name, destination=current_workspace().datasets_dir())
        except StudioError as err:
            show_error(err)
            return
        st.session_state["ingested"] = upload.file_id
        choose(folder)


def earlier_tab() -> None:
    """Datasets uploaded earlier into this workspace."""
    earlier = list_datasets(current_workspace().datasets_dir())
    if not earlier:
        st.caption("Nothing uploaded yet.")
        return
    chosen = st.selectbox("Dataset", earlier, format_func=lambda p: shorten(p.name), key="earlier_dataset")
    if st.button("Use this dataset"):
        choose(chosen)


def report_section(path) -> None:
    """The inspection report, the split training will use, and thumbnails per class."""
    try:
        dataset, applied = load_dataset_and_corrections(path)
    except StudioError as err:
        show_error(err)
        damaged_corrections(path)
        return
    report = dataset.report
    st.subheader(f"Dataset: {markdown_literal(path.name, 60)}")  # its folder on the server is not shown
    upload_account(path)
    cols = st.columns(4)
    cols[0].metric("Classes", len(report.classes))
    cols[1].metric("Usable images", f"{report.usable_images:,}")
    cols[2].metric("Skipped or unreadable", len(report.skipped) + len(report.unreadable))
    cols[3].metric("Duplicate groups", len(report.duplicates))
    for message in report.errors:
        st.error(literal_names(message, report.classes, [dataset.root]))
    if report.errors:
        st.error("Training is blocked until these problems are fixed.", icon=":material/block:")
    else:
        st.success("Ready to train. Next: preview augmentations, or go straight to Train.", icon=":material/check:")
        st.page_link(page_file("train"), label="Go to Train", icon=":material/model_training:")
    for message in report.warnings:
        st.warning(literal_names(message, report.classes, [dataset.root]))
    camera_section(dataset.root)  # only for this workspace's own datasets (never the shared sample)
    if report.classes:
        left, right = st.columns([3, 2])
        left.plotly_chart(charts.class_counts_figure(report.counts), key="counts_chart")
        with right:
            split_table(dataset)
    problem_lists(report, dataset.root)
    corrections_section(dataset, applied)
    if not report.errors:
        health_section(dataset)
    thumbnails(dataset)


def corrections_section(dataset, applied) -> None:
    """The cleaning loop's corrections of this dataset: each with its photo and an Undo, and Undo all."""
    show_last_correction()
    if not applied.count and not applied.stale:
        return
    entries = applied.relabelled + applied.excluded
    with st.expander(f"Your corrections ({len(applied.relabelled)} relabelled, {len(applied.excluded)} excluded)",
                     expanded=True, key="corrections_open"):
        st.caption("Kept in a corrections file beside the dataset; the photos stay where they are. The next run "
                   "trains with them and records them (overrides.json in its folder).")
        for start in range(0, min(len(entries), CORRECTIONS_SHOWN), 6):
            cols = st.columns(6)
            for col, entry in zip(cols, entries[start:start + 6]):
                with col:
                    picture = thumb(str(dataset.root / entry.path))
                    if picture is not None:
                        st.image(picture, width=96)
                    st.caption(markdown_literal(shorten(Path(entry.path).name, 28)))
                    correction_controls(dataset.root, entry.path, dataset.classes, key="corrections")
        if len(entries) > CORRECTIONS_SHOWN:
            st.caption(f"{CORRECTIONS_SHOWN} of {len(entries)} shown; the table lists them all.")
        st.dataframe(cells([{"file": e.path, "correction": e.describe(), "made on": e.source} for e in entries]
                           + [{"file": s["path"], "correction": "not applied: " + s["reason"], "made on": ""}
                              for s in applied.stale], dataset.root), width="stretch", hide_index=True)
        if st.button("Undo all corrections", icon=":material/undo:", key="undo_all_corrections"):
            overrides_file(dataset.root).unlink(missing_ok=True)
            st.rerun()


def damaged_corrections(path) -> None:
    """A corrections file that cannot be read: offer to set it aside (renamed, not deleted) so the data opens."""
    try:
        file = overrides_file(load_dataset_plain(path).root)
    except StudioError:
        return
    if file.is_file() and st.button("Set the damaged corrections file aside", key="set_aside_corrections",
                                    help="Renames it (nothing is deleted) so the dataset opens without it."):
        file.rename(file.with_name(f"{file.name}.damaged-{int(time.time())}"))
        st.rerun()


def health_section(dataset) -> None:
    """Data health (core.results.health): suspect labels, near-duplicates and leaks, imbalance, outliers, odd shapes."""
    from core.results.health import check_in_own_process, load_saved_report
    from core.data.imagecache import default_cache_dir
    from core.base.workspace import hosted_mode

    st.markdown("**Data health**")
    cache = default_cache_dir(current_workspace(sync_address=False).runs_dir())
    saved = load_saved_report(dataset.root, cache)
    if hosted_mode():
        st.caption("The health check runs a feature pass over every photo; on this shared demo it is off. "
                   "Run it on your own machine: `python -m core health DATA`.")
        return
    label = "Check again" if saved else "Check data health"
    if st.button(label, key="health_check", help="One frozen-backbone pass over every photo (its decoded images "
                 "are reused by training): likely wrong labels, near-duplicates and train/test leaks, outliers."):
        with st.spinner(f"Checking {dataset.report.usable_images:,} photos: decoding, features, 5-fold fits…"):
            try:
                corrections = overrides_file(dataset.root)
                check_in_own_process(dataset.root, cache, corrections if corrections.is_file() else None)
            except StudioError as err:
                show_error(err)
                return
        st.rerun()  # redraw from the saved report (and the button now reads "Check again")
    if saved is None:
        return
    cols = st.columns(5)
    cols[0].metric("Suspect labels", len(saved["suspect_labels"]),
                   help="Out-of-fold predictions disagree with the given label (confident ones first)")
    cols[1].metric("Near-duplicate groups", len(saved["near_duplicates"]))
    cols[2].metric("Train/test leaks", len(saved["leaks"]))
    cols[3].metric("Outliers", len(saved["outliers"]))
    cols[4].metric("Tiny or extreme shapes", len(saved["odd_shapes"]))
    st.caption(f"Checked in {saved['seconds']['total']:.0f} s; out-of-fold accuracy "
               f"{saved['out_of_fold_accuracy']:.1%}; largest class over smallest "
               f"{saved['imbalance']['largest_over_smallest']:g}.")
    root = dataset.root
    if saved["suspect_labels"]:
        # Keyed: a correction adds lines above, and an unkeyed expander would be redrawn closed under the pointer.
        with st.expander(f"Suspect labels ({len(saved['suspect_labels'])}), most suspect first",
                         key="health_suspects_open"):
            suspects_with_controls(saved["suspect_labels"], dataset)
            st.dataframe(cells([{k: s[k] for k in ("path", "label", "suggested", "score", "confident")}
                                for s in saved["suspect_labels"]], root), width="stretch", hide_index=True)
    if saved["near_duplicates"]:
        with st.expander(f"Near-duplicates ({len(saved['near_duplicates'])} groups, {len(saved['leaks'])} across "
                         "splits)", key="health_duplicates_open"):
            groups_with_controls(saved["near_duplicates"], dataset)
            st.dataframe(cells([{"files": ", ".join(g["paths"]), "splits": ", ".join(g["splits"]),
                                 "similarity": g["similarity"]} for g in saved["near_duplicates"]], root),
                         width="stretch", hide_index=True)
    if saved["outliers"] or saved["odd_shapes"]:
        with st.expander(f"Outliers and odd shapes ({len(saved['outliers']) + len(saved['odd_shapes'])})"):
            st.dataframe(cells(saved["outliers"] + saved["odd_shapes"], root), width="stretch", hide_index=True)


def suspects_with_controls(suspects: list[dict], dataset) -> None:
    """A page of suspect photos, each with its given and suggested class and one-click Relabel / Exclude."""
    pages = max(1, -(-len(suspects) // SUSPECTS_SHOWN))
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key="suspect_page") if pages > 1 else 1
    shown = suspects[(page - 1) * SUSPECTS_SHOWN:page * SUSPECTS_SHOWN]
    for start in range(0, len(shown), 6):
        cols = st.columns(6)
        for col, suspect in zip(cols, shown[start:start + 6]):
            with col:
                picture = thumb(str(dataset.root / suspect["path"]))
                if picture is not None:
                    st.image(picture, width=110)
                st.caption(markdown_literal(shorten(f"{suspect['label']} → {suspect['suggested']}?", 40))
                           + f" ({suspect['score']:.2f})")
                correction_controls(dataset.root, suspect["path"], dataset.classes, key="suspect", source="health",
                                    suggested=suspect["suggested"] if suspect["suggested"] in dataset.classes
                                    else None)


def groups_with_controls(groups: list[dict], dataset) -> None:
    """The first near-duplicate groups, leaks first, each photo with Exclude (keep one copy) or Relabel."""
    ordered = sorted(groups, key=lambda g: len(g["splits"]) == 1)  # across splits (leaks) first
    for number, group in enumerate(ordered[:GROUPS_SHOWN]):
        where = "across " + " and ".join(group["splits"]) if len(group["splits"]) > 1 else f"in {group['splits'][0]}"
        st.caption(f"Group {number + 1}, {where}, similarity {group['similarity']:.2f}")
        cols = st.columns(6)
        for col, path in zip(cols, group["paths"][:6]):
            with col:
                picture = thumb(str(dataset.root / path))
                if picture is not None:
                    st.image(picture, width=96)
                st.caption(markdown_literal(shorten(path, 40)))
                correction_controls(dataset.root, path, dataset.classes, key=f"group{number}", source="health")
    if len(groups) > GROUPS_SHOWN:
        st.caption(f"{GROUPS_SHOWN} of {len(groups)} groups shown with their photos; the table lists them all.")


def split_table(dataset) -> None:
    """How training will split the images, per class."""
    from core.data.datasets import describe_split

    st.markdown("**The split training will use**")
    sentence = st.empty()  # above the slider, but worded with the share the slider returns
    workspace = current_workspace(sync_address=False)
    state = workspace.load_state()
    # A hand-edited state.json must not break the page: a saved value out of type or range reads as the default.
    saved = state.get("val_fraction")
    saved = float(saved) if _number(saved) and 0.1 <= saved <= 0.5 else 0.2
    seed = state.get("seed")
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32 else 42
    # The Train page passes no test share, so neither does this preview (split_samples' default 0).
    fraction = st.slider("Validation share (when there is no val/ folder)", 0.1, 0.5, saved, 0.05,
                         key="val_fraction", disabled=not describe_split(dataset).uses_val_fraction)
    sentence.caption(describe_split(dataset, fraction, 0.0).sentence)
    if fraction != state.get("val_fraction", 0.2):
        workspace.save_state(val_fraction=fraction)
    if not dataset.report.trainable:
        return
    try:
        split = split_samples(dataset, fraction, 0.0, seed)
    except StudioError as err:
        show_error(err)
        return
    rows = {name: {part: 0 for part in ("train", "val", "test")} for name in dataset.classes}
    for part, items in split.items():
        for sample in items:
            rows[dataset.classes[sample.label]][part] += 1
    table = pd.DataFrame.from_dict({csv_cell(name): row for name, row in rows.items()}, orient="index")
    st.dataframe(table.loc[:, (table != 0).any(axis=0)], width="stretch")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def upload_account(path) -> None:
    """What became of every file picked in the folder upload that made this dataset (nothing for other datasets)."""
    folder, account = st.session_state.get(ACCOUNT_KEY, (None, None))
    if folder != str(path) or not isinstance(account, UploadAccount):
        return
    if account.complete:
        st.success(account.summary(), icon=":material/task_alt:")
    else:
        st.error(account.summary(), icon=":material/error:")
    notes = [("missing", n) for n in account.missing] + [("unreadable", n) for n in account.unreadable] \
        + [("skipped", n) for n in account.skipped]
    if notes:
        with st.expander(f"Picked files that are not training images ({len(notes):,})"):
            st.dataframe(pd.DataFrame([{"file": csv_cell(n.path), "outcome": pile, "reason": csv_cell(n.reason)}
                                       for pile, n in notes]),
                         width="stretch", hide_index=True)


def problem_lists(report, root) -> None:
    """Skipped files, unreadable images and duplicates, each in an expander."""
    if report.skipped:
        with st.expander(f"Skipped files ({len(report.skipped)})"):
            st.dataframe(cells(report.skipped, root), width="stretch", hide_index=True)
    if report.unreadable:
        with st.expander(f"Unreadable images ({len(report.unreadable)})"):
            st.dataframe(cells(report.unreadable, root), width="stretch", hide_index=True)
    if report.duplicates:
        with st.expander(f"Byte-identical duplicates ({len(report.duplicates)} groups)"):
            st.dataframe(cells([{"files": ", ".join(g)} for g in report.duplicates], root), width="stretch",
                         hide_index=True)


def cells(rows: list, root) -> pd.DataFrame:
    """File names and reasons for st.dataframe, each text through core.base.safetext.csv_cell: bidi controls dropped
    (no 'gpj.exe' posing as '.jpg'), the table's CSV download safe to open in a spreadsheet, and the dataset's
    folder on the server named by its folder name only."""
    def cell(value):
        return csv_cell(value.replace(str(root), root.name) if isinstance(value, str) else value)

    return pd.DataFrame([{k: cell(v) for k, v in row.items()} if isinstance(row, dict) else {"file": cell(row)}
                         for row in rows])


def thumbnails(dataset) -> None:
    """A row of example images per class."""
    st.markdown("**Examples per class**")
    for name, paths in examples_per_class(dataset, per_class=8).items():
        pictures = [p for p in (thumb(str(dataset.root / rel)) for rel in paths) if p is not None]
        st.caption(f"{markdown_literal(name, 60)} ({dataset.report.counts[name]['total']} images)",
                   help=markdown_literal(name) if len(name) > 60 else None)
        if pictures:
            st.image(pictures, width=96)


ensure_app_shell()
st.title("Data")
require_train_profile("Preparing data for training")
st.markdown("Start here: use the sample flowers, or upload a folder with **one sub-folder of images per class** "
            "(optionally inside `train/` and `val/`). Then press **Start** on the Train page.")
tabs = st.tabs(["Sample datasets", "Upload a folder", "Upload a .zip", "Camera", "Earlier uploads"])
with tabs[0]:
    sample_tab()
with tabs[1]:
    folder_tab()
with tabs[2]:
    zip_tab()
with tabs[3]:
    camera_tab()
with tabs[4]:
    earlier_tab()

current = current_dataset_path()
if current is not None:
    st.divider()
    report_section(current)
