"""Evaluation numbers from probabilities and labels: pure numpy, no model, no drawing."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes, cells are counts."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class_scores(matrix: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per class (0 where undefined, as scikit-learn's zero_division=0)."""
    rows = []
    for i, name in enumerate(classes):
        tp = float(matrix[i, i])
        predicted = float(matrix[:, i].sum())
        support = int(matrix[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": support})
    return rows


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k most probable."""
    top = np.argsort(-probs, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1))) if len(labels) else 0.0


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic (ties count half); None when one side is empty."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """One-vs-rest ROC AUC averaged over the classes that have both positives and negatives."""
    values = [binary_auc(probs[:, c], labels == c) for c in range(probs.shape[1])]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def most_confused(matrix: np.ndarray, classes: Sequence[str], limit: int = 10) -> list[dict[str, Any]]:
    """Off-diagonal cells, largest first: (true, predicted, count) like fastai's most_confused."""
    pairs = [{"true": classes[i], "predicted": classes[j], "count": int(matrix[i, j])}
             for i in range(len(classes)) for j in range(len(classes)) if i != j and matrix[i, j] > 0]
    return sorted(pairs, key=lambda p: (-p["count"], p["true"], p["predicted"]))[:limit]


def worst_mistakes(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], paths: Sequence[str],
                   limit: int = 24) -> list[dict[str, Any]]:
    """Wrong predictions, most confident first (fastai's top losses, restricted to errors)."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:limit]
    return [{"path": paths[i], "true": classes[labels[i]], "predicted": classes[predicted[i]],
             "confidence": float(probs[i, predicted[i]]), "true_probability": float(probs[i, labels[i]])}
            for i in wrong]


def error_count(matrix: np.ndarray | Sequence[Sequence[int]]) -> int:
    """All wrong predictions: the confusion matrix's off-diagonal sum."""
    cells = np.asarray(matrix, dtype=np.int64)
    return int(cells.sum() - np.trace(cells)) if cells.size else 0


def mistake_count(evaluation: Mapping[str, Any]) -> int:
    """How many images an evaluation.json got wrong, of which `mistakes` lists only the most confident.

    Reports written before `mistakes_total` existed carry the same number in their confusion matrix.
    """
    if "mistakes_total" in evaluation:
        return int(evaluation["mistakes_total"])
    return error_count(evaluation.get("confusion_matrix") or [])


def choose_k(num_classes: int) -> int:
    """A top-k that says something: 5 for many classes, fewer for few (top-k with k >= classes is always 1)."""
    return max(1, min(5, num_classes // 2))


def macro_f1(per_class: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean F1 over the classes present in the evaluated photos (support > 0).

    A class with no photo in a test set (an uploaded one may hold a few of the run's classes) has no recall to
    speak of, so it is left out rather than counted as 0; None when no class has a photo."""
    scores = [row["f1"] for row in per_class if row.get("support", 0) > 0]
    return float(np.mean(scores)) if scores else None


# ------------------------------------------------------------------------------------------------ calibration
ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017 ("On calibration of modern neural networks")


def bin_index(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """The bin of each confidence: bin b holds (b/bins, (b+1)/bins], and a confidence of 0 falls in bin 0."""
    inner = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return np.searchsorted(inner, np.asarray(confidence, np.float64), side="left")


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Photos, mean confidence and accuracy per equal-width confidence bin (None where a bin is empty)."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    index = bin_index(confidence, bins)
    counts = np.bincount(index, minlength=bins)
    confidence_sum = np.bincount(index, weights=confidence, minlength=bins)
    correct_sum = np.bincount(index, weights=correct, minlength=bins)
    return {"bins": bins, "counts": counts.tolist(),
            "confidence": [float(s / n) if n else None for s, n in zip(confidence_sum, counts)],
            "accuracy": [float(s / n) if n else None for s, n in zip(correct_sum, counts)]}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the gap between accuracy and mean confidence in each bin, weighted by the bin's share of photos."""
    table = reliability_bins(confidence, correct, bins)
    total = sum(table["counts"])
    if not total:
        return 0.0
    return float(sum(n / total * abs(acc - conf) for n, acc, conf in
                     zip(table["counts"], table["accuracy"], table["confidence"]) if n))


# ------------------------------------------------------------------------------------------------ photos per cell
PREDICTION_DECIMALS = 5  # confidences kept per photo: enough to sort and show, a third of a full float's text


def prediction_table(probs: np.ndarray, labels: np.ndarray, paths: Sequence[str]) -> dict[str, list]:
    """Every scored photo's true and predicted class (indices into `classes`) and confidence, column by column
    (compact in JSON), so any confusion-matrix cell can list its photos."""
    predicted = probs.argmax(axis=1)
    confidence = probs[np.arange(len(labels)), predicted] if len(labels) else np.zeros(0)
    return {"paths": [str(p) for p in paths], "true": [int(v) for v in labels],
            "predicted": [int(v) for v in predicted],
            "confidence": [round(float(v), PREDICTION_DECIMALS) for v in confidence]}


def cell_photos(evaluation: Mapping[str, Any], true: int, predicted: int) -> list[dict[str, Any]] | None:
    """The photos of one confusion-matrix cell (row `true`, column `predicted`), or None when the report keeps no
    per-photo predictions (written before they existed).

    Mistakes come most confident first (the worst first, as in the mistakes gallery); correct photos (a diagonal
    cell) least confident first: the ones nearest to being wrong are the ones worth a look."""
    table = evaluation.get("predictions")
    if not table:
        return None
    classes = evaluation["classes"]
    rows = [{"path": path, "true": classes[t], "predicted": classes[p], "confidence": c}
            for path, t, p, c in zip(table["paths"], table["true"], table["predicted"], table["confidence"])
            if t == true and p == predicted]
    rows.sort(key=lambda r: r["confidence"], reverse=true != predicted)
    return rows


# ------------------------------------------------------------------------------------------------ "unknown"
UNKNOWN_KEEP = 0.95  # share of the correct held-out predictions the "unknown" threshold keeps


def unknown_threshold(confidence: np.ndarray, correct: np.ndarray, keep: float = UNKNOWN_KEEP
                      ) -> dict[str, Any] | None:
    """The confidence below which Classify says "unknown", chosen on held-out predictions: the highest threshold
    that still keeps `keep` of the correct ones (None when none was correct).

    Why this rule: its cost is fixed and plain (1 in 20 right answers becomes "unknown"), it gives a threshold for
    every model, and what it buys is measured on the same photos (`flagged_wrong`: the share of wrong answers
    turned into "unknown"). A target accuracy for the accepted photos would give no threshold at all to a model
    already above the target, and reject nearly everything for one far below it."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, bool)
    right = np.sort(confidence[correct])
    if not len(right):
        return None
    dropped = int(np.floor(round((1.0 - keep) * len(right), 9)))  # at most this many right answers below it
    threshold = float(right[dropped])
    accepted = confidence >= threshold
    wrong = ~correct
    return {"threshold": threshold, "keep": keep, "photos": int(len(confidence)), "correct": int(len(right)),
            "kept_correct": float(accepted[correct].mean()),
            "flagged_wrong": float((~accepted[wrong]).mean()) if wrong.any() else None,
            "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
            "held_out_accuracy": float(correct.mean())}


def evaluation_report(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], paths: Sequence[str],
                      split: str) -> dict[str, Any]:
    """Everything evaluation.json holds."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, len(classes))
    k = choose_k(len(classes))
    per_class = per_class_scores(matrix, classes)
    confidence = probs.max(axis=1) if len(labels) else np.zeros(0)
    correct = predicted == labels
    return {
        "split": split,
        "images": int(len(labels)),
        "classes": list(classes),
        "accuracy": float(np.mean(correct)) if len(labels) else 0.0,
        "top_k": k,
        "top_k_accuracy": top_k_accuracy(probs, labels, k),
        "macro_auc": macro_auc(probs, labels),
        "macro_f1": macro_f1(per_class),
        "ece": expected_calibration_error(confidence, correct),
        "reliability": reliability_bins(confidence, correct),
        "confusion_matrix": matrix.tolist(),
        "per_class": per_class,
        "most_confused": most_confused(matrix, classes),
        "mistakes": worst_mistakes(probs, labels, classes, paths),
        # `mistakes` is capped, so the page can say "24 of 52" rather than pass the cap off as the total.
        "mistakes_total": error_count(matrix),
        "predictions": prediction_table(probs, labels, paths),
    }


Z_95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: unlike p +- z*se it stays inside 0..1 and is honest for the
    small test sets of this app (n of a few dozen, accuracy near 100%)."""
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    denominator = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def saved_macro_f1(evaluation: Mapping[str, Any]) -> float | None:
    """Macro F1 as an evaluation saved it, else the unweighted mean F1 of the classes that had photos (a class
    absent from the evaluated photos has no recall to speak of; newer evaluations save it with the same rule)."""
    saved = evaluation.get("macro_f1")
    if isinstance(saved, (int, float)) and math.isfinite(saved):
        return float(saved)
    return macro_f1(evaluation.get("per_class") or [])


def macro_f1_of(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 of each row of (replicates, photos) label arrays, as macro_f1 defines it (vectorised over bootstrap replicates, core.results.compare): the
    mean F1 over the classes present (support > 0), F1 = 0 where precision + recall is 0."""
    true, predicted = np.atleast_2d(true), np.atleast_2d(predicted)
    rows, cells = true.shape[0], num_classes * num_classes
    codes = true * num_classes + predicted + (np.arange(rows) * cells)[:, None]
    matrix = np.bincount(codes.ravel(), minlength=rows * cells).reshape(rows, num_classes, num_classes)
    hits = np.diagonal(matrix, axis1=1, axis2=2).astype(np.float64)
    support, said = matrix.sum(axis=2), matrix.sum(axis=1)
    precision = np.divide(hits, said, out=np.zeros_like(hits), where=said > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(hits), where=total > 0)
    present = support > 0
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
