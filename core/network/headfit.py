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

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from scipy.optimize import minimize

# Penalties are per mean example loss. Chosen by 5-fold CV over 10 re-splits of three check sets (docs/benchmarks.md):
# flowers-mini 0.003-0.03, the shapes set 0.01-0.03, the 2,000-photo texture set always 0.003, the old grid's
# weakest. So the grid reaches one step lower, and 1.0, never chosen, is gone.
L2_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
MAX_ITERATIONS = 500


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """NumPy's BLAS on one thread for the fits: their products are small, and waking OpenBLAS's threads for each
    one cost more than it saved. Measured on 2 cores (5-fold CV over the L2 grid, 1,792 features): 600 photos
    3.9 s -> 1.1 s, 12,000 photos 11.5 s -> 8.1 s. A no-op where threadpoolctl is missing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@dataclass
class LinearHead:
    """Standardisation (mean, variance) and the linear map fitted on standardised features."""

    mean: np.ndarray
    variance: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    l2: float
    # The scaling the features were standardised with (scaling_variance), chosen with L2 when several were tried.
    scaling: str = "per_feature"


@dataclass
class Trial:
    """One point of the L2 grid, scored like an epoch: train and validation loss and accuracy."""

    l2: float
    loss: float
    accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    iterations: int
    # What the choice between L2 strengths rests on: the held-out (or out-of-fold) cross-entropy WITHOUT label
    # smoothing, the loss the fit itself minimises. The smoothed val_loss (shown on the charts, so head and
    # fine-tuning losses compare) rewards under-confident heads: with the default smoothing of 0.1 it chose the
    # strongest L2 of the grid on the shapes set (91.8% test) where the plain loss chose 0.01 (93.2%).
    selection_loss: float | None = None
    # The feature scaling this fit ran on (scaling_variance): the grid is run once per scaling tried.
    scaling: str = "per_feature"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


SCALINGS = ("per_feature", "per_block", "global")
# `scaling=CHOSEN` asks the fits to try each of CV_SCALINGS over the L2 grid (same folds, or the same validation
# folder) and keep the (scaling, L2) with the lowest held-out loss, the criterion L2 is already chosen by. The first
# listed wins a tie and is the one used when there is nothing held out to choose on.
CHOSEN = "cv"
CV_SCALINGS = ("per_block", "per_feature")
# The recipe's scaling of the pooled features before the linear fit (the trainer passes it with the feature blocks;
# the functions here default to plain per-feature standardisation). Measured over 10 re-splits of flowers-dev's
# train/ and two generated sets (docs/benchmarks.md, issue 28): on stages 4-7 + top, "per_block" (one scale per
# stage) beat "per_feature" by +0.7 points on flowers-dev (per-feature standardisation lifts hundreds of
# near-silent features to unit variance, so the L2 penalty no longer prefers the features the backbone uses), but
# lost 0.5 on the generated outline-only shapes set, where "per_feature" gained. So each dataset chooses, by the
# same cross-validation as L2: about twice the head fit's time.
RECIPE_SCALING = CHOSEN


def scaling_candidates(scaling: "str | tuple[str, ...] | list[str]") -> tuple[str, ...]:
    """The scalings a fit tries: CV_SCALINGS for CHOSEN, else the one (or the several) named, validated."""
    names = CV_SCALINGS if scaling == CHOSEN else ((scaling,) if isinstance(scaling, str) else tuple(scaling))
    unknown = [name for name in names if name not in SCALINGS]
    if unknown or not names:
        raise ValueError(f"unknown feature scaling {unknown[0] if unknown else scaling!r}: choose one of "
                         f"{', '.join(SCALINGS)} or {CHOSEN!r} (chosen by cross-validation)")
    return names


def scaling_variance(variance: np.ndarray, scaling: str = "per_feature",
                     blocks: tuple[int, ...] | None = None) -> np.ndarray:
    """The `variance` to standardise with (and to write into the head's BatchNorm) for a scaling policy.

    BatchNorm divides by sqrt(variance + epsilon), so any positive divisor per feature can be written as a
    "variance": "per_feature" is the plain per-feature standardisation; "per_block" divides each block of features
    (a pooled stage, `blocks` = their widths in order) by one number, the root of its mean variance; "global" divides
    every feature by one number. A shared divisor keeps the features' relative scales inside a block, so the L2
    penalty costs a strong feature less than a weak one, as it does on the raw features."""
    variance = np.asarray(variance, np.float64)
    if scaling == "per_feature":
        return variance
    if scaling == "global":
        return np.full_like(variance, variance.mean())
    if scaling == "per_block":
        widths = blocks or (len(variance),)
        if sum(widths) != len(variance):
            raise ValueError(f"blocks {widths} do not add up to the {len(variance)} features")
        edges = np.cumsum((0, *widths))
        return np.concatenate([np.full(b - a, variance[a:b].mean()) for a, b in zip(edges[:-1], edges[1:])])
    raise ValueError(f"unknown feature scaling {scaling!r}: choose one of {', '.join(SCALINGS)}")


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

    def __init__(self, x: np.ndarray, mean: np.ndarray | None = None, scale: np.ndarray | None = None,
                 indices: np.ndarray | None = None):
        self.x = x
        self.mean = None if mean is None else np.asarray(mean, np.float64)
        self.scale = None if scale is None else np.asarray(scale, np.float64)
        self.indices = indices  # a subset of x's rows (a fold), read chunk by chunk: no copy of the fold
        self.shape = (len(indices) if indices is not None else x.shape[0], x.shape[1])

    def rows(self, indices: np.ndarray) -> "Standardised":
        """The same view of a subset of rows (a fold). An in-memory standardised copy is indexed at once (it is
        small); on-the-fly features stay where they are and the fold's rows are gathered a chunk at a time."""
        if self.mean is None and self.indices is None:
            return Standardised(self.x[indices])
        chosen = indices if self.indices is None else self.indices[indices]
        return Standardised(self.x, self.mean, self.scale, chosen)

    def _chunks(self):
        for start in range(0, self.shape[0], ROWS_PER_CHUNK):
            block = self.x[start:start + ROWS_PER_CHUNK] if self.indices is None else \
                self.x[self.indices[start:start + ROWS_PER_CHUNK]]
            rows = np.asarray(block, dtype=np.float64)
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
                 on_iteration: Callable[[int], bool] | None = None,
                 start: tuple[np.ndarray, np.ndarray] | None = None,
                 max_iterations: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Minimise mean weighted cross-entropy + l2/2 * |W|^2 (bias unpenalised). Returns (W, b, iterations).

    `on_iteration(iteration)` is called after each L-BFGS iteration; returning False raises FitStopped (a fit
    cut short is no optimum, so it is not returned). `x` may be a Standardised view of raw features. `start`
    (W, b) warm-starts the search, e.g. from the fit at the next stronger L2 (the optimum is the same, the path
    to it shorter)."""
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

    initial = np.zeros(dims * num_classes + num_classes) if start is None else \
        np.concatenate([np.asarray(start[0], np.float64).ravel(), np.asarray(start[1], np.float64)])
    result = minimize(objective, initial, jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iterations or MAX_ITERATIONS}, callback=callback)
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


def _standardised_copy_or_view(x: np.ndarray, mean: np.ndarray, variance: np.ndarray,
                               epsilon: float) -> Standardised:
    """Small feature sets as a standardised float64 copy (fast products), large ones standardised on the fly a chunk
    at a time (Standardised), so memory stays flat in the number of photos."""
    if x.size * 8 <= COPY_BUDGET_BYTES:
        return Standardised(standardise(np.asarray(x, np.float64), mean, variance, epsilon))
    return Standardised(x, mean, 1.0 / np.sqrt(variance + epsilon))


def fit_head(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray | None, val_y: np.ndarray | None,
             num_classes: int, epsilon: float, sample_weight: np.ndarray | None = None,
             label_smoothing: float = 0.0, grid: tuple[float, ...] = L2_GRID,
             on_trial: Callable[[Trial, int, int], bool] | None = None,
             on_iteration: Callable[[int, float], bool] | None = None, scaling: str = "per_feature",
             blocks: tuple[int, ...] | None = None) -> tuple[LinearHead | None, list[Trial]]:
    """Fit one head per L2 strength, keep the one with the lowest validation loss (the middle of the grid when
    there is no validation split). `scaling` as in scaling_variance, or CHOSEN: the grid is run once per scaling
    of CV_SCALINGS and the (scaling, L2) with the lowest validation loss is kept (with no validation split, the
    first scaling only). `on_trial(trial, index, total)` is called after each fit (index over every scaling's
    grid, total = scalings x grid), e.g. to log it; returning False ends the grid early (a stop request) and the
    best head so far is returned. `on_iteration(index, fraction)` is called within a fit (fraction of the
    iteration budget used); returning False abandons that fit and ends the grid: the best head of the finished
    fits is returned, None if none."""
    mean, raw_variance = train_x.mean(axis=0, dtype=np.float64), train_x.var(axis=0, dtype=np.float64)
    has_val = val_x is not None and val_y is not None and len(val_y) > 0
    candidates = scaling_candidates(scaling)
    candidates = candidates if has_val else candidates[:1]  # nothing held out to choose a scaling on
    grid = grid if has_val else (grid[len(grid) // 2],)
    total = len(candidates) * len(grid)
    best: tuple[float, LinearHead] | None = None
    trials: list[Trial] = []
    index = 0
    stopped = False
    for name in candidates:
        variance = scaling_variance(raw_variance, name, blocks)  # see scaling_variance; BatchNorm holds it
        train_z = _standardised_copy_or_view(train_x, mean, variance, epsilon)
        val_z = _standardised_copy_or_view(val_x, mean, variance, epsilon) if has_val else None
        for l2 in grid:
            within = None if on_iteration is None else \
                (lambda it, i=index: on_iteration(i, min(it / MAX_ITERATIONS, 0.99)))
            try:
                kernel, bias, iterations = fit_logistic(train_z, train_y, num_classes, l2, sample_weight, within)
            except FitStopped:
                stopped = True
                break
            train_probs = softmax(train_z @ kernel + bias)
            loss, accuracy = _scores(train_probs, train_y, label_smoothing)
            val_loss = val_accuracy = None
            selection = _scores(train_probs, train_y, 0.0)[0]
            if has_val:
                val_probs = softmax(val_z @ kernel + bias)
                val_loss, val_accuracy = _scores(val_probs, val_y, label_smoothing)
                selection = _scores(val_probs, val_y, 0.0)[0]
            trial = Trial(l2, loss, accuracy, val_loss, val_accuracy, iterations, selection, name)
            trials.append(trial)
            if best is None or selection < best[0]:
                best = (selection, LinearHead(mean, variance, kernel, bias, l2, name))
            if on_trial is not None and on_trial(trial, index, total) is False:
                stopped = True
                break
            index += 1
        if stopped:
            break
    return (best[1] if best is not None else None), trials


CV_FOLDS = 5
# Iterations per fold fit. Warm-started along the L2 path, 50 iterations give the same out-of-fold losses to 1e-4
# and the same chosen L2 as fits run to convergence (measured on the generated shapes set, 2,016 photos, 1,792
# features: 5-fold CV over the grid 18.9 s -> 9.7 s; flowers-mini converges within the cap anyway). Only the
# choice rests on them; the refit on all photos runs to convergence.
CV_FOLD_ITERATIONS = 50
# Above this many training photos the k folds cost more than they tell: one fold of the k is held out to choose
# L2 (then the refit on all photos as below). Measured: with thousands of photos the chosen L2 barely moves.
CV_MAX_PHOTOS = 10_000


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per row, each class dealt round-robin over the folds after a seeded shuffle, so every fold
    holds each class in proportion (a class with fewer photos than folds is missing from some folds)."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), np.int64)
    offset = 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        assignment[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # the next class starts where this one ended: fold sizes stay even
    return assignment


def _weighted_scores(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None,
                     label_smoothing: float) -> tuple[float, float]:
    """Loss as in _scores, but weighted per photo (class weights), so a chosen L2 serves every class."""
    if weights is None:
        return _scores(probs, labels, label_smoothing)
    num_classes = probs.shape[1]
    targets = np.eye(num_classes)[labels] * (1.0 - label_smoothing) + label_smoothing / num_classes
    per_photo = -(targets * np.log(np.clip(probs, 1e-7, 1.0))).sum(axis=1)
    w = np.asarray(weights, np.float64)
    return float((w * per_photo).sum() / w.sum()), float((probs.argmax(axis=1) == labels).mean())


class RowSpace:
    """Rows of standardised features re-expressed in their own row space: (N, D) -> (N, r), r = rank <= N.

    Why: with fewer photos than feature dimensions (a few hundred photos, ~1,800 features), an L2-penalised
    linear model's optimal weights lie in the span of the photos' rows, and |W| = |V b| = |b|. So the same optimum
    is found with r x C parameters instead of D x C: the fits of a cross-validation grid run several times faster
    (L-BFGS's own bookkeeping grows with the parameter count), and the answer maps back exactly, W = V b."""

    def __init__(self, rows: np.ndarray):
        _, singular, vt = np.linalg.svd(rows, full_matrices=False)
        keep = singular > singular[0] * 1e-10 if len(singular) else np.zeros(0, bool)
        self.basis = vt[keep].T  # (D, r)
        self.coordinates = rows @ self.basis  # (N, r) = U S

    def project(self, rows: np.ndarray) -> np.ndarray:
        return rows @ self.basis

    def kernel(self, reduced_kernel: np.ndarray) -> np.ndarray:
        return self.basis @ reduced_kernel


def _fit_in_row_space(z: Standardised, labels: np.ndarray, num_classes: int, l2: float,
                      weights: np.ndarray | None, within, start: tuple[np.ndarray, np.ndarray] | None,
                      space: "RowSpace | None", max_iterations: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """fit_logistic on the row-space coordinates when `space` is given (kernel mapped back to D), else as is.
    `start` is in full dimensions either way."""
    if space is None:
        return fit_logistic(z, labels, num_classes, l2, weights, within, start=start, max_iterations=max_iterations)
    reduced_start = None if start is None else (space.basis.T @ start[0], start[1])
    kernel, bias, used = fit_logistic(space.coordinates, labels, num_classes, l2, weights, within,
                                      start=reduced_start, max_iterations=max_iterations)
    return space.kernel(kernel), bias, used


def fit_head_cv(train_x: np.ndarray, train_y: np.ndarray, num_classes: int, epsilon: float,
                sample_weight: np.ndarray | None = None, label_smoothing: float = 0.0,
                grid: tuple[float, ...] = L2_GRID, folds: int = CV_FOLDS, seed: int = 0,
                on_trial: Callable[[Trial, int, int], bool] | None = None,
                on_iteration: Callable[[int, float], bool] | None = None,
                out_of_fold: dict[float, np.ndarray] | None = None, scaling: str = "per_feature",
                blocks: tuple[int, ...] | None = None) -> tuple[LinearHead | None, list[Trial]]:
    """Choose L2 (and the feature scaling) by k-fold cross-validation over every training photo, then fit once on
    all of them.

    `scaling` and `blocks` (the widths of the pooled feature blocks) as in scaling_variance; with CHOSEN (or a
    tuple of names) the grid is cross-validated once per scaling of CV_SCALINGS, on the same folds, and the
    (scaling, L2) with the lowest out-of-fold loss is refitted; the returned head's `scaling` says which.
    `out_of_fold`, when given, receives each L2's out-of-fold probabilities (N, C) at the chosen scaling (the data
    health check ranks suspect labels by them).

    Why: carving a validation split out of a few hundred photos both trains on fewer photos and chooses L2 on a
    noisy handful; k folds use every photo for both. Each Trial is one (scaling, L2): `loss`/`accuracy` on the
    training folds, `val_loss`/`val_accuracy` out of fold (every photo predicted by a head that never saw it).
    Each scaling's grid runs from the strongest penalty down, each fold warm-started from its previous fit.
    Callbacks as in fit_head, indexed over every scaling's grid; the refit on all photos reports its iterations
    as the last index (scalings x grid) to `on_iteration`, and `on_trial`'s total counts it (scalings x grid + 1).
    A stop after at least one L2 was cross-validated still refits the best so far; a stop inside the refit keeps
    the first fold's head at the best (scaling, L2) (fitted on (k-1)/k of the photos), so a head always comes
    back once any L2 finished."""
    n = len(train_y)
    candidates = scaling_candidates(scaling)
    mean, raw_variance = train_x.mean(axis=0, dtype=np.float64), train_x.var(axis=0, dtype=np.float64)
    variances = {name: scaling_variance(raw_variance, name, blocks) for name in candidates}
    folds = max(2, min(folds, n))
    assignment = stratified_folds(train_y, folds, seed)
    held_out_folds = range(folds) if n <= CV_MAX_PHOTOS else range(1)
    weights = None if sample_weight is None else np.asarray(sample_weight, np.float64)
    order = sorted(grid, reverse=True)
    total = len(candidates) * len(order) + 1
    trials: list[Trial] = []
    best: Trial | None = None
    best_fold_heads: list[tuple[np.ndarray, np.ndarray]] = []  # the folds' heads at the best (scaling, L2)
    probabilities: dict[str, dict[float, np.ndarray]] = {}
    stopped = False
    index = 0
    for name in candidates:
        z = _standardised_copy_or_view(train_x, mean, variances[name], epsilon)
        warm: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        spaces: dict[int, RowSpace | None] = {}
        for l2 in order:
            held_out_probs = np.zeros((n, num_classes))
            seen = np.zeros(n, bool)
            fit_losses, fit_accuracies, iterations, fold_heads = [], [], 0, []
            try:
                for fold_number, fold in enumerate(held_out_folds):
                    fit_rows, held_rows = np.flatnonzero(assignment != fold), np.flatnonzero(assignment == fold)
                    fraction_before = fold_number / len(held_out_folds)
                    within = None if on_iteration is None else (
                        lambda it, i=index, f=fraction_before: on_iteration(
                            i, min(f + it / CV_FOLD_ITERATIONS / len(held_out_folds), 0.99)))
                    fold_weights = None if weights is None else weights[fit_rows]
                    fit_z = z.rows(fit_rows)
                    if fold not in spaces:
                        spaces[fold] = _row_space(fit_z)
                    kernel, bias, used = _fit_in_row_space(fit_z, train_y[fit_rows], num_classes, l2,
                                                           fold_weights, within, warm.get(fold), spaces[fold],
                                                           CV_FOLD_ITERATIONS)
                    warm[fold] = (kernel, bias)
                    fold_heads.append((kernel, bias))
                    iterations += used
                    loss, accuracy = _weighted_scores(softmax(fit_z @ kernel + bias), train_y[fit_rows],
                                                      fold_weights, label_smoothing)
                    fit_losses.append(loss)
                    fit_accuracies.append(accuracy)
                    held_out_probs[held_rows] = softmax(z.rows(held_rows) @ kernel + bias)
                    seen[held_rows] = True
            except FitStopped:
                stopped = True
                break
            if out_of_fold is not None:
                probabilities.setdefault(name, {})[l2] = held_out_probs
            seen_weights = None if weights is None else weights[seen]
            val_loss, val_accuracy = _weighted_scores(held_out_probs[seen], train_y[seen], seen_weights,
                                                      label_smoothing)
            selection, _ = _weighted_scores(held_out_probs[seen], train_y[seen], seen_weights, 0.0)
            trial = Trial(l2, float(np.mean(fit_losses)), float(np.mean(fit_accuracies)), val_loss, val_accuracy,
                          iterations, selection, name)
            trials.append(trial)
            if best is None or trial.selection_loss < best.selection_loss:
                best, best_fold_heads = trial, fold_heads
            if on_trial is not None and on_trial(trial, index, total) is False:
                stopped = True
                break
            index += 1
        if stopped:
            break
    if best is None:
        return None, trials
    if out_of_fold is not None:
        out_of_fold.update(probabilities[best.scaling])
    # The refit on every photo starts from the folds' average at the chosen (scaling, L2): close to the full-data
    # optimum.
    variance = variances[best.scaling]
    if name != best.scaling:  # the loop ended on another scaling's features
        z = _standardised_copy_or_view(train_x, mean, variance, epsilon)
    start = (np.mean([k for k, _ in best_fold_heads], axis=0), np.mean([b for _, b in best_fold_heads], axis=0))
    within = None if on_iteration is None or stopped else \
        (lambda it: on_iteration(total - 1, min(it / MAX_ITERATIONS, 0.99)))
    try:
        kernel, bias, _ = _fit_in_row_space(z, train_y, num_classes, best.l2, weights, within, start,
                                            _row_space(z))
    except FitStopped:
        kernel, bias = best_fold_heads[0]
    return LinearHead(mean, variance, kernel, bias, best.l2, best.scaling), trials


def _row_space(z: Standardised) -> RowSpace | None:
    """A RowSpace when it pays: fewer photos than dimensions and the standardised rows already in memory."""
    rows, dims = z.shape
    if z.mean is not None or rows >= dims * 0.8:
        return None
    return RowSpace(np.asarray(z.x, np.float64))
