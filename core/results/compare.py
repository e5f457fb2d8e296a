"""Two runs compared on the same photos (issue 20): is the difference real, or the luck of these photos?

Both runs are scored on one set of photos: the ones each run's evaluation.json already holds (they must be the same
photos, matched by path, with the same true classes), or every photo of a labelled folder (`data`) scored now by
both models. Differences are B minus A throughout (the second run against the first), in accuracy and macro-F1:

- a 95% interval from a paired bootstrap over photos: each replicate draws photo indices with replacement once and
  scores both runs on that same draw, so what the two runs share (easy and hard photos) cancels out;
- McNemar's test on the photos exactly one run got right: the exact two-sided binomial p-value when there are fewer
  than MCNEMAR_EXACT_BELOW of them, else the chi-square test with continuity correction (1 degree of freedom);
- per-class recall and F1 of each run and their differences; each run's epoch curves, to draw over each other.

The rule for "significant" (a real difference, "not chance"): the accuracy interval excludes 0 AND McNemar's
p < 0.05. Both ask whether the accuracies differ, in two ways: the percentile bootstrap is slightly too narrow on few
photos, McNemar's exact test is conservative, and a claim made to stakeholders should survive both. When they
disagree the verdict says the photos cannot confirm the difference. Macro-F1's interval is reported, not ruled on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core import StudioError
from core.base.runs import RunDir
from core.results.metrics import macro_f1_of

BOOTSTRAP_REPLICATES = 2000
MCNEMAR_EXACT_BELOW = 25  # discordant photos under which the exact binomial test is used
ALPHA = 0.05
CHUNK_CELLS = 4_000_000  # replicate x photo indices drawn at once (bounded memory however many photos)
EXAMPLES = 24  # photos listed per side of the discordant pairs
# Settings that say nothing about what a run learned (or are recorded under `resolved`): left out of "settings".
IGNORED_SETTINGS = ("run_name", "versions", "threads", "log_every_steps", "overrides")
RESOLVED_SETTINGS = ("image_size", "finetune_epochs", "recipe")
# The setting that names a run in the verdict when two runs read alike (an experiment pair's setting first).
NAMING_SETTINGS = ("backbone", "weights", "augmentation", "image_size", "optimizer", "head_mode", "head_lr",
                   "finetune_epochs", "head_epochs", "dropout", "label_smoothing", "tta")


# ------------------------------------------------------------------------------------------------ statistics
def mcnemar(a_right: np.ndarray, b_right: np.ndarray) -> dict[str, Any]:
    """McNemar's test of paired right/wrong outcomes: exact binomial below MCNEMAR_EXACT_BELOW discordant photos,
    else chi-square with continuity correction. p = 1 when no photo separates the runs."""
    a_right, b_right = np.asarray(a_right, bool), np.asarray(b_right, bool)
    a_only, b_only = int(np.sum(a_right & ~b_right)), int(np.sum(b_right & ~a_right))
    n = a_only + b_only
    if n == 0:
        return {"a_only_right": 0, "b_only_right": 0, "discordant": 0, "p_value": 1.0, "method": "no discordant photos"}
    if n < MCNEMAR_EXACT_BELOW:
        tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1)) / 2.0 ** n
        return {"a_only_right": a_only, "b_only_right": b_only, "discordant": n, "p_value": min(1.0, 2.0 * tail),
                "method": "exact binomial (two-sided)"}
    statistic = max(0.0, abs(a_only - b_only) - 1.0) ** 2 / n
    # The chi-square distribution with 1 degree of freedom: P(X > s) = erfc(sqrt(s / 2)).
    return {"a_only_right": a_only, "b_only_right": b_only, "discordant": n, "statistic": statistic,
            "p_value": math.erfc(math.sqrt(statistic / 2.0)), "method": "chi-square with continuity correction"}


def paired_bootstrap(true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, num_classes: int,
                     replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0) -> dict[str, np.ndarray]:
    """B - A in accuracy and macro-F1 for each bootstrap replicate: photo indices drawn with replacement once per
    replicate, the same draw for both runs."""
    true, pred_a, pred_b = (np.asarray(v, np.int64) for v in (true, pred_a, pred_b))
    n = len(true)
    rng = np.random.default_rng(seed)
    right_a, right_b = (pred_a == true).astype(np.float64), (pred_b == true).astype(np.float64)
    accuracy, macro = np.empty(replicates), np.empty(replicates)
    step = max(1, CHUNK_CELLS // max(n, 1))
    for start in range(0, replicates, step):
        stop = min(start + step, replicates)
        index = rng.integers(0, n, size=(stop - start, n))
        accuracy[start:stop] = right_b[index].mean(axis=1) - right_a[index].mean(axis=1)
        macro[start:stop] = macro_f1_of(true[index], pred_b[index], num_classes) \
            - macro_f1_of(true[index], pred_a[index], num_classes)
    return {"accuracy": accuracy, "macro_f1": macro}


def interval(values: np.ndarray) -> list[float]:
    """The 95% percentile interval of bootstrap replicates."""
    low, high = np.percentile(values, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return [float(low), float(high)]


def per_class_differences(true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                          classes: Sequence[str]) -> list[dict[str, Any]]:
    """Recall and F1 of each run per class (classes with photos), and B - A."""
    from core.results.metrics import confusion_matrix, per_class_scores

    scores_a = per_class_scores(confusion_matrix(true, pred_a, len(classes)), classes)
    scores_b = per_class_scores(confusion_matrix(true, pred_b, len(classes)), classes)
    return [{"class": a["class"], "photos": a["support"], "recall_a": a["recall"], "recall_b": b["recall"],
             "difference": b["recall"] - a["recall"], "f1_a": a["f1"], "f1_b": b["f1"],
             "f1_difference": b["f1"] - a["f1"]}
            for a, b in zip(scores_a, scores_b) if a["support"] > 0]


def compare_predictions(true: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int], classes: Sequence[str],
                        labels: tuple[str, str] = ("A", "B"), replicates: int = BOOTSTRAP_REPLICATES,
                        seed: int = 0) -> dict[str, Any]:
    """Every number of a comparison from the two runs' predictions on the same photos (class indices): accuracy and
    macro-F1 with B - A and its interval, McNemar, per-class differences, `significant` and the verdict."""
    from core.results.metrics import confusion_matrix, macro_f1, per_class_scores

    true, pred_a, pred_b = (np.asarray(v, np.int64) for v in (true, pred_a, pred_b))
    if not len(true):
        raise StudioError("There are no photos to compare the two runs on.")
    if replicates < 100:
        raise StudioError(f"A 95% interval needs at least 100 bootstrap replicates, not {replicates}.")
    right_a, right_b = pred_a == true, pred_b == true
    boot = paired_bootstrap(true, pred_a, pred_b, len(classes), replicates, seed)
    f1 = [macro_f1(per_class_scores(confusion_matrix(true, p, len(classes)), classes)) or 0.0 for p in (pred_a, pred_b)]
    accuracy = {"a": float(right_a.mean()), "b": float(right_b.mean()),
                "difference": float(right_b.mean() - right_a.mean()), "ci95": interval(boot["accuracy"])}
    macro = {"a": f1[0], "b": f1[1], "difference": f1[1] - f1[0], "ci95": interval(boot["macro_f1"])}
    test = mcnemar(right_a, right_b)
    excludes_zero = accuracy["ci95"][0] > 0 or accuracy["ci95"][1] < 0
    significant = bool(excludes_zero and test["p_value"] < ALPHA)
    return {"photos": int(len(true)), "direction": "B - A (the second run minus the first)",
            "accuracy": accuracy, "macro_f1": macro, "mcnemar": test,
            "per_class": per_class_differences(true, pred_a, pred_b, classes),
            "significant": significant,
            "significance_rule": "the accuracy difference's 95% interval excludes 0 and McNemar's p < 0.05",
            "bootstrap": {"replicates": int(replicates), "seed": int(seed), "paired": True},
            "verdict": verdict(labels, accuracy, test, significant, excludes_zero, len(true))}


def verdict(labels: tuple[str, str], accuracy: dict[str, Any], test: dict[str, Any], significant: bool,
            excludes_zero: bool, photos: int) -> str:
    """One sentence: B's and A's accuracy, B - A in points with its interval, and what it means."""
    head = (f"{_named(labels[1])}: {accuracy['b']:.1%}, {_named(labels[0])}: {accuracy['a']:.1%}: "
            f"{_signed(100 * accuracy['difference'])} points (95% CI {interval_words(accuracy['ci95'])})")
    if significant:
        return f"{head}, not chance (McNemar p {_p(test['p_value'])}, {photos:,} photos)."
    if excludes_zero or test["p_value"] < ALPHA:
        which = "the interval excludes 0" if excludes_zero else "the interval includes 0"
        return (f"{head}: a difference these {photos:,} photos cannot confirm ({which}, McNemar p "
                f"{_p(test['p_value'])}).")
    return f"{head}: no real difference on these {photos:,} photos (McNemar p {_p(test['p_value'])})."


def interval_words(ci95: Sequence[float]) -> str:
    """'13.8–37.5' for an interval of positive points; '−2.6 to +0.6' or '−60.7 to −50.9' once a bound is
    negative ('-2.6–0.6' read as a range from 2.6)."""
    low, high = (100 * v for v in ci95)
    if low >= 0:
        return f"{low:.1f}–{high:.1f}"
    return f"{_signed(low)} to {_signed(high)}"


def _signed(points: float) -> str:
    """+3.1, −2.6 (a real minus sign), 0.0."""
    text = f"{points:+.1f}"
    return text.replace("-", "\u2212") if text not in ("+0.0", "-0.0") else "0.0"


def _named(label: str) -> str:
    """A run's name, quoted when it holds a colon ('pair 1: pretrained'), which the sentence uses as a separator."""
    return f"“{label}”" if ":" in label else label


