"""A stakeholder report: one self-contained HTML file about a run, that opens offline (issue 16, part 4).

Everything is inline: plotly.js once in the head, each figure as JSON, photos and heatmaps as small base64 JPEGs,
styles in one <style>. A Content-Security-Policy meta tag forbids every outside request, so even a name that slipped
through could not make the file reach out. Every name that came from a visitor (class, file and folder names) goes
through `esc`: they are hostile input in this project (core.base.safetext), and this file is opened by someone else.

The report reads the run folder and never writes to it. A run with neither a model nor an evaluation has nothing to
report and is refused with a StudioError; anything else that is missing (curves, evaluation, exports, a health
check, the photos, a loadable model) becomes a sentence saying so in its section.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core import StudioError
from core.base.runs import RunDamaged, RunDir
from core.base.safetext import plain, shorten
from core.results.metrics import saved_macro_f1, wilson_interval

MAX_MISTAKES = 12  # photos shown with their heatmaps; each pair costs ~20-40 kB inline
THUMB_SIDE = 224  # longest side of an inline photo
JPEG_QUALITY = 80
MAX_REPORT_BYTES = 25_000_000  # the limit for one file a person mails or attaches
MATRIX_CLASSES = 100  # beyond this a confusion heatmap is unreadable and its JSON grows with classes squared
TABLE_ROWS = 10  # suspect labels, leaks, confused pairs listed in the report
SMALL_CLASS = 10  # a class with fewer evaluated photos than this has rough per-class figures
SMALL_TEST_SET = 100  # below this the accuracy interval is wide enough to say so in words
REPO = Path(__file__).resolve().parents[2]
# No request may leave the file: inline scripts and styles and data: images only.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
       "font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'")
# A path inside an error text (Keras names the files it chokes on) is cut to its last part: a report made on a
# hosted demo must not describe its server's folders.
SERVER_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/'\"():,;]+/)+([^\s/'\"():,;]*)")


# ----------------------------------------------------------------------------------------- small pure helpers
def esc(text: object, max_chars: int | None = None) -> str:
    """A visitor's name (or any text) as inert HTML: bidi controls dropped, <, >, &, quotes as entities."""
    return html.escape(shorten(text, max_chars) if max_chars else plain(text), quote=True)


def percent(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}%}"


def split_counts(split: dict[str, Any], classes: Sequence[str]) -> dict[str, dict[str, int]]:
    """Photos per class and split from split.json ({class: {train, val, test}}); a label outside the classes is
    not counted (split.json is checked only as far as core.base.runs does)."""
    counts = {name: {"train": 0, "val": 0, "test": 0} for name in classes}
    for part in ("train", "val", "test"):
        for entry in split.get(part) or []:
            label = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
            if isinstance(label, int) and 0 <= label < len(classes):
                counts[classes[label]][part] += 1
    return counts


def when(seconds: float | None) -> str:
    """A time in seconds since the epoch as a local date and time with its offset, or 'not recorded'."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "not recorded"
    return _dt.datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M (UTC%z)")


def error_line(err: BaseException, limit: int = 200) -> str:
    """An error as one short line with server paths cut to their file names."""
    return shorten(SERVER_PATH.sub(r"\1", f"{type(err).__name__}: {err}"), limit)


def git_commit(repo: Path = REPO) -> str | None:
    """The app's commit (short hash), or None outside a git checkout (a deployed copy has none)."""
    try:
        done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def image_data_uri(image: np.ndarray) -> str:
    """An RGB uint8 array as an inline JPEG."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def small_photo(path: Path, side: int = THUMB_SIDE) -> np.ndarray:
    """A photo with its longest side at most `side`, aspect kept (the heatmap is laid over this same picture)."""
    import cv2

    from core.data.images import read_image

    image = read_image(path, target_size=side)
    scale = side / max(image.shape[:2])
    if scale < 1:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


# ----------------------------------------------------------------------------------------- HTML pieces
def table(rows: Sequence[Sequence[str]], header: Sequence[str], numeric: Sequence[int] = ()) -> str:
    """An HTML table from cells that are already HTML (escape names before passing them)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts(pairs: Sequence[tuple[str, str]]) -> str:
    """A definition list: label -> HTML value."""
    return "<dl>" + "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in pairs) + "</dl>"


def note(text: str) -> str:
    return f'<p class="note">{text}</p>'


class Figures:
    """Plotly figures as divs; plotly.js itself is put once in the page's head, so each div carries only its JSON."""

    def __init__(self) -> None:
        self.count = 0

    def html(self, fig) -> str:
        self.count += 1
        return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{self.count}",
                           config={"displaylogo": False, "responsive": True})


def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


