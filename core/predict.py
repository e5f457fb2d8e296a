"""Classify new images with a run's best model, preprocessed exactly as in training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.images import ImageError, load_for_model, resize_for_model
from core.runs import RunDir


class Classifier:
    """A loaded run: model, classes and image size, ready to classify arrays or files."""

    def __init__(self, run: RunDir):
        from core.evaluate import load_run_model, run_image_size

        self.run = run
        self.model = load_run_model(run)
        self.classes = run.read_classes()
        self.image_size = run_image_size(run)
        self.tta = bool(run.read_config().get("tta", False))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        from core.model import predict_probabilities

        return predict_probabilities(self.model, images, tta=self.tta)

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
        return results


def top_k_list(probs: np.ndarray, classes: Sequence[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs)[:max(1, min(k, len(classes)))]
    return [{"class": classes[i], "probability": float(probs[i])} for i in order]
