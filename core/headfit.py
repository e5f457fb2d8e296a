"""The head on cached frozen features, fitted exactly: L2-regularised multinomial logistic regression.

Why not Adam for a few epochs: on flowers-mini the same features gave 85% with BatchNorm -> Dropout -> Dense trained
by Adam with early stopping, and 88% when the same linear model is fitted to convergence by L-BFGS on standardised
features (15 cross-validation folds over all 400 photos; docs/benchmarks.md). With a few hundred photos, early
stopping on a noisy validation loss stops far from the optimum; a convex fit has no such luck of the draw. It also
takes a second or two on a CPU, and the L2 strength is chosen on the validation split from a short grid.

The result is written into the classifier's own head layers (BatchNorm as the standardiser, Dense as the linear
map), so the saved model, class-activation maps, export and fine-tuning see an ordinary Keras head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import minimize

# Penalties are per mean example loss; the grid spans what was near-optimal on flowers-mini (0.01..0.3) and a
# margin either side for bigger or noisier datasets.
L2_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
MAX_ITERATIONS = 500


@dataclass
class LinearHead:
    """Standardisation (mean, variance) and the linear map fitted on standardised features."""

    mean: np.ndarray
    variance: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    l2: float


@dataclass
class Trial:
    """One point of the L2 grid, scored like an epoch: train and validation loss and accuracy."""

    l2: float
    loss: float
    accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    iterations: int


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def standardise(features: np.ndarray, mean: np.ndarray, variance: np.ndarray, epsilon: float) -> np.ndarray:
    """Exactly what a Keras BatchNormalization layer with gamma=1, beta=0 computes at inference."""
    return (features - mean) / np.sqrt(variance + epsilon)


class FitStopped(Exception):
    """The caller's per-iteration callback asked to stop inside a fit."""


ROWS_PER_CHUNK = 2048
# A float64 standardised copy is made when it takes at most this much (up to ~5,700 training photos of Lite0's
# 1,472 features): products on it are about twice as fast as standardising on the fly. Beyond, memory wins.
COPY_BUDGET_BYTES = 64 * 1024**2


class Standardised:
    """Features standardised on the fly, a chunk of rows at a time in float64: (x - mean) * scale.

    Why: the fit needs float64 products, and a float64 standardised copy of every training feature costs 12 KB a
    photo on top of the float32 features (~190 MB at 16,000 photos, ~470 MB at 40,000). Products computed chunk by
    chunk give the same numbers with one 2,048-row chunk in float64 at a time.
    """

    def __init__(self, x: np.ndarray, mean: np.ndarray | None = None, scale: np.ndarray | None = None):
        self.x = x
        self.mean = None if mean is None else np.asarray(mean, np.float64)
        self.scale = None if scale is None else np.asarray(scale, np.float64)
        self.shape = x.shape

    def _chunks(self):
        for start in range(0, self.shape[0], ROWS_PER_CHUNK):
            rows = np.asarray(self.x[start:start + ROWS_PER_CHUNK], dtype=np.float64)
            if self.mean is not None:
                rows = (rows - self.mean) * self.scale
            yield start, rows

    def __matmul__(self, kernel: np.ndarray) -> np.ndarray:
        """z @ kernel, (N, C)."""
        out = np.empty((self.shape[0], kernel.shape[1]), np.float64)
        for start, rows in self._chunks():
            out[start:start + len(rows)] = rows @ kernel
        return out

    def transposed_matmul(self, grad: np.ndarray) -> np.ndarray:
        """z.T @ grad, (D, C)."""
        out = np.zeros((self.shape[1], grad.shape[1]), np.float64)
        for start, rows in self._chunks():
            out += rows.T @ grad[start:start + len(rows)]
        return out