# ----------------------------------------------------------------------------------------- what the run holds
@dataclass
class RunFacts:
    """What the report says about a run, read once from its folder; `problems` holds a sentence per damaged file."""

    run: RunDir
    config: dict[str, Any]
    classes: list[str]
    split: dict[str, Any]
    evaluation: dict[str, Any] | None
    status: dict[str, Any]
    epochs: list[dict[str, Any]]
    parity: dict[str, Any]
    health: dict[str, Any] | None
    health_checked: float | None
    problems: list[str] = field(default_factory=list)

    @property
    def dataset_name(self) -> str:
        """The dataset's folder name only (its full path may be a server's)."""
        root = self.split.get("root") or self.config.get("data") or ""
        return Path(str(root)).name or "unnamed"

    @property
    def image_size(self) -> int | None:
        size = (self.config.get("resolved") or {}).get("image_size") or self.config.get("image_size")
        return int(size) if isinstance(size, (int, float)) else None


def _read(problems: list[str], reader: Callable[[], Any], default: Any) -> Any:
    """A run reader's value, or `default` with the damage said once in `problems` (the report still builds)."""
    try:
        return reader()
    except (RunDamaged, ValueError, OSError) as err:
        problems.append(str(err) if isinstance(err, RunDamaged) else error_line(err))
        return default


def read_facts(run: RunDir, cache_dir: Path | None = None) -> RunFacts:
    """Everything the report shows, from the run folder (and a saved health check of its dataset, if any)."""
    from core.results.charts import epoch_rows
    from core.serving.export import read_parity

    config = run.read_config()  # a damaged config.json is a RunDamaged: without it there is no run to describe
    problems: list[str] = []
    evaluation = _read(problems, run.read_evaluation, None)
    if evaluation is None and not run.has_model():
        raise StudioError(f"Run {run.run_id} has no model and no evaluation yet, so there is nothing to report: "
                          "let it finish training (or train it again), then make the report.")
    classes = _read(problems, run.read_classes, []) or (evaluation or {}).get("classes") or []
    split = _read(problems, run.read_split, {})
    status = _read(problems, run.read_status, None) or {}
    metric_lines = run.read_metric_lines()
    if metric_lines.note(run.run_id):
        problems.append(metric_lines.note(run.run_id))
    parity = _read(problems, lambda: read_parity(run), {})
    health, checked = saved_health(run, config, split, cache_dir)
    return RunFacts(run, config, list(classes), split, evaluation, status, epoch_rows(metric_lines.records),
                    parity if isinstance(parity, dict) else {}, health, checked, problems)


def saved_health(run: RunDir, config: dict[str, Any], split: dict[str, Any],
                 cache_dir: Path | None = None) -> tuple[dict[str, Any] | None, float | None]:
    """The last health check saved for the run's dataset (core.results.health), and when it was made; (None, None) if none.

    The Data page keys it by the scanned dataset root and keeps it in the workspace's cache: look where training
    cached its images, then beside the run's models folder."""
    from core.results.health import load_saved_report, saved_report_path
    from core.data.imagecache import default_cache_dir

    roots = [r for r in (split.get("root"), config.get("data")) if isinstance(r, str) and r]
    caches = [Path(c) for c in (cache_dir, (config.get("resolved") or {}).get("cache_dir"),
                                default_cache_dir(run.path.parent)) if c]
    for cache in caches:
        for root in roots:
            report = load_saved_report(root, cache)
            if isinstance(report, dict):
                return report, saved_report_path(root, cache).stat().st_mtime
    return None, None


# ----------------------------------------------------------------------------------------- sections
def headline(f: RunFacts) -> str:
    """The one paragraph a stakeholder reads: how often it is right, on how many photos, give or take how much."""
    evaluation = f.evaluation
    if evaluation is None:
        return note(f"This run has a model but no evaluation yet, so no score can be given. Evaluate it (the Evaluate "
                    f"page, or <code>python -m core evaluate {esc(f.run.run_id)}</code>) and make the report again.")
    correct, total = _correct_total(evaluation)
    low, high = wilson_interval(correct, total)
    return (f'<p class="headline">Right on <strong>{percent(evaluation["accuracy"])}</strong> of {total:,} held-out '
            f"photos ({esc(evaluation.get('split') or 'unknown')} split); with 95% confidence the accuracy on "
            f"photos like these lies between {percent(low)} and {percent(high)}.</p>")


def _correct_total(evaluation: dict[str, Any]) -> tuple[int, int]:
    matrix = np.asarray(evaluation["confusion_matrix"], dtype=np.int64)
    return int(np.trace(matrix)), int(matrix.sum())


def model_card(f: RunFacts, generated: float) -> str:
    """Intended use, classes, training data, metrics, limits, date and versions (Mitchell et al.'s model card,
    cut to what this app knows)."""
    return ("<h2 id=\"model-card\">Model card</h2>"
            + _card_use(f) + _card_model(f) + _card_data(f) + _card_metrics(f) + _card_limits(f)
            + _card_versions(f, generated))


