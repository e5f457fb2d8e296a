"""Classify new images with a run's best model, preprocessed exactly as in training."""

from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from core.data.images import (THUMBNAIL_SIDE, ImageError, ModelPhoto, OverBudgetError, decode_for_model_and_thumbnail,
                         load_for_model, resize_for_model)
from core.base.runs import RunDamaged, RunDir
from core.base.safetext import csv_cell, plain

# One visitor's batch of photos must not take a hosted server down (issue 14). Each photo kept costs only its model
# input and a preview (0.7 MB at Lite0's 288 px, 1.5 MB at B7's 600 px), so the count bounds what a batch holds; the
# pixel budget bounds the decoding work: a large JPEG costs 1/64 of its pixels (decoded at 1/8 scale), a PNG all.
MAX_PHOTOS_PER_BATCH = 64
MAX_BATCH_DECODED_PIXELS = 200_000_000  # e.g. eight PNGs at their 24-megapixel full-size limit, or hundreds of JPEGs
# What one decode may hold at once, and how many run at a time in the process, is core.data.images' bound
# (FULL_DECODE_LIMITS, DECODING_SLOTS): this budget bounds a batch's decoding work, not its memory.


class Classifier:
    """A loaded run: model, classes and image size, ready to classify arrays or files."""

    def __init__(self, run: RunDir):
        from core.results.evaluate import load_run_model, run_image_size

        self.run = run
        self.model = load_run_model(run)
        self.classes = run.read_classes()
        self.image_size = run_image_size(run)
        self.tta = bool(run.read_config().get("tta", False))
        try:  # the "unknown" threshold, when the run chose one; a damaged file only loses the threshold
            self.calibration = run.read_calibration()
        except RunDamaged:
            self.calibration = None
        # One loaded classifier serves every visitor of a server (st.cache_resource), each from a thread of their
        # own; the Keras model is used by one of them at a time. It is not copied per visitor (its weights are the
        # memory), and TensorFlow already spreads one call over every core (core.serving.sharing).
        self.model_lock = threading.Lock()

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        from core.network.model import predict_probabilities

        with self.model_lock:
            return predict_probabilities(self.model, images, tta=self.tta)

    def heatmap(self, image: np.ndarray, class_index: int) -> np.ndarray:
        """The photo with the class-activation heatmap of `class_index` over it (core.results.cam), computed from the
        model under its lock like every other use of it."""
        from core.results.cam import heatmap_for

        with self.model_lock:
            return heatmap_for(self.model, image, class_index, self.image_size)

    def classify_arrays(self, images: Sequence[np.ndarray], top_k: int = 5) -> list[list[dict[str, Any]]]:
        """Top-k (class, probability) for RGB uint8 arrays of any size."""
        batch = np.stack([resize_for_model(image, self.image_size) for image in images])
        return [top_k_list(row, self.classes, top_k) for row in self.probabilities(batch)]

    def classify_files(self, paths: Sequence[Path | str], top_k: int = 5) -> list[dict[str, Any]]:
        """One result per file, in order; unreadable files get an 'error' instead of stopping the rest."""
        results: list[dict[str, Any]] = [{"path": str(p)} for p in paths]
        readable, arrays = [], []
        for i, path in enumerate(paths):
            try:
                arrays.append(load_for_model(path, self.image_size))
                readable.append(i)
            except ImageError as err:
                results[i]["error"] = str(err)
        if arrays:
            for i, row in zip(readable, self.probabilities(np.stack(arrays))):
                results[i]["top_k"] = top_k_list(row, self.classes, top_k)
                results[i]["predicted"] = results[i]["top_k"][0]["class"]
                results[i]["confidence"] = results[i]["top_k"][0]["probability"]
                # The best guess stays in "predicted"; this flag says to doubt it. (A demo bundle's classifier,
                # core.serving.bundle.BundleClassifier, shares this method and carries no threshold.)
                calibration = getattr(self, "calibration", None)
                if calibration is not None:
                    results[i]["unknown"] = is_unknown(results[i]["top_k"], calibration["threshold"])
        return results


