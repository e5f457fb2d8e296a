"""`python -m core bench features`: which pooled features and which head-fit protocol transfer best, by re-splits.

Why a study and not a guess: the default recipe pools some stages of the frozen backbone and fits a linear head
on them. Which stages, whether L2 is chosen on a carved validation split or by k-fold cross-validation, and whether
mirrored test views help, all depend on the data; a choice tuned to flowers-mini alone would show on photos unlike
it. So features of every candidate stage are computed once per photo (plain and mirrored), and then each
candidate is scored the way the recipe would run it, over several random re-splits of all photos into train and
test with the folder's own proportions: mean and spread, not one lucky split.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

# Candidate feature sets: names of pooled stage outputs ("s5" = the last block of stage 5) and "top" (top conv).
CANDIDATES: dict[str, tuple[str, ...]] = {
    "top": ("top",),
    "s6+top": ("s6", "top"),
    "s7+top": ("s7", "top"),
    "s6+s7+top": ("s6", "s7", "top"),
    "s5+s6+s7+top": ("s5", "s6", "s7", "top"),
    "s4+s5+s6+s7+top": ("s4", "s5", "s6", "s7", "top"),  # the recipe's since issue 28 (core.network.model)
}
STAGES = ("s4", "s5", "s6", "s7", "top")


def stage_extractor(backbone: str, image_size: int):
    """uint8 pixels -> concatenated pooled outputs of stages 4-7 and the top conv; returns (model, slices)."""
    import keras

    from core.base.backbones import create_backbone
    from core.network.model import _stage

    base = create_backbone(backbone, image_size)
    outputs, widths = [], []
    for stage in (4, 5, 6, 7):
        last = [layer for layer in base.layers if _stage(layer.name) == stage][-1]
        outputs.append(last.output)
    outputs.append(base.output)
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8")
    inner = keras.Model(base.input, outputs)
    pooled = [keras.layers.GlobalAveragePooling2D()(o) for o in inner(keras.layers.Rescaling(1.0)(inputs))]
    widths = [int(p.shape[-1]) for p in pooled]
    model = keras.Model(inputs, keras.layers.Concatenate()(pooled))
    edges = np.cumsum([0] + widths)
    return model, {name: slice(int(edges[i]), int(edges[i + 1])) for i, name in enumerate(STAGES)}


def extract(data: str, backbone: str, image_size: int, work: Path) -> dict[str, Any]:
    """Plain and mirrored features of every photo of `data` (cached in `work` by folder, backbone and size)."""
    from core.data.datasets import scan
    from core.data.imagecache import open_or_build
    from core.network.model import predict_in_batches

    dataset = scan(data)
    samples = dataset.samples
    key = hashlib.sha1(f"{Path(data).resolve()}|{backbone}|{image_size}|{len(samples)}|{STAGES}".encode()
                       ).hexdigest()[:12]
    file = work / f"features-{key}.npz"
    if file.is_file():
        stored = np.load(file, allow_pickle=False)
        _, slices = _slices_only(stored["widths"])
        return {"plain": stored["plain"], "mirrored": stored["mirrored"], "labels": stored["labels"],
                "is_test": stored["is_test"], "slices": slices, "classes": list(dataset.classes),
                "seconds": float(stored["seconds"])}
    start = time.perf_counter()
    images, _ = open_or_build([dataset.root / s.path for s in samples], image_size, work / "cache")
    model, slices = stage_extractor(backbone, image_size)
    plain = predict_in_batches(model, images, 16)
    mirrored = _mirrored_features(model, images)
    seconds = time.perf_counter() - start
    labels = np.asarray([s.label for s in samples], np.int64)
    is_test = np.asarray([s.split == "test" for s in samples])
    widths = np.asarray([slices[name].stop - slices[name].start for name in STAGES])
    work.mkdir(parents=True, exist_ok=True)
    np.savez(file, plain=plain, mirrored=mirrored, labels=labels, is_test=is_test, widths=widths, seconds=seconds)
    return {"plain": plain, "mirrored": mirrored, "labels": labels, "is_test": is_test, "slices": slices,
            "classes": list(dataset.classes), "seconds": seconds}


def _slices_only(widths: np.ndarray) -> tuple[None, dict[str, slice]]:
    edges = np.cumsum([0] + [int(w) for w in widths])
    return None, {name: slice(int(edges[i]), int(edges[i + 1])) for i, name in enumerate(STAGES)}


def _mirrored_features(model, images) -> np.ndarray:
    from core.data.loader import take_rows

    out = []
    for start in range(0, len(images), 16):
        batch = take_rows(images, np.arange(start, min(start + 16, len(images))))
        out.append(np.asarray(model.predict_on_batch(np.ascontiguousarray(batch[:, :, ::-1])), np.float32))
    return np.concatenate(out)


def resplit(labels: np.ndarray, test_share: float, seed: int) -> np.ndarray:
    """A boolean test mask: `test_share` of each class, seeded."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        mask[members[:max(1, round(len(members) * test_share))]] = True
    return mask