def _p(value: float) -> str:
    """'< 0.001', '= 0.018', '= 0.35': as a p-value is written after its p."""
    return "< 0.001" if value < 0.001 else f"= {value:.3f}" if value < 0.1 else f"= {value:.2f}"


# ------------------------------------------------------------------------------------------------ the runs
def run_label(config: dict[str, Any]) -> str:
    """'EfficientNet-Lite0 transfer', 'Baseline CNN from scratch', or the run's own name."""
    from core.base.backbones import BACKBONES

    if config.get("run_name"):
        return str(config["run_name"])
    spec = BACKBONES.get(str(config.get("backbone")))
    if spec is None:
        return str(config.get("backbone") or "unknown backbone")
    name = spec.label.split(" (")[0]
    if spec.from_scratch:
        return f"{name} from scratch"
    return f"{name} {'transfer' if config.get('weights') else 'from random weights'}"


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """What a run was trained with, flat: its settings (a setting its config.json predates at the default it ran
    with) plus the resolved image size, fine-tune epochs and recipe."""
    from core.base.config import all_defaults

    given = {**all_defaults(str(config.get("backbone"))), **config}
    values = {k: v for k, v in given.items() if k not in IGNORED_SETTINGS and k != "resolved"}
    resolved = config.get("resolved") or {}
    values.update({k: resolved[k] for k in RESOLVED_SETTINGS if k in resolved})
    return values