def _class_list(classes: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(f"<q>{esc(c, 60)}</q>" for c in classes[:limit])
    return shown + (f" and {len(classes) - limit:,} more" if len(classes) > limit else "")


def _from_scratch(f: RunFacts) -> bool:
    """A run of a from-scratch backbone (the baseline CNN): config.json's resolved recipe says so."""
    return (f.config.get("resolved") or {}).get("recipe") == "from scratch"


def _card_use(f: RunFacts) -> str:
    how = ("It is a small CNN trained from random initialisation (no pretrained weights), the baseline that shows "
           "what transfer learning buys," if _from_scratch(f) else
           "It was trained by transfer learning from an ImageNet EfficientNet")
    return ("<h3>Intended use</h3>"
            f"<p>Sorting photos into one of {len(f.classes)} classes: {_class_list(f.classes)}. "
            f"{how} on the photos described below, as a prototype to judge "
            "whether the task can be automated. It is not meant for decisions about people, or for any use where a "
            "wrong answer is costly without a person checking it; every photo gets one of its classes, even a photo "
            "of something else entirely.</p>")


def _card_model(f: RunFacts) -> str:
    from core.base.backbones import get_backbone

    name = f.config.get("backbone")
    try:
        label = get_backbone(str(name)).label
    except StudioError:
        label = str(name)
    status = f.status
    head = {"features": "a new head fitted on the frozen backbone's features",
            "images": "a new head trained on augmented photos"}.get(f.config.get("head_mode"), "a new head")
    finetune = (f.config.get("resolved") or {}).get("finetune_epochs", f.config.get("finetune_epochs"))
    recipe = f"{head}, {_fine_tuning(finetune)}"
    if _from_scratch(f):
        recipe = "every layer trained from random initialisation on augmented photos, no pretrained weights"
    return "<h3>Model</h3>" + facts([
        ("Run", f"{esc(f.run.run_id)}" + (f" ({esc(f.config['run_name'], 60)})" if f.config.get("run_name") else "")),
        ("Backbone", f"{esc(label)} at {f.image_size or 'n/a'} px"),
        ("Recipe", f"{recipe}; test-time mirroring {'on' if f.config.get('tta') else 'off'}"),
        ("Trained", f"{esc(status.get('state', 'unknown'))}, finished {when(status.get('finished'))}"),
    ])


def _fine_tuning(epochs: Any) -> str:
    if not isinstance(epochs, int) or isinstance(epochs, bool):
        return "fine-tuning not recorded"
    return "the backbone itself left as it was" if epochs == 0 else \
        f"then up to {epochs} epoch{'s' if epochs > 1 else ''} fine-tuning the top of the backbone"


def _card_data(f: RunFacts) -> str:
    counts = split_counts(f.split, f.classes)
    totals = {part: sum(c[part] for c in counts.values()) for part in ("train", "val", "test")}
    source = {"folders": "the dataset's own train/val/test folders",
              "random": f"a random split stratified by class (seed {esc(f.split.get('seed'))})"}
    how = source.get(f.split.get("source"), "not recorded")
    return "<h3>Training data</h3>" + facts([
        ("Dataset", f"<q>{esc(f.dataset_name, 80)}</q>, {sum(totals.values()):,} photos in {len(f.classes)} classes"),
        ("Split", f"{totals['train']:,} train, {totals['val']:,} validation, {totals['test']:,} test; from {how}"),
        ("Augmentation", esc(", ".join(str(a.get("name")) for a in f.config.get("augmentation") or []
                                       if isinstance(a, dict)) or "none")),
        ("Corrections", corrections_line(_read(f.problems, f.run.read_overrides_used, None))),
    ])


def corrections_line(used: dict[str, Any] | None) -> str:
    """The cleaning loop's corrections the run trained with (its overrides.json), in words."""
    if not used or not used.get("count"):
        return "none: every photo under its folder's class"
    relabelled, excluded = len(used.get("relabelled") or []), len(used.get("excluded") or [])
    return (f"{relabelled:,} photo(s) relabelled and {excluded:,} excluded by the user before training (the files "
            "themselves untouched; listed in the run's overrides.json)")


def _card_metrics(f: RunFacts) -> str:
    evaluation = f.evaluation
    if evaluation is None:
        return "<h3>Metrics</h3>" + note("Not evaluated yet.")
    from core.training.jobs import majority_baseline

    correct, total = _correct_total(evaluation)
    low, high = wilson_interval(correct, total)
    baseline, majority = majority_baseline(evaluation)
    pairs = [
        ("Evaluated on", f"{total:,} photos of the {esc(evaluation.get('split') or 'unknown')} split, none used "
                         "to fit the model" if evaluation.get("split") == "test" else
                         f"{total:,} photos of the {esc(evaluation.get('split') or 'unknown')} split"),
        ("Accuracy", f"{percent(evaluation['accuracy'])} ({correct:,} of {total:,}; 95% interval "
                     f"{percent(low)} to {percent(high)}, Wilson)"),
        ("Macro F1", percent(saved_macro_f1(evaluation))),
        (f"Top-{evaluation.get('top_k', 1)} accuracy", percent(evaluation.get("top_k_accuracy"))),
        ("Macro ROC AUC", "n/a" if evaluation.get("macro_auc") is None else f"{evaluation['macro_auc']:.3f}"),
        ("Always answering the commonest class", f"{percent(baseline)} (<q>{esc(majority, 60)}</q>)"),
    ]
    ece = next((evaluation[k] for k in ("ece", "expected_calibration_error")
                if isinstance(evaluation.get(k), (int, float)) and math.isfinite(evaluation[k])), None)
    if ece is not None:  # written by newer evaluations only
        pairs.append(("Expected calibration error", f"{ece:.3f} (0 = confidences match how often it is right)"))
    return "<h3>Metrics</h3>" + facts(pairs)


def limits(f: RunFacts) -> list[str]:
    """What a reader of the numbers should keep in mind, one sentence (HTML) each."""
    said = [f"It knows only its {len(f.classes)} classes: a photo of anything else still gets one of them, often "
            "with high confidence.",
            "Photos unlike the training photos (another camera, light, background, framing, or a changed subject) "
            "can score well below the figures here; check it on a sample of the photos it will really see."]
    evaluation = f.evaluation
    if evaluation is not None:
        correct, total = _correct_total(evaluation)
        low, high = wilson_interval(correct, total)
        if total < SMALL_TEST_SET:
            said.insert(0, f"The test set is small ({total:,} photos): the accuracy is known only to within "
                           f"{percent(low)} to {percent(high)} (95%).")
        small = [row["class"] for row in evaluation.get("per_class") or [] if row.get("support", 0) < SMALL_CLASS]
        if small:
            said.append(f"{len(small)} class{'es' if len(small) > 1 else ''} had fewer than {SMALL_CLASS} evaluated "
                        f"photos ({_class_list(small, 8)}): {'their' if len(small) > 1 else 'its'} own scores are "
                        "rough.")
        if evaluation.get("split") == "val":
            said.append("It was scored on the validation photos, which also chose its settings: expect a little "
                        "less on new photos.")
    if f.health and f.health.get("leaks"):
        said.append(f"The health check found {len(f.health['leaks']):,} near-duplicate group(s) shared between "
                    "training and test photos, which make the test score look better than it is.")
    return said


def _card_limits(f: RunFacts) -> str:
    return "<h3>Limits</h3><ul>" + "".join(f"<li>{item}</li>" for item in limits(f)) + "</ul>"


def _card_versions(f: RunFacts, generated: float) -> str:
    versions = f.config.get("versions") or {}
    trained = ", ".join(f"{esc(k)} {esc(v)}" for k, v in versions.items()) if isinstance(versions, dict) else ""
    commit = git_commit()
    return "<h3>Date and versions</h3>" + facts([
        ("Report generated", when(generated)),
        ("Trained with", trained or "not recorded"),
        ("Report made by", f"EfficientNet Studio {('commit ' + esc(commit)) if commit else '(no git commit found)'}"
                           f", Python {esc(platform.python_version())}"),
    ])


def dataset_section(f: RunFacts, figures: Figures) -> str:
    """Photos per class and split (chart and table), then the data health check's findings."""
    from core.results.charts import class_counts_figure

    counts = split_counts(f.split, f.classes)
    out = '<h2 id="data">Dataset</h2>'
    if not any(sum(c.values()) for c in counts.values()):
        out += note("The run's split (split.json) lists no photos.")
    else:
        out += figures.html(class_counts_figure(counts))
        rows = [[esc(name), f"{c['train']:,}", f"{c['val']:,}", f"{c['test']:,}", f"{sum(c.values()):,}"]
                for name, c in counts.items()]
        out += table(rows, ["class", "train", "validation", "test", "total"], numeric=(1, 2, 3, 4))
    return out + health_section(f)


def health_section(f: RunFacts) -> str:
    """The saved health check's counts and its first suspects, or 'not checked'."""
    report = f.health
    out = "<h3>Data health</h3>"
    if not report:
        return out + note("Not checked: no data health check is saved for this dataset. Run it on the Data page, or "
                          "<code>python -m core health DATA</code>, then make the report again.")
    suspects = report.get("suspect_labels") or []
    imbalance = report.get("imbalance") or {}
    used = sum(sum(c.values()) for c in split_counts(f.split, f.classes).values())
    changed = (f" (the run used {used:,}: the folder changed since the check)"
               if isinstance(report.get("photos"), int) and used and report["photos"] != used else "")
    out += facts([
        ("Checked", f"{when(f.health_checked)}, {esc(report.get('photos', 'n/a'))} photos{changed}"),
        ("Possible wrong labels", f"{sum(1 for s in suspects if s.get('confident')):,} confident, "
                                  f"{len(suspects):,} in all"),
        ("Near-duplicate groups", f"{len(report.get('near_duplicates') or []):,}"),
        ("Shared between train and test (leaks)", f"{len(report.get('leaks') or []):,}"),
        ("Outliers", f"{len(report.get('outliers') or []):,}"),
        ("Odd shapes (tiny or extreme aspect)", f"{len(report.get('odd_shapes') or []):,}"),
        ("Imbalance (largest / smallest class)", esc(imbalance.get("largest_over_smallest", "n/a"))),
    ] + ([("Label corrections applied before the check", f"{report['corrections']:,}")]
         if isinstance(report.get("corrections"), int) and report["corrections"] else []))
    if suspects:
        rows = [[esc(s.get("path"), 80), esc(s.get("label"), 40), esc(s.get("suggested"), 40),
                 esc(s.get("score"))] for s in suspects[:TABLE_ROWS]]
        out += f"<h4>First {len(rows)} possible wrong labels</h4>"
        out += table(rows, ["photo", "labelled", "looks like", "score"], numeric=(3,))
    return out


def training_section(f: RunFacts, figures: Figures) -> str:
    """Loss and accuracy curves (or the head fit's points, said in words)."""
    from core.results.charts import best_epoch, curve_figure, head_fit_caption

    out = '<h2 id="training">Training curves</h2>'
    if not f.epochs:
        return out + note("No epoch lines were logged (metrics.jsonl), so there are no curves.")
    if any(e.get("l2") is not None for e in f.epochs):
        out += note(esc(head_fit_caption(f.epochs)))
    best = best_epoch(f.epochs)
    if best is not None:
        out += note(f"Lowest validation loss at point {esc(best['epoch'])}: {best['val_loss']:.3f}"
                    + (f", validation accuracy {percent(best.get('val_accuracy'))}."
                       if best.get("val_accuracy") is not None else "."))
    return (out + '<div class="pair">' + figures.html(curve_figure(f.epochs, "loss", "Loss"))
            + figures.html(curve_figure(f.epochs, "accuracy", "Accuracy")) + "</div>")


def evaluation_section(f: RunFacts, figures: Figures) -> str:
    """Confusion matrix, per-class table and the most confused pairs."""
    from core.results.charts import confusion_figure

    out = '<h2 id="evaluation">Evaluation</h2>'
    evaluation = f.evaluation
    if evaluation is None:
        return out + note("Not evaluated yet.")
    classes = evaluation["classes"]
    if len(classes) <= MATRIX_CLASSES:
        out += figures.html(confusion_figure(evaluation["confusion_matrix"], classes, normalised=False))
    else:
        out += note(f"{len(classes):,} classes are too many for a readable confusion matrix; the most confused "
                    "pairs are listed below.")
    rows = [[esc(r["class"]), percent(r["precision"]), percent(r["recall"]), percent(r["f1"]), f"{r['support']:,}"]
            for r in evaluation.get("per_class") or []]
    if rows:
        out += "<h3>Per class</h3>" + table(rows, ["class", "precision", "recall", "F1", "photos"], (1, 2, 3, 4))
    pairs = evaluation.get("most_confused") or []
    if pairs:
        out += "<h3>Most confused pairs</h3>" + table(
            [[esc(p["true"]), esc(p["predicted"]), f"{p['count']:,}"] for p in pairs[:TABLE_ROWS]],
            ["true class", "predicted as", "photos"], numeric=(2,))
    return out + calibration_section(f, figures)


def calibration_section(f: RunFacts, figures: Figures) -> str:
    """The reliability diagram with its ECE, and the "unknown" threshold Classify uses, when the run has them."""
    from core.results.charts import reliability_figure

    evaluation, out = f.evaluation or {}, ""
    reliability, ece = evaluation.get("reliability"), evaluation.get("ece")
    if isinstance(reliability, dict) and isinstance(ece, (int, float)):
        out += ("<h3>Confidence and calibration</h3>" + figures.html(reliability_figure(reliability, ece))
                + note(f"Expected calibration error {percent(ece)}: on average the model's confidence and its "
                       "accuracy differ by this much (15 confidence bins); 0 would mean a photo scored 80% is right "
                       "80% of the time."))
    calibration = _read(f.problems, f.run.read_calibration, None)
    if calibration:
        source = "validation photos" if calibration["source"] == "validation" else \
            "out-of-fold predictions of the training photos"
        out += note(f"Classify answers \"unknown\" below {percent(calibration['threshold'])} confidence: the "
                    f"threshold that keeps {percent(calibration.get('keep', 0.95), 0)} of the right answers on "
                    f"{calibration['photos']:,} {source}.")
    return out


@dataclass
class MistakePicture:
    mistake: dict[str, Any]
    photo: str  # data URI
    heatmap: str | None  # data URI, or None when no heatmap could be made


def mistake_pictures(f: RunFacts, limit: int, heatmaps: bool) -> tuple[list[MistakePicture], list[str]]:
    """Up to `limit` of the most confident mistakes whose photo is still there, each with the heatmap of the class
    it was taken for, and a sentence for each thing that could not be shown."""
    from core.data.previews import mistakes_with_images

    evaluation = f.evaluation or {}
    listed = evaluation.get("mistakes") or []
    root = evaluation.get("root") or f.split.get("root")
    found = mistakes_with_images(listed, Path(root) if root else None)[:limit]
    notes: list[str] = []
    classifier, why = _classifier(f) if heatmaps and found else (None, None)
    if why:
        notes.append(f"Heatmaps are not shown: {why}")
    pictures, unreadable = [], 0
    for item in found:
        try:
            photo = small_photo(item["file"])
        except Exception:  # an unreadable file is counted, not fatal
            unreadable += 1
            continue
        pictures.append(MistakePicture(item, image_data_uri(photo), _heatmap(classifier, item, photo, notes)))
    if unreadable:
        notes.append(f"{unreadable} photo(s) could not be read and are left out.")
    return pictures, notes


def _classifier(f: RunFacts) -> tuple[Any, str | None]:
    """The run's model ready for heatmaps, or None and why not (the serve profile has no TensorFlow)."""
    from core.serving.profile import is_train_profile

    if not f.run.has_model():
        return None, "the run has no saved model."
    if not is_train_profile():
        return None, "heatmaps need the train profile (TensorFlow), and this install is the serve profile."
    try:
        from core.serving.predict import Classifier

        return Classifier(f.run), None
    except Exception as err:  # a damaged or unsafe model file: the rest of the report still stands
        return None, f"the model could not be loaded ({esc(error_line(err))})."


def _heatmap(classifier, item: dict[str, Any], photo: np.ndarray, notes: list[str]) -> str | None:
    """The class activation map of the predicted class over the photo, as a data URI (None, said once, on failure)."""
    if classifier is None:
        return None
    try:
        index = classifier.classes.index(item["predicted"])
        return image_data_uri(classifier.heatmap(photo, index))
    except Exception as err:
        message = f"A heatmap could not be made ({esc(error_line(err))})."
        if message not in notes:
            notes.append(message)
        return None


def mistakes_section(f: RunFacts, limit: int, heatmaps: bool) -> str:
    """The most confident mistakes: the photo, and beside it where the model saw the class it answered."""
    from core.results.metrics import mistake_count

    out = '<h2 id="mistakes">Most confident mistakes</h2>'
    evaluation = f.evaluation
    if evaluation is None:
        return out + note("Not evaluated yet.")
    total = max(mistake_count(evaluation), len(evaluation.get("mistakes") or []))
    if not total:
        return out + note("No mistakes on the evaluated photos.")
    pictures, notes = mistake_pictures(f, limit, heatmaps)
    out += note(f"{len(pictures)} of {total:,} mistakes shown, the most confident first. The heatmap marks in red "
                "where the model found the evidence for the class it answered (class activation map).")
    out += "".join(note(n) for n in notes)
    if not pictures:
        listed = (evaluation.get("mistakes") or [])[:limit]
        out += note("The photos are no longer where they were evaluated from (moved or deleted), so only the list is "
                    "shown.")
        return out + table([[esc(m["path"], 80), esc(m["true"], 40), esc(m["predicted"], 40),
                             percent(m["confidence"])] for m in listed],
                           ["photo", "true class", "predicted", "confidence"], numeric=(3,))
    cards = []
    for p in pictures:
        m = p.mistake
        heat = (f'<img src="{p.heatmap}" alt="heatmap for {esc(m["predicted"], 40)}">' if p.heatmap
                else '<span class="nomap">no heatmap</span>')
        cards.append(f'<figure class="mistake"><div class="pics"><img src="{p.photo}" alt="photo">{heat}</div>'
                     f"<figcaption><b>true</b> {esc(m['true'], 40)} &rarr; <b>predicted</b> {esc(m['predicted'], 40)} "
                     f"({percent(m['confidence'], 0)})<br><small>{esc(Path(m['path']).name, 60)}</small>"
                     "</figcaption></figure>")
    return out + '<div class="mistakes">' + "".join(cards) + "</div>"


def export_section(f: RunFacts) -> str:
    """The parity of each export with the Keras model, or 'not exported yet'."""
    from core.results.charts import parity_rows

    out = '<h2 id="export">Exports and parity</h2>'
    if not f.parity:
        return out + note("Not exported yet. Export on the Evaluate page, or <code>python -m core export "
                          f"{esc(f.run.run_id)}</code>, then make the report again.")
    rows = []
    for row in parity_rows({k: v for k, v in f.parity.items() if isinstance(v, dict)}):
        size = row["size (MB)"]
        rows.append([esc(row["format"]), "n/a" if size is None else f"{size:.1f}", percent(row["top-1 agreement"]),
                     percent(row["Keras accuracy"]), percent(row["export accuracy"]), esc(row["images"] or "n/a"),
                     {True: "passed", False: "failed"}.get(row["passed"], "n/a"),
                     esc(SERVER_PATH.sub(r"\1", str(row["note"])), 160)])
    out += note("Each exported format classified the same held-out photos as the Keras model; float formats must "
                "give the same top-1 answer on at least 99% of them.")
    return out + table(rows, ["format", "size (MB)", "top-1 agreement", "Keras accuracy", "export accuracy",
                              "photos", "parity", "note"], numeric=(1, 2, 3, 4, 5))


def comparison_candidates(run: RunDir) -> list[RunDir]:
    """The runs beside this one a report may compare it with: finished, with an evaluation, newest first, and the
    run's experiment-pair partner (core.training.pairs) first of all when the pair finished."""
    from core.base.runs import list_runs
    from core.training import jobs, pairs

    found = []
    for other in list_runs(run.path.parent):
        if other.run_id == run.run_id or jobs.run_view(other).active:
            continue
        try:
            if other.read_evaluation():
                found.append(other)
        except (ValueError, OSError):
            continue
    partner = next((p for p in pairs.find_pairs(run.path.parent)
                    if run.run_id in p.run_ids() and pairs.pair_state(p).comparable), None)
    if partner is not None:
        other_id = next(i for i in partner.run_ids() if i != run.run_id)
        found.sort(key=lambda r: r.run_id != other_id)  # stable: the partner first, the rest newest first
    return found


def read_comparison(run: RunDir, other: RunDir) -> dict[str, Any]:
    """`other` (A) against this run (B) on the same photos (core.results.compare), so the differences read as what
    this run gains over the other; a comparison that cannot be made refuses the report with the reason, since the
    person asked for it (they can choose another run, or none)."""
    from core.results.compare import compare_runs

    try:
        return compare_runs(other, run)
    except StudioError as err:
        raise StudioError(f"The report of run {run.run_id} cannot include a comparison with run {other.run_id}: "
                          f"{err} Choose another run to compare with, or make the report without one.") from None


def comparison_section(comparison: dict[str, Any], figures: Figures) -> str:
    """Another run against this one on the same photos: the verdict, the two differences (B minus A) with their 95%
    intervals, McNemar's test, and recall per class."""
    from core.results.charts import class_difference_figure

    runs = comparison.get("runs") or {}
    first, second = (runs.get(k) or {} for k in ("a", "b")) if isinstance(runs, dict) else ({}, {})
    out = ('<h2 id="comparison">Compared with another run</h2>'
           f'<p class="headline">{esc(comparison.get("verdict") or "")}</p>'
           + note(f"B is this run, {esc(second.get('label') or second.get('id'), 80)} ({esc(second.get('id'))}); A "
                  f"is {esc(first.get('label') or first.get('id'), 80)} ({esc(first.get('id'))}). Both were scored on "
                  f"the same {_count(comparison.get('photos'))} photos ({esc(_source(comparison), 80)}); differences "
                  "are B minus A, with a 95% interval from a paired bootstrap over the photos."))
    settings = [(key, first.get("settings", {}).get(key), second.get("settings", {}).get(key))
                for key in (second.get("settings") or {}) if key != "data"]
    if settings:
        out += "<h3>What differs</h3>" + table([[esc(k), esc(_setting(a), 80), esc(_setting(b), 80)]
                                                for k, a, b in settings], ["setting", "A", "B (this run)"])
    rows = []
    for key, title in (("accuracy", "Accuracy"), ("macro_f1", "Macro F1")):
        figure = comparison.get(key) or {}
        low, high = (list(figure.get("ci95") or []) + [None, None])[:2]
        rows.append([title, percent(figure.get("a")), percent(figure.get("b")),
                     _signed_points(figure.get("difference")), f"{_signed_points(low)} to {_signed_points(high)}"])
    out += "<h3>Scores</h3>" + table(rows, ["measure", "A", "B (this run)", "B minus A", "95% interval"], (1, 2, 3, 4))
    test = comparison.get("mcnemar") or {}
    p_value = test.get("p_value")
    shown_p = ("< 0.001" if p_value < 0.001 else f"= {p_value:.3g}") if isinstance(p_value, (int, float)) else "n/a"
    out += note(f"McNemar's test: only A was right on {_count(test.get('a_only_right'))} photos, only B on "
                f"{_count(test.get('b_only_right'))}; p {shown_p} (how likely a split at least this uneven would "
                "be if the two runs were equally good). "
                + ("The difference is real: its interval leaves out 0 and p is below 0.05."
                   if comparison.get("significant") else "These photos do not show a real difference."))
    per_class = comparison.get("per_class") or []
    if per_class:
        if len(per_class) <= MATRIX_CLASSES:
            out += figures.html(class_difference_figure(per_class))
        out += "<h3>Recall per class</h3>" + table(
            [[esc(r.get("class"), 60), percent(r.get("recall_a")), percent(r.get("recall_b")),
              _signed_points(r.get("difference")), _count(r.get("photos"))] for r in per_class],
            ["class", "A", "B (this run)", "B minus A", "photos"], (1, 2, 3, 4))
    return out


def _signed_points(value: Any) -> str:
    return f"{100 * value:+.1f} points" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "n/a"


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _source(comparison: dict[str, Any]) -> str:
    """Which photos: a split's name, or a labelled folder by its name only (its path may be a server's)."""
    source = str(comparison.get("source") or "n/a")
    return Path(source).name if "/" in source else source


# ----------------------------------------------------------------------------------------- the page
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1.5rem;color:#1d2125;line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #d0d4d9;padding-bottom:.2rem;margin-top:2.2rem}
.meta,.note{color:#4a535c}.headline{font-size:1.2rem;background:#eef4fb;padding:.8rem 1rem;border-radius:6px}
.problem{color:#8a1c1c}nav a{margin-right:1rem}
dl{display:grid;grid-template-columns:max-content auto;gap:.25rem 1.2rem}dt{font-weight:600}dd{margin:0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}th,td{border-bottom:1px solid #e3e6e9;
padding:.25rem .7rem;text-align:left;vertical-align:top}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
.mistakes{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:1rem}
figure.mistake{margin:0;border:1px solid #e3e6e9;border-radius:6px;padding:.5rem}
.pics{display:flex;gap:.4rem}.pics img{width:50%;height:auto;object-fit:contain;background:#f3f4f6}
.nomap{width:50%;display:flex;align-items:center;justify-content:center;color:#4a535c;background:#f3f4f6}
figcaption{font-size:.88rem;margin-top:.3rem;overflow-wrap:anywhere}
@media print{.pair{grid-template-columns:1fr}nav{display:none}}
"""

SECTIONS = (("model-card", "Model card"), ("data", "Dataset"), ("training", "Training"),
            ("evaluation", "Evaluation"), ("mistakes", "Mistakes"), ("export", "Exports"))


def build_report(run: RunDir, *, cache_dir: Path | None = None, max_mistakes: int = MAX_MISTAKES,
                 heatmaps: bool = True, now: float | None = None, compare_with: RunDir | None = None) -> str:
    """The whole report as one HTML document (see the module's docstring); with `compare_with`, a section comparing
    this run with that one on the same photos comes right after the headline."""
    generated = time.time() if now is None else now
    f = read_facts(run, cache_dir)
    comparison = read_comparison(run, compare_with) if compare_with is not None else None
    figures = Figures()
    title = esc(f.config.get("run_name") or f.dataset_name, 80)
    sections = ((("comparison", "Comparison"),) if comparison else ()) + SECTIONS
    command = f"python -m core report {esc(run.run_id)}" + (f" --compare {esc(compare_with.run_id)}"
                                                           if compare_with is not None else "")
    body = [
        f"<header><h1>Model report: {title}</h1>",
        f'<p class="meta">Run {esc(run.run_id)} &middot; generated {when(generated)} by EfficientNet Studio</p>',
        "<nav>" + "".join(f'<a href="#{anchor}">{name}</a>' for anchor, name in sections) + "</nav></header>",
        "".join(f'<p class="problem">{esc(p)}</p>' for p in f.problems),
        headline(f), comparison_section(comparison, figures) if comparison else "", model_card(f, generated),
        dataset_section(f, figures), training_section(f, figures),
        evaluation_section(f, figures), mistakes_section(f, max_mistakes, heatmaps), export_section(f),
        f'<footer class="meta"><p>Made with <code>{command}</code>. This file needs no '
        "network: charts, photos and heatmaps are inside it.</p></footer>",
    ]
    script = f"<script>{plotly_js()}</script>" if figures.count else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Model report: {title}</title><style>{STYLE}</style>{script}</head>\n<body>"
            + "\n".join(body) + "</body></html>\n")


def default_report_name(run: RunDir) -> str:
    return f"report-{run.run_id}.html"


def write_report(run: RunDir, out: Path | str, compare_with: RunDir | None = None, **options: Any) -> Path:
    """Build the report and write it to `out` (a file, or an existing folder to put report-<run>.html in); with
    `compare_with`, it compares this run with that one (refused, with the reason, when they cannot be compared)."""
    out = Path(out)
    if out.is_dir():
        out = out / default_report_name(run)
    if not out.parent.is_dir():
        raise StudioError(f"Cannot write the report to {out}: its folder {out.parent} does not exist.")
    text = build_report(run, compare_with=compare_with, **options)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)  # a reader (a browser, a download) never sees half a report
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StudioError(f"Cannot write the report to {out} ({err.strerror or err}).") from None
    return out


def build_in_own_process(run: RunDir, out: Path | str, timeout: float = 600,
                         compare_with: RunDir | None = None) -> Path:
    """Run `python -m core report` as its own process (for the app: TensorFlow, which the heatmaps need, never
    enters the server process, as for training and the health check); a failure becomes one StudioError line.
    `compare_with`: the run the report compares this one with (`--compare`)."""
    command = [sys.executable, "-m", "core", "report", str(run.path), "--out", str(out)]
    if compare_with is not None:
        command += ["--compare", str(compare_with.path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StudioError(f"Making the report of run {run.run_id} took over {timeout:.0f} s and was stopped.") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise StudioError(lines[-1].removeprefix("error: ") if lines
                          else f"making the report ended with code {done.returncode}")
    return Path(done.stdout.strip().splitlines()[-1])
