"""The exact head fit on cached features: optimal, chosen on validation, written into Keras without drift."""

from __future__ import annotations

import numpy as np
import pytest

from core.network.headfit import fit_head, fit_logistic, softmax, standardise


def _blobs(n_per_class: int, classes: int, dims: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dims))
    x = np.concatenate([c + rng.normal(0, spread, (n_per_class, dims)) for c in centres])
    y = np.repeat(np.arange(classes), n_per_class)
    return x.astype(np.float32), y


def test_fit_is_a_stationary_point_of_the_penalised_loss():
    x, y = _blobs(30, 4, 12, 1.5, seed=0)
    l2 = 0.05
    kernel, bias, _ = fit_logistic(x, y, 4, l2)
    probs = softmax(x.astype(np.float64) @ kernel + bias)
    residual = (probs - np.eye(4)[y]) / len(y)
    # The gradient of mean cross-entropy + l2/2 |W|^2 vanishes at the optimum (a wrong gradient or a missing
    # penalty term would leave these far from zero).
    assert np.abs(x.T @ residual + l2 * kernel).max() < 1e-4
    assert np.abs(residual.sum(axis=0)).max() < 1e-4


def test_class_weights_shift_the_decision_towards_the_weighted_class():
    x, y = _blobs(40, 2, 3, 2.5, seed=1)  # overlapping classes, so weights matter
    plain, plain_bias, _ = fit_logistic(x, y, 2, 0.01)
    weights = np.where(y == 1, 5.0, 1.0)
    weighted, weighted_bias, _ = fit_logistic(x, y, 2, 0.01, sample_weight=weights)
    predicted_plain = (softmax(x @ plain + plain_bias).argmax(1) == 1).sum()
    predicted_weighted = (softmax(x @ weighted + weighted_bias).argmax(1) == 1).sum()
    assert predicted_weighted > predicted_plain


def test_grid_keeps_the_lowest_validation_loss_and_logs_every_trial():
    x, y = _blobs(40, 3, 20, 2.0, seed=2)
    train, val = np.arange(len(y)) % 4 != 0, np.arange(len(y)) % 4 == 0
    seen = []
    head, trials = fit_head(x[train], y[train], x[val], y[val], 3, epsilon=1e-3,
                            on_trial=lambda t, i, n: seen.append((t.l2, i, n)) is None)
    assert [t.l2 for t in trials] == [s[0] for s in seen] and seen[-1][1:] == (len(trials) - 1, len(trials))
    assert head.l2 == min(trials, key=lambda t: t.val_loss).l2
    assert all(t.val_accuracy is not None and 0 <= t.val_accuracy <= 1 for t in trials)


def test_a_stop_during_the_grid_returns_the_best_head_so_far():
    x, y = _blobs(20, 2, 5, 1.0, seed=3)
    head, trials = fit_head(x[:30], y[:30], x[30:], y[30:], 2, epsilon=1e-3, on_trial=lambda t, i, n: i < 1)
    assert len(trials) == 2 and head.l2 in (trials[0].l2, trials[1].l2)


def test_no_validation_split_fits_the_middle_of_the_grid_once():
    x, y = _blobs(20, 2, 5, 1.0, seed=4)
    head, trials = fit_head(x, y, None, None, 2, epsilon=1e-3)
    assert len(trials) == 1 and trials[0].val_loss is None and head.l2 == trials[0].l2


def test_written_into_the_keras_head_the_model_predicts_exactly_the_fit():
    import keras

    from core.base.backbones import create_backbone
    from core.network.model import build_classifier, feature_extractor, write_linear_head

    classifier = build_classifier(create_backbone("efficientnet_b0", 64, weights=None), 3)
    images = np.random.default_rng(5).integers(0, 256, (24, 64, 64, 3), dtype=np.uint8)
    labels = np.arange(24) % 3
    features = feature_extractor(classifier).predict(images, verbose=0)
    epsilon = classifier.get_layer("head_bn").epsilon
    head, _ = fit_head(features[:18], labels[:18], features[18:], labels[18:], 3, epsilon=epsilon)
    write_linear_head(classifier, head.mean, head.variance, head.kernel, head.bias)
    expected = softmax(standardise(features, head.mean, head.variance, epsilon) @ head.kernel + head.bias)
    got = keras.ops.convert_to_numpy(classifier(images, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_standardising_on_the_fly_fits_the_same_head_as_a_standardised_copy():
    from core.network.headfit import ROWS_PER_CHUNK, Standardised

    x, y = _blobs(ROWS_PER_CHUNK // 2 + 7, 3, 16, 2.0, seed=6)  # more rows than one chunk
    x = x * 7.0 + 3.0  # features far from standard, as pooled activations are
    mean, variance = x.mean(axis=0, dtype=np.float64), x.var(axis=0, dtype=np.float64)
    copy = standardise(x.astype(np.float64), mean, variance, 1e-3)
    on_the_fly = Standardised(x, mean, 1.0 / np.sqrt(variance + 1e-3))
    np.testing.assert_allclose(on_the_fly @ np.eye(16, 3), copy @ np.eye(16, 3), rtol=1e-12, atol=1e-12)
    expected = fit_logistic(copy, y, 3, 0.03)
    got = fit_logistic(on_the_fly, y, 3, 0.03)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-6, atol=1e-8)


def test_large_feature_sets_are_fitted_without_a_float64_copy(monkeypatch):
    """Above the copy budget the fit standardises on the fly; the head is the same as with a copy."""
    import core.network.headfit as headfit

    x, y = _blobs(60, 3, 10, 2.0, seed=7)
    small = fit_head(x[:150], y[:150], x[150:], y[150:], 3, epsilon=1e-3)[0]
    monkeypatch.setattr(headfit, "COPY_BUDGET_BYTES", 0)
    made = []
    original = headfit.standardise
    monkeypatch.setattr(headfit, "standardise", lambda *a: made.append(1) or original(*a))
    large = fit_head(x[:150], y[:150], x[150:], y[150:], 3, epsilon=1e-3)[0]
    assert not made and large.l2 == small.l2
    np.testing.assert_allclose(large.kernel, small.kernel, rtol=1e-6, atol=1e-8)
