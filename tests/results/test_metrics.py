"""Evaluation numbers against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from core.results.metrics import (binary_auc, choose_k, confusion_matrix, evaluation_report, macro_auc, most_confused,
                          per_class_scores, top_k_accuracy, worst_mistakes)


def test_confusion_matrix_and_scores():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    matrix = confusion_matrix(labels, predicted, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    scores = {row["class"]: row for row in per_class_scores(matrix, ["a", "b", "c"])}
    assert scores["b"]["precision"] == pytest.approx(2 / 3) and scores["b"]["recall"] == 1.0
    assert scores["a"]["f1"] == pytest.approx(0.5) and scores["c"]["support"] == 2


def test_auc_matches_known_values():
    assert binary_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == pytest.approx(0.75)
    assert binary_auc(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.5)
    assert binary_auc(np.array([0.5, 0.6]), np.array([True, True])) is None
    probs = np.eye(3)[[0, 1, 2, 0]]
    assert macro_auc(probs, np.array([0, 1, 2, 0])) == pytest.approx(1.0)


def test_top_k_and_mistakes_order():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.45, 0.05], [0.1, 0.2, 0.7]])
    labels = np.array([1, 1, 1, 0])
    assert top_k_accuracy(probs, labels, 1) == pytest.approx(0.25)
    assert top_k_accuracy(probs, labels, 2) == pytest.approx(0.75)
    mistakes = worst_mistakes(probs, labels, ["a", "b", "c"], ["p0", "p1", "p2", "p3"])
    assert [m["path"] for m in mistakes] == ["p3", "p0", "p2"]
    assert mistakes[0]["predicted"] == "c" and mistakes[0]["confidence"] == pytest.approx(0.7)


def test_most_confused_and_report():
    matrix = np.array([[5, 3, 0], [1, 4, 0], [0, 3, 2]])
    pairs = most_confused(matrix, ["a", "b", "c"])
    assert pairs[0]["count"] == 3 and {pairs[0]["true"], pairs[1]["true"]} == {"a", "c"}
    assert choose_k(5) == 2 and choose_k(100) == 5 and choose_k(2) == 1
    probs = np.eye(3)[[0, 1, 2, 1]] * 0.9 + 0.05
    report = evaluation_report(probs, np.array([0, 1, 2, 2]), ["a", "b", "c"], list("wxyz"), "val")
    assert report["accuracy"] == pytest.approx(0.75)
    assert np.sum(report["confusion_matrix"]) == 4 and report["mistakes"][0]["path"] == "z"