def fit_logistic(x: np.ndarray, labels: np.ndarray, num_classes: int, l2: float,
                 sample_weight: np.ndarray | None = None,
                 on_iteration: Callable[[int], bool] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Minimise mean weighted cross-entropy + l2/2 * |W|^2 (bias unpenalised). Returns (W, b, iterations).

    `on_iteration(iteration)` is called after each L-BFGS iteration; returning False raises FitStopped (a fit
    cut short is no optimum, so it is not returned). `x` may be a Standardised view of raw features."""
    x = x if isinstance(x, Standardised) else Standardised(np.asarray(x, dtype=np.float64))
    n, dims = x.shape
    targets = np.eye(num_classes)[labels]
    weights = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    weights = weights * (n / weights.sum())  # keep the data term's scale whatever the weights' scale

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        kernel, bias = params[:-num_classes].reshape(dims, num_classes), params[-num_classes:]
        probs = softmax(x @ kernel + bias)
        loss = -(weights * np.log(probs[np.arange(n), labels] + 1e-12)).sum() / n + 0.5 * l2 * (kernel ** 2).sum()
        grad_logits = (probs - targets) * weights[:, None] / n
        grad = np.concatenate([(x.transposed_matmul(grad_logits) + l2 * kernel).ravel(), grad_logits.sum(axis=0)])
        return float(loss), grad

    iterations = [0]

    def callback(intermediate_result) -> None:
        iterations[0] += 1
        if on_iteration is not None and on_iteration(iterations[0]) is False:
            raise StopIteration  # SciPy ends the minimisation cleanly on StopIteration

    result = minimize(objective, np.zeros(dims * num_classes + num_classes), jac=True, method="L-BFGS-B",
                      options={"maxiter": MAX_ITERATIONS}, callback=callback)
    if on_iteration is not None and "StopIteration" in str(result.message):
        raise FitStopped()
    params = result.x
    return params[:-num_classes].reshape(dims, num_classes), params[-num_classes:], int(result.nit)


def _scores(probs: np.ndarray, labels: np.ndarray, label_smoothing: float) -> tuple[float, float]:
    """Cross-entropy as Keras reports it for the run (with its label smoothing, so head and fine-tuning losses
    compare), and accuracy."""
    num_classes = probs.shape[1]
    targets = np.eye(num_classes)[labels] * (1.0 - label_smoothing) + label_smoothing / num_classes
    loss = float(-(targets * np.log(np.clip(probs, 1e-7, 1.0))).sum(axis=1).mean())
    return loss, float((probs.argmax(axis=1) == labels).mean())


def fit_head(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray | None, val_y: np.ndarray | None,
             num_classes: int, epsilon: float, sample_weight: np.ndarray | None = None,
             label_smoothing: float = 0.0, grid: tuple[float, ...] = L2_GRID,
             on_trial: Callable[[Trial, int, int], bool] | None = None,
             on_iteration: Callable[[int, float], bool] | None = None) -> tuple[LinearHead | None, list[Trial]]:
    """Fit one head per L2 strength, keep the one with the lowest validation loss (the middle of the grid when
    there is no validation split). `on_trial(trial, index, total)` is called after each fit, e.g. to log it;
    returning False ends the grid early (a stop request) and the best head so far is returned.
    `on_iteration(index, fraction)` is called within a fit (fraction of the iteration budget used); returning
    False abandons that fit and ends the grid: the best head of the finished fits is returned, None if none."""
    # Moments in float64; small feature sets get a standardised float64 copy (fast), large ones are standardised
    # on the fly a chunk at a time (Standardised), so memory stays flat in the number of photos.
    mean, variance = train_x.mean(axis=0, dtype=np.float64), train_x.var(axis=0, dtype=np.float64)
    scale = 1.0 / np.sqrt(variance + epsilon)

    def prepared(x: np.ndarray):
        if x.size * 8 <= COPY_BUDGET_BYTES:
            return Standardised(standardise(np.asarray(x, np.float64), mean, variance, epsilon))
        return Standardised(x, mean, scale)

    train_z = prepared(train_x)
    has_val = val_x is not None and val_y is not None and len(val_y) > 0
    val_z = prepared(val_x) if has_val else None
    grid = grid if has_val else (grid[len(grid) // 2],)
    best: tuple[float, LinearHead] | None = None
    trials: list[Trial] = []
    for index, l2 in enumerate(grid):
        within = None if on_iteration is None else \
            (lambda it, i=index: on_iteration(i, min(it / MAX_ITERATIONS, 0.99)))
        try:
            kernel, bias, iterations = fit_logistic(train_z, train_y, num_classes, l2, sample_weight, within)
        except FitStopped:
            break
        loss, accuracy = _scores(softmax(train_z @ kernel + bias), train_y, label_smoothing)
        val_loss = val_accuracy = None
        if has_val:
            val_loss, val_accuracy = _scores(softmax(val_z @ kernel + bias), val_y, label_smoothing)
        trial = Trial(l2, loss, accuracy, val_loss, val_accuracy, iterations)
        trials.append(trial)
        score = val_loss if val_loss is not None else loss
        if best is None or score < best[0]:
            best = (score, LinearHead(mean, variance, kernel, bias, l2))
        if on_trial is not None and on_trial(trial, index, len(grid)) is False:
            break
    return (best[1] if best is not None else None), trials
