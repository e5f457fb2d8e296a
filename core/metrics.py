"""Evaluation numbers from probabilities and labels: pure numpy, no model, no drawing."""

from __future__ import annotations

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


def evaluation_report(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], paths: Sequence[str],
                      split: str) -> dict[str, Any]:
    """Everything evaluation.json holds."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, len(classes))
    k = choose_k(len(classes))
    return {
        "split": split,
        "images": int(len(labels)),
        "classes": list(classes),
        "accuracy": float(np.mean(predicted == labels)) if len(labels) else 0.0,
        "top_k": k,
        "top_k_accuracy": top_k_accuracy(probs, labels, k),
        "macro_auc": macro_auc(probs, labels),
        "confusion_matrix": matrix.tolist(),
        "per_class": per_class_scores(matrix, classes),
        "most_confused": most_confused(matrix, classes),
        "mistakes": worst_mistakes(probs, labels, classes, paths),
        # `mistakes` is capped, so the page can say "24 of 52" rather than pass the cap off as the total.
        "mistakes_total": error_count(matrix),
    }