def top_k_list(probs: np.ndarray, classes: Sequence[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs)[:max(1, min(k, len(classes)))]
    return [{"class": classes[i], "probability": float(probs[i])} for i in order]


# ---------------------------------------------------------------------------------- a batch of uploaded photos
class Upload(Protocol):
    """What Streamlit's UploadedFile offers and a batch needs: a name and the bytes."""

    name: str

    def getvalue(self) -> bytes: ...


@dataclass(frozen=True)
class NamedPhoto:
    """A decoded upload: its position in the batch, a name unique in the batch (for showing), and its pixels."""

    position: int
    name: str
    photo: ModelPhoto


@dataclass
class PhotoBatch:
    """What became of a batch of uploads: the photos to classify in upload order, and what was left out and why."""

    photos: list[NamedPhoto] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (name, reason) per unreadable or refused upload
    not_classified: int = 0  # uploads past MAX_PHOTOS_PER_BATCH, left undecoded


def display_names(names: Sequence[str]) -> list[str]:
    """The names made unique in order: a repeated `IMG_0001.jpg` (two folders, one name) becomes `IMG_0001.jpg (2)`,
    skipping any suffix another upload already uses."""
    taken = set(names)
    used: set[str] = set()
    unique = []
    for name in names:
        candidate, n = name, 1
        while candidate in used or (candidate != name and candidate in taken):
            n += 1
            candidate = f"{name} ({n})"
        used.add(candidate)
        unique.append(candidate)
    return unique


def decode_uploads(uploads: Sequence[Upload], size: int, thumbnails: int | None = None,
                   thumb: int = THUMBNAIL_SIDE, max_photos: int | None = None,
                   max_pixels: int | None = None) -> PhotoBatch:
    """Decode a batch for classifying: the first `max_photos` uploads (default MAX_PHOTOS_PER_BATCH), each at the
    model's `size`, with a preview for the first `thumbnails` (default all), within `max_pixels` decoded in all
    (default MAX_BATCH_DECODED_PIXELS). A photo that is unreadable or would go over the budget is refused with its
    name and the reason, and never stops the rest; the order of the uploads is kept."""
    max_photos = MAX_PHOTOS_PER_BATCH if max_photos is None else max_photos
    max_pixels = MAX_BATCH_DECODED_PIXELS if max_pixels is None else max_pixels
    thumbnails = max_photos if thumbnails is None else thumbnails
    names = display_names([plain(upload.name) for upload in uploads])
    batch = PhotoBatch(not_classified=max(0, len(uploads) - max_photos))
    budget = max_pixels
    for position, (upload, name) in enumerate(zip(uploads[:max_photos], names)):
        try:
            photo = decode_for_model_and_thumbnail(upload.getvalue(), name, size,
                                                   thumb if len(batch.photos) < thumbnails else None, budget)
        except OverBudgetError as err:
            batch.problems.append((name, f"{_reason(err, name)[:-1]} (a batch decodes at most "
                                         f"{max_pixels / 1e6:.3g} megapixels); classify it in a smaller batch."))
            continue
        except ImageError as err:
            batch.problems.append((name, _reason(err, name)))
            continue
        budget -= photo.decoded_pixels
        batch.photos.append(NamedPhoto(position, name, photo))
    return batch


def _reason(err: ImageError, name: str) -> str:
    """The ImageError's text without its leading `name: ` (the page shows the name apart, as a literal)."""
    text = str(err)
    return text[len(name) + 2:] if text.startswith(name + ": ") else text


# ----------------------------------------------------------------------------------------------- the results
RESULT_COLUMNS = ("file", "predicted", "confidence", "top_k")
UNKNOWN = "unknown"
HELD_OUT_WORDS = {"validation": "validation photos", "out_of_fold": "held-out training photos"}


def unknown_reason(calibration: dict[str, Any]) -> str:
    """Why a photo reads "unknown", in words: 'below the 62% confidence threshold chosen on validation photos'."""
    where = HELD_OUT_WORDS.get(calibration.get("source"), "held-out photos")
    return f"below the {calibration['threshold']:.0%} confidence threshold chosen on {where}"


def is_unknown(top: Sequence[dict[str, Any]], threshold: float | None) -> bool:
    """Whether a photo's best guess is below the "unknown" threshold (never, without a threshold)."""
    return threshold is not None and bool(top) and top[0]["probability"] < threshold


def result_rows(names: Sequence[str], results: Sequence[Sequence[dict[str, Any]]],
                threshold: float | None = None) -> list[dict[str, Any]]:
    """One row per photo: predicted class ("unknown" below `threshold`), the best guess's confidence and the top-k
    as text (which still names the best guess of an unknown photo)."""
    return [{"file": name, "predicted": UNKNOWN if is_unknown(top, threshold) else top[0]["class"],
             "confidence": round(top[0]["probability"], 4),
             "top_k": "; ".join(f"{t['class']} {t['probability']:.3f}" for t in top)}
            for name, top in zip(names, results)]


def results_csv(rows: Sequence[dict[str, Any]]) -> bytes:
    """The rows as UTF-8 CSV for a spreadsheet: every text cell through csv_cell, so a file or class name that
    starts like a formula (`=`, `+`, `-`, `@`) is shown by Excel, not run."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: csv_cell(row[key]) for key in RESULT_COLUMNS})
    return buffer.getvalue().encode("utf-8")