def differing_settings(first: dict[str, Any], second: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{setting: {"a": value, "b": value}} for every setting the two configs hold differently."""
    a, b = _settings(first), _settings(second)
    keys = sorted(set(a) | set(b))
    same = lambda x, y: json.dumps(x, sort_keys=True, default=str) == json.dumps(y, sort_keys=True, default=str)
    return {k: {"a": a.get(k), "b": b.get(k)} for k in keys if not same(a.get(k), b.get(k))}


def _describe(run: RunDir, config: dict[str, Any], differences: dict[str, dict[str, Any]], role: str,
              label: str) -> dict[str, Any]:
    from core.base.backbones import BACKBONES

    spec = BACKBONES.get(str(config.get("backbone")))
    return {"id": run.run_id, "path": str(run.path), "label": label, "backbone": config.get("backbone"),
            "backbone_label": spec.label if spec else config.get("backbone"),
            "from_scratch": bool(spec and spec.from_scratch),
            "settings": {k: v[role] for k, v in differences.items()}}


def _labels(configs: tuple[dict[str, Any], dict[str, Any]], runs: tuple[RunDir, RunDir],
            differences: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """Each run's name in the verdict; two that read alike get the first setting that differs, else their ids."""
    labels = [run_label(c) for c in configs]
    if labels[0] != labels[1]:
        return labels[0], labels[1]
    shown = [k for k in NAMING_SETTINGS if k in differences] + \
        [k for k in differences if k not in NAMING_SETTINGS and k not in ("data", "seed")]
    if shown:
        key = shown[0]
        return tuple(f"{label} ({key.replace('_', ' ')} {_short(key, differences[key][role])})"
                     for label, role in zip(labels, ("a", "b")))  # type: ignore[return-value]
    return f"{labels[0]} ({runs[0].run_id})", f"{labels[1]} ({runs[1].run_id})"


def _short(key: str, value: Any) -> str:
    """A setting's value in a few words: an augmentation spec by its transforms' names."""
    from core.base.safetext import shorten

    if key == "augmentation" and isinstance(value, list):
        names = [str(t.get("name")) for t in value if isinstance(t, dict)]
        return shorten(", ".join(names), 40) if names else "none"
    return shorten(value if isinstance(value, str) else json.dumps(value, default=str), 30)


def _epoch_curves(run: RunDir) -> list[dict[str, Any]]:
    return [record for record in run.read_metrics() if record.get("kind") == "epoch"]


SOURCES = {"test": "test split", "val": "validation split", "train": "training split"}
# progress(stage, done, total) while --data is scored: "decoding A", "scoring A", then the same for B.
Progress = Callable[[str, int, int], None]


def _saved_scores(run: RunDir, role: str) -> dict[str, Any]:
    """A run's own evaluation.json, which must keep every scored photo's prediction."""
    evaluation = run.read_evaluation()
    if evaluation is None:
        raise StudioError(f"Run {role} ({run.run_id}) has no evaluation.json: it has not finished training (or was "
                          "stopped before its evaluation). Evaluate it first (python -m core evaluate "
                          f"{run.run_id}), or compare both runs on one labelled folder with --data.")
    if not evaluation.get("predictions"):
        raise StudioError(f"Run {role} ({run.run_id}) has an evaluation.json from before per-photo predictions were "
                          f"kept: evaluate it again (python -m core evaluate {run.run_id}), or compare on a labelled "
                          "folder with --data.")
    return evaluation


def _scores_on(run: RunDir, data: Path, role: str, progress: Progress | None) -> dict[str, Any]:
    """A run's scores on every photo of a labelled folder (what `evaluate --data` does, saved the same way)."""
    from core.results.evaluate import evaluate_run

    said = (lambda stage, done, total: progress(f"{stage} {role}", done, total)) if progress else None
    return evaluate_run(run, data=data, progress=said)


def learned_from(run: RunDir, root: Path, paths: Sequence[str]) -> int:
    """How many of these photos (relative to `root`) the run trained or chose on (split.json's train and val): the
    same file, or a file of the same name and size (the same folder uploaded again lands in another folder)."""
    split = run.read_split()
    base = Path(str(split.get("root") or ""))
    seen: set[Path] = set()
    signatures: set[tuple[str, int]] = set()
    for part in ("train", "val"):
        for entry in split.get(part) or []:
            path = base / str(entry[0])
            seen.add(path.resolve())
            try:
                signatures.add((path.name, path.stat().st_size))
            except OSError:  # moved since: only its path can match
                pass
    count = 0
    for relative in paths:
        photo = root / relative
        try:
            if photo.resolve() in seen or (photo.name, photo.stat().st_size) in signatures:
                count += 1
        except OSError:
            continue
    return count


def _aligned(evaluations: tuple[dict[str, Any], dict[str, Any]], runs: tuple[RunDir, RunDir],
             classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The photos both evaluations scored, in A's order (paths, true, A's and B's predicted class in `classes`'
    order); refuses when the sets of photos or their true classes differ."""
    tables = []
    for evaluation in evaluations:
        order = [classes.index(name) for name in evaluation["classes"]]  # its indices -> `classes`' indices
        table = evaluation["predictions"]
        tables.append({path: (order[t], order[p]) for path, t, p in
                       zip(table["paths"], table["true"], table["predicted"])})
    first, second = tables
    names = f"run A ({runs[0].run_id}) and run B ({runs[1].run_id})"
    if set(first) != set(second):
        only_a, only_b = sorted(set(first) - set(second)), sorted(set(second) - set(first))
        common = len(set(first) & set(second))
        example = (f"e.g. {only_a[0]} only in A" if only_a else f"e.g. {only_b[0]} only in B")
        raise StudioError(f"Cannot compare {names}: they were not scored on the same photos (A: {len(first)}, B: "
                          f"{len(second)}, {common} in common; {example}). Compare them on one labelled folder "
                          "with --data DIR, which scores both models on the same photos.")
    relabelled = [path for path in first if first[path][0] != second[path][0]]
    if relabelled:
        path = relabelled[0]
        raise StudioError(f"Cannot compare {names}: {len(relabelled)} of their photos have a different true class "
                          f"in each (e.g. {path}: {classes[first[path][0]]} in A, {classes[second[path][0]]} in B; "
                          "a correction made between the runs?), so their scores do not measure the same thing. "
                          "Compare them on one labelled folder with --data DIR.")
    paths = list(first)
    true = np.asarray([first[p][0] for p in paths], np.int64)
    return paths, true, np.asarray([first[p][1] for p in paths], np.int64), \
        np.asarray([second[p][1] for p in paths], np.int64)


def _same_classes(runs: tuple[RunDir, RunDir]) -> list[str]:
    classes = [run.read_classes() for run in runs]
    if not classes[0] or not classes[1]:
        missing = runs[0] if not classes[0] else runs[1]
        raise StudioError(f"Run {missing.run_id} has no classes.json: it has not got as far as training.")
    if set(classes[0]) != set(classes[1]):
        only_a = sorted(set(classes[0]) - set(classes[1]))
        only_b = sorted(set(classes[1]) - set(classes[0]))
        said = "; ".join(part for part in (
            f"only A knows {', '.join(only_a)}" if only_a else "", f"only B knows {', '.join(only_b)}" if only_b
            else "") if part)
        raise StudioError(f"Cannot compare run A ({runs[0].run_id}) and run B ({runs[1].run_id}): they were trained "
                          f"on different classes ({said}). A comparison needs two runs that tell the same classes "
                          "apart.")
    return classes[0]


def compare_runs(first: RunDir, second: RunDir, data: Path | None = None, seed: int = 0,
                 replicates: int = BOOTSTRAP_REPLICATES, progress: Progress | None = None) -> dict[str, Any]:
    """Run A (`first`) against run B (`second`) on the same photos: their own evaluated photos, or every photo of the
    labelled folder `data` (scored now by both, and saved as each run's evaluations/<folder>.json). Differences are
    B - A. Raises StudioError, naming both runs, when they cannot be compared."""
    runs = (first, second)
    if first.path.resolve() == second.path.resolve():
        raise StudioError(f"Run A and run B are the same run ({first.run_id}): choose two different runs.")
    classes = _same_classes(runs)
    configs = (first.read_config(), second.read_config())
    if data is None:
        evaluations = (_saved_scores(first, "A"), _saved_scores(second, "B"))
        splits = [SOURCES.get(str(e.get("split")), f"{e.get('split')} split") for e in evaluations]
        source = splits[0] if splits[0] == splits[1] else f"{splits[0]} of A, {splits[1]} of B (the same photos)"
    else:
        evaluations = (_scores_on(first, Path(data), "A", progress), _scores_on(second, Path(data), "B", progress))
        source = str(data)
    paths, true, pred_a, pred_b = _aligned(evaluations, runs, classes)
    differences = differing_settings(*configs)
    labels = _labels(configs, runs, differences)
    result = compare_predictions(true, pred_a, pred_b, classes, labels, replicates, seed)
    roots = [e.get("root") for e in evaluations]
    right_a, right_b = pred_a == true, pred_b == true
    result.update({
        "runs": {role: _describe(run, config, differences, role, label)
                 for role, run, config, label in zip(("a", "b"), runs, configs, labels)},
        "differences": differences,
        "source": source,
        "classes": classes,
        "roots": {"a": roots[0], "b": roots[1]},
        "discordant_photos": {"a_only_right": [p for p, x in zip(paths, right_a & ~right_b) if x][:EXAMPLES],
                              "b_only_right": [p for p, x in zip(paths, right_b & ~right_a) if x][:EXAMPLES]},
        "curves": {"a": _epoch_curves(first), "b": _epoch_curves(second)},
    })
    if roots[0] != roots[1]:
        result["note"] = (f"The photos have the same names under two folders ({roots[0]} for A, {roots[1]} for B); "
                          "they are taken to be the same photos.")
    if data is not None:
        learned = {role: learned_from(run, Path(str(root or data)), paths) for role, run, root in
                   zip(("a", "b"), runs, roots)}
        result["trained_on"] = learned
        if any(learned.values()):
            result["warning"] = (f"{learned['a']:,} of these {len(paths):,} photos were among run A's training or "
                                 f"validation photos and {learned['b']:,} among run B's: on them a score says how "
                                 "well a run learned them, not how it does on new photos. Compare on photos neither "
                                 "run trained on (the runs' own test split, or a held-out folder).")
    return {key: result[key] for key in ("verdict", "significant", *[k for k in result if k not in
                                                                    ("verdict", "significant")])}