def _columns(features: np.ndarray, slices: dict[str, slice], parts: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([features[:, slices[p]] for p in parts], axis=1)


def _probabilities(head, x: np.ndarray, epsilon: float) -> np.ndarray:
    from core.network.headfit import softmax, standardise

    return softmax(standardise(x.astype(np.float64), head.mean, head.variance, epsilon) @ head.kernel + head.bias)


def score_candidate(features: dict[str, Any], parts: tuple[str, ...], test_mask: np.ndarray, protocol: str,
                    seed: int, epsilon: float = 1e-3, scaling: str | None = None) -> dict[str, float]:
    """Fit a head on the train rows as the recipe would ("cv": L2 by 5-fold CV, refit on all; "holdout": L2 on a
    carved 20% validation split, fit on the other 80%), score test accuracy plain and with mirrored views.
    `scaling` of the features (core.network.headfit.scaling_variance; one block per stage), or "cv" to choose it
    with L2 (headfit.CHOSEN): the recipe's if None. The scaling the head was fitted with comes back as "scaling"."""
    from core.network.headfit import RECIPE_SCALING, fit_head, fit_head_cv
    from core.training.train import class_weight_vector

    labels = features["labels"]
    num_classes = int(labels.max()) + 1
    x = _columns(features["plain"], features["slices"], parts)
    x_mirror = _columns(features["mirrored"], features["slices"], parts)
    train_rows = np.flatnonzero(~test_mask)
    weights_per_class = class_weight_vector(labels[train_rows], num_classes)
    slices = features["slices"]
    scaled = {"scaling": scaling or RECIPE_SCALING, "blocks": tuple(slices[p].stop - slices[p].start for p in parts)}
    if protocol == "cv":
        head, trials = fit_head_cv(x[train_rows], labels[train_rows], num_classes, epsilon,
                                   sample_weight=weights_per_class[labels[train_rows]], seed=seed, **scaled)
    else:
        val_mask = resplit(labels[train_rows], 0.2, seed + 1000)
        fit_rows, val_rows = train_rows[~val_mask], train_rows[val_mask]
        head, trials = fit_head(x[fit_rows], labels[fit_rows], x[val_rows], labels[val_rows], num_classes,
                                epsilon, sample_weight=weights_per_class[labels[fit_rows]], **scaled)
    test_rows = np.flatnonzero(test_mask)
    plain = _probabilities(head, x[test_rows], epsilon)
    mirrored = _probabilities(head, x_mirror[test_rows], epsilon)
    truth = labels[test_rows]
    return {"accuracy": float((plain.argmax(1) == truth).mean()),
            "accuracy_tta": float(((plain + mirrored).argmax(1) == truth).mean()), "l2": head.l2,
            "scaling": head.scaling,
            "selection_loss": next(t.selection_loss for t in trials
                                   if (t.l2, t.scaling) == (head.l2, head.scaling))}


def _chosen_by_cv(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """The result a fit with scaling="cv" gives, from the fits of each of headfit.CV_SCALINGS on the same rows:
    it cross-validates each scaling's grid on the same folds as a fit told that scaling, keeps the lowest held-out
    loss (the first listed on a tie), then refits exactly as that fit does (tests/network/test_headfit_cv.py)."""
    from core.network.headfit import CV_SCALINGS

    return min((results[name] for name in CV_SCALINGS), key=lambda r: r["selection_loss"])


def study(data: str, backbone: str, image_size: int, resplits: int, work: Path,
          candidates: dict[str, tuple[str, ...]] | None = None,
          scaling: str | tuple[str, ...] | list[str] | None = None, baseline: bool = True,
          derive_cv: bool = True) -> dict[str, Any]:
    """Every candidate feature set with the CV protocol, plus the issue-15 baseline (s6+top, holdout), over
    `resplits` random re-splits of all photos (test share as the folder's own test/, else 20%). Features scaled
    as the recipe does (headfit.RECIPE_SCALING) unless `scaling` names another policy ("per_feature",
    "per_block", "global", or "cv": chosen per fit with L2 by the same cross-validation, headfit.CHOSEN).

    Several scalings (a tuple) score every row under each on the same re-splits, named "<set> (<protocol>,
    <scaling>)", and each row also counts its re-splits won and lost against the same set and protocol under
    each scaling listed before it ("vs_<scaling>", paired). Each row lists its heads' scaling per re-split.
    `baseline=False` leaves the issue-15 baseline row out (and the counts against it). With "cv" listed beside
    both scalings it chooses between, its rows are read off their fits (see _chosen_by_cv) unless `derive_cv` is
    False."""
    from core.network.headfit import CHOSEN, CV_SCALINGS, RECIPE_SCALING, single_threaded_blas

    policies = [scaling] if scaling is None or isinstance(scaling, str) else list(scaling)
    several = len(policies) > 1
    features = extract(data, backbone, image_size, work)
    labels = features["labels"]
    test_share = float(features["is_test"].mean()) or 0.2
    rows: dict[str, list[dict[str, float]]] = {}
    contenders = [(name, parts, "cv") for name, parts in (candidates or CANDIDATES).items()]
    if baseline:
        contenders.append(("s6+top", CANDIDATES["s6+top"], "holdout"))

    def row_name(name: str, protocol: str, policy: str | None) -> str:
        return f"{name} ({protocol}, {policy})" if several else f"{name} ({protocol})"

    # "cv" next to both of the scalings it chooses between is read off their fits, not fitted again: the same
    # folds, the same trials, the same refit (half the study's time; derive_cv=False fits it anyway).
    derived = derive_cv and CHOSEN in policies and set(CV_SCALINGS) <= set(policies)
    started = time.perf_counter()
    with single_threaded_blas():
        for seed in range(resplits):
            mask = resplit(labels, test_share, seed)
            for name, parts, protocol in contenders:
                results: dict[str, dict[str, float]] = {}
                for policy in policies:
                    if not (derived and policy == CHOSEN):
                        results[policy] = score_candidate(features, parts, mask, protocol, seed, scaling=policy)
                if derived:
                    results[CHOSEN] = _chosen_by_cv(results)
                for policy in policies:
                    rows.setdefault(row_name(name, protocol, policy), []).append(results[policy])
    summary = {}
    for name, results in rows.items():
        plain = [r["accuracy"] for r in results]
        tta = [r["accuracy_tta"] for r in results]
        summary[name] = {"mean": statistics.fmean(plain), "sd": statistics.pstdev(plain),
                         "mean_tta": statistics.fmean(tta), "sd_tta": statistics.pstdev(tta),
                         "per_split": plain, "l2": [r["l2"] for r in results],
                         "scaling": [r["scaling"] for r in results]}
    for policy in policies:
        for name, protocol in [(n, p) for n, _, p in contenders]:
            row = summary[row_name(name, protocol, policy)]  # paired: the same re-splits for every contender
            if baseline:
                reference = summary[row_name("s6+top", "holdout", policy)]["per_split"]
                row["wins_vs_previous_default"] = sum(a > b for a, b in zip(row["per_split"], reference))
                row["ties_vs_previous_default"] = sum(a == b for a, b in zip(row["per_split"], reference))
            for other in policies[:policies.index(policy)]:  # paired against each scaling listed before it
                theirs = summary[row_name(name, protocol, other)]["per_split"]
                row[f"vs_{other}"] = {"won": sum(a > b for a, b in zip(row["per_split"], theirs)),
                                      "lost": sum(a < b for a, b in zip(row["per_split"], theirs)),
                                      "mean_difference": statistics.fmean(row["per_split"]) - statistics.fmean(theirs)}

    return {"data": str(data), "backbone": backbone, "image_size": image_size, "photos": int(len(labels)),
            "scaling": [p or RECIPE_SCALING for p in policies] if several else (scaling or RECIPE_SCALING),
            "classes": features["classes"], "test_share": test_share, "resplits": resplits,
            "feature_seconds": features["seconds"], "fit_seconds": time.perf_counter() - started,
            "results": summary}
