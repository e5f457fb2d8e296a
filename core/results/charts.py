"""Plotly figure builders. Numbers come from core (metrics, runs); these only turn them into figures."""

from __future__ import annotations

import html
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

from core.base.safetext import plain, shorten

TRAIN_COLOUR, VAL_COLOUR, ACCENT = "#1f77b4", "#ff7f0e", "#2ca02c"
SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
_LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2), height=320)
AXIS_LABEL_CHARS = 24  # a longer class name is cut in the middle on an axis (the hover text keeps it whole)
HOVER_NAMES_UP_TO = 100  # classes; beyond, hover names are shortened too (the matrix repeats each n times)


# ----------------------------------------------------------------------------------------- numbers
def epoch_rows(metrics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The epoch lines of metrics.jsonl, in order (step and feature lines dropped)."""
    return [m for m in metrics if m.get("kind") == "epoch" and "epoch" in m]  # curves are drawn against it


def phase_starts(epochs: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
    """(global epoch, phase) where each phase begins, to mark the switch to fine-tuning on curves."""
    starts, previous = [], None
    for row in epochs:
        if row.get("phase") != previous:
            starts.append((int(row["epoch"]), str(row.get("phase"))))
            previous = row.get("phase")
    return starts


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its total (recall per true class); empty rows stay 0."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def parity_rows(parity: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """exports/parity.json as table rows, one per format: size, top-1 agreement with Keras, accuracies, verdict."""
    rows = []
    for fmt, entry in parity.items():
        size = entry.get("bytes")
        rows.append({"format": fmt, "size (MB)": round(size / 1e6, 1) if size else None,
                     "top-1 agreement": entry.get("agreement"), "Keras accuracy": entry.get("keras_accuracy"),
                     "export accuracy": entry.get("export_accuracy"), "images": entry.get("images"),
                     "max prob. difference": entry.get("max_abs_probability_difference"),
                     "passed": entry.get("passed"), "note": entry.get("error") or ""})
    return rows


def best_epoch(epochs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch with the lowest validation loss (the one whose model is kept)."""
    scored = [e for e in epochs if e.get("val_loss") is not None and np.isfinite(e["val_loss"])]
    return min(scored, key=lambda e: e["val_loss"]) if scored else None


# ----------------------------------------------------------------------------------------- figures
def label_text(name: object, max_chars: int | None = AXIS_LABEL_CHARS) -> str:
    """A visitor's name as Plotly text: shortened, and with <, > and & as entities, because Plotly reads tags
    such as <a href> and <b> in labels and hover text."""
    return html.escape(shorten(name, max_chars) if max_chars else plain(name), quote=False)


def _category_axis(fig: go.Figure, axis: str, names: Sequence[str]) -> None:
    """Categories placed by index, labelled with shortened names: two long names that shorten alike stay two."""
    getattr(fig, f"update_{axis}axes")(tickmode="array", tickvals=list(range(len(names))),
                                       ticktext=[label_text(n) for n in names])


def class_counts_figure(counts: dict[str, dict[str, int]]) -> go.Figure:
    """Images per class as stacked bars, one colour per split."""
    classes = list(counts)
    positions = list(range(len(classes)))
    hover = [label_text(c, None) for c in classes]
    fig = go.Figure()
    for split, colour in SPLIT_COLOURS.items():
        values = [counts[c].get(split, 0) for c in classes]
        if any(values):
            fig.add_bar(name=split, x=positions, y=values, marker_color=colour, customdata=hover,
                        hovertemplate="%{customdata}: %{y}<extra>" + split + "</extra>")
    fig.update_layout(barmode="stack", title="Images per class", yaxis_title="images", **_LAYOUT)
    fig.update_layout(legend_traceorder="normal")
    _category_axis(fig, "x", classes)
    return fig


def curve_figure(epochs: Sequence[dict[str, Any]], metric: str, title: str) -> go.Figure:
    """Train and validation values of `metric` ('loss' or 'accuracy') per epoch, phases marked."""
    fig = go.Figure()
    x = [e["epoch"] for e in epochs]
    for key, name, colour in ((metric, "train", TRAIN_COLOUR), (f"val_{metric}", "validation", VAL_COLOUR)):
        y = [e.get(key) for e in epochs]
        if any(v is not None for v in y):
            fig.add_scatter(x=x, y=y, name=name, mode="lines+markers", line=dict(color=colour))
    _mark_phases(fig, epochs)
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=metric, **_LAYOUT)
    if metric == "accuracy":
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return fig


def learning_rate_figure(epochs: Sequence[dict[str, Any]]) -> go.Figure:
    """The learning rate per epoch on a log axis (drops show ReduceLROnPlateau and the fine-tune switch).

    Points of an exact head fit (core.network.headfit) have no learning rate; their L2 strength is drawn instead, so the
    chart shows what changed from one point to the next."""
    fig = go.Figure()
    x = [e["epoch"] for e in epochs]
    for key, name, colour in (("lr", "learning rate", ACCENT), ("l2", "head fit: L2 strength", VAL_COLOUR)):
        y = [e.get(key) for e in epochs]
        if any(v is not None for v in y):
            fig.add_scatter(x=x, y=y, name=name, mode="lines+markers", line=dict(color=colour, shape="hv"))
    _mark_phases(fig, epochs)
    has_l2 = any(e.get("l2") is not None for e in epochs)
    has_lr = any(e.get("lr") is not None for e in epochs)
    title = "Learning rate" if not has_l2 else ("L2 strength of the head fit" if not has_lr
                                                 else "Head fit L2 strength, then learning rate")
    fig.update_layout(title=title, xaxis_title="epoch", **_LAYOUT)
    fig.update_yaxes(type="log", exponentformat="power")
    return fig


def _mark_phases(fig: go.Figure, epochs: Sequence[dict[str, Any]]) -> None:
    """A dotted line where fine-tuning begins."""
    for epoch, phase in phase_starts(epochs)[1:]:
        fig.add_vline(x=epoch - 0.5, line_dash="dot", line_color="grey",
                      annotation_text=phase.replace("finetune", "fine-tune"), annotation_position="top left")


CELL_TRACE = 1  # the confusion figure's trace whose points are its cells (the heatmap itself is trace 0)


def confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str], normalised: bool,
                     selected: tuple[int, int] | None = None) -> go.Figure:
    """The confusion matrix as a heatmap (rows true, columns predicted), counts or row-normalised.

    Each cell also has a clear marker at its centre (trace CELL_TRACE, point index row * n + column): Plotly
    reports no clicked point for a heatmap (plotly.js#7685, streamlit#8760), so a click on a cell selects its
    marker. The marker carries the hover text; `selected` (row, column) is outlined."""
    counts = np.asarray(matrix, dtype=np.int64)
    values = normalise_rows(counts) if normalised else counts
    text = [[f"{v:.0%}" if normalised else str(int(v)) for v in row] for row in values]
    n = len(classes)
    positions = list(range(n))
    names = [label_text(c, None if n <= HOVER_NAMES_UP_TO else 60) for c in classes]
    fig = go.Figure(go.Heatmap(z=values, x=positions, y=positions, text=text, texttemplate="%{text}",
                               customdata=[[[true, predicted] for predicted in names] for true in names],
                               colorscale="Blues", zmin=0, zmax=1 if normalised else None, hoverinfo="skip"))
    size = max(8, min(60, 600 // max(n, 1)))  # a marker about as large as the cell: the whole cell is clickable
    fig.add_scatter(x=[j for _ in positions for j in positions], y=[i for i in positions for _ in positions],
                    mode="markers", showlegend=False,
                    marker=dict(symbol="square", size=size, color="rgba(0,0,0,0)",
                                line=dict(width=0, color="rgba(0,0,0,0)")),
                    customdata=[[names[i], names[j], text[i][j], int(counts[i, j])]
                                for i in positions for j in positions],
                    hovertemplate="true %{customdata[0]}<br>predicted %{customdata[1]}<br>%{customdata[2]}"
                                  "<extra>click for the photos</extra>")
    if selected is not None:
        row, column = selected
        fig.add_shape(type="rect", x0=column - 0.5, x1=column + 0.5, y0=row - 0.5, y1=row + 0.5,
                      line=dict(color=VAL_COLOUR, width=3))
    fig.update_layout(title="Confusion matrix" + (" (share of each true class)" if normalised else " (counts)"),
                      xaxis_title="predicted", yaxis_title="true", height=max(320, 60 * n + 120),
                      margin=dict(l=10, r=10, t=40, b=10), hovermode="closest", clickmode="event+select")
    _category_axis(fig, "x", classes)
    _category_axis(fig, "y", classes)
    fig.update_xaxes(fixedrange=True, showgrid=False, zeroline=False)  # a click selects; dragging moves nothing
    fig.update_yaxes(autorange="reversed", fixedrange=True, showgrid=False, zeroline=False)
    return fig


def clicked_cell(points: Sequence[dict[str, Any]], num_classes: int) -> tuple[int, int] | None:
    """The (row, column) of the cell a click on confusion_figure selected, from Streamlit's selection points."""
    for point in points:
        index = point.get("point_index", point.get("point_number"))
        if point.get("curve_number") == CELL_TRACE and isinstance(index, int) and 0 <= index < num_classes ** 2:
            return divmod(index, num_classes)
    return None


def reliability_figure(reliability: dict[str, Any], ece: float | None = None) -> go.Figure:
    """Accuracy against confidence per equal-width bin, beside the diagonal of a perfectly calibrated model."""
    counts = reliability["counts"]
    bins = len(counts)
    width = 1.0 / bins
    centres = [(b + 0.5) * width for b in range(bins)]
    accuracy = reliability["accuracy"]
    confidence = reliability["confidence"]
    fig = go.Figure()
    fig.add_bar(x=centres, y=[a if a is not None else 0 for a in accuracy], width=width * 0.95, name="accuracy",
                marker_color=TRAIN_COLOUR, customdata=[[n, c if c is not None else 0] for n, c in
                                                       zip(counts, confidence)],
                hovertemplate="confidence %{x:.0%} ± " + f"{width / 2:.1%}" + "<br>right %{y:.0%} of "
                              "%{customdata[0]} photos<br>mean confidence %{customdata[1]:.0%}<extra></extra>")
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                    line=dict(color="grey", dash="dash"), hoverinfo="skip")
    # The gap between a bar's top and its marker is what ECE averages (weighted by the bin's photos).
    fig.add_scatter(x=[x for x, c in zip(centres, confidence) if c is not None],
                    y=[c for c in confidence if c is not None], mode="markers", name="mean confidence",
                    marker=dict(color=VAL_COLOUR, size=8, symbol="line-ew-open", line=dict(width=3)),
                    hoverinfo="skip")
    title = "Reliability" + (f" (ECE {ece:.1%})" if ece is not None else "")
    fig.update_layout(title=title, xaxis_title="confidence of the predicted class", yaxis_title="accuracy",
                      bargap=0, **_LAYOUT)
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return fig


def top_k_figure(top_k: Sequence[dict[str, Any]], height: int = 220) -> go.Figure:
    """Horizontal bars of the top-k class probabilities, the most likely on top."""
    # Class names are a visitor's folder names: as text (Plotly would read <b> or <a href> in them), shortened.
    fig = go.Figure(go.Bar(x=[t["probability"] for t in top_k], y=[label_text(t["class"]) for t in top_k],
                           orientation="h", hovertext=[label_text(t["class"], None) for t in top_k],
                           text=[f"{t['probability']:.1%}" for t in top_k], textposition="auto",
                           marker_color=[ACCENT] + [TRAIN_COLOUR] * (len(top_k) - 1)))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), xaxis=dict(range=[0, 1], tickformat=".0%"))
    fig.update_yaxes(autorange="reversed")
    return fig


def compare_figure(curves: dict[str, Sequence[dict[str, Any]]], metric: str = "val_accuracy") -> go.Figure:
    """One line per run of a validation metric, to compare runs (a run's name may be a visitor's: as text)."""
    fig = go.Figure()
    for name, epochs in curves.items():
        fig.add_scatter(x=[e["epoch"] for e in epochs], y=[e.get(metric) for e in epochs], name=label_text(name, 60),
                        mode="lines+markers")
    label = metric.replace("val_", "validation ").replace("_", " ")
    fig.update_layout(title=f"{label.capitalize()} per epoch", xaxis_title="epoch", yaxis_title=label, **_LAYOUT)
    if metric.endswith("accuracy"):
        fig.update_yaxes(tickformat=".0%")
    return fig


def class_difference_figure(per_class: Sequence[dict[str, Any]], first: str = "A", second: str = "B",
                            key: str = "difference") -> go.Figure:
    """Per class, how much more often run B recognises it than run A (`key`: B minus A, in points, as
    core.results.compare gives it): one horizontal bar per class, green where B does better, orange where A does."""
    names = [str(row.get("class")) for row in per_class]
    values = [100 * float(row[key]) if isinstance(row.get(key), (int, float)) else 0.0 for row in per_class]
    hover = [[label_text(n, None), _share(row.get("recall_a")), _share(row.get("recall_b"))]
             for n, row in zip(names, per_class)]
    positions = list(range(len(names)))
    fig = go.Figure(go.Bar(x=values, y=positions, orientation="h", customdata=hover,
                           marker_color=[ACCENT if v >= 0 else VAL_COLOUR for v in values],
                           text=[f"{v:+.1f}" for v in values], textposition="auto",
                           hovertemplate="%{customdata[0]}<br>recall " + label_text(first) + " %{customdata[1]}, "
                                         + label_text(second) + " %{customdata[2]}<br>difference %{x:+.1f} points"
                                                                "<extra></extra>"))
    fig.add_vline(x=0, line_color="grey")
    fig.update_layout(title=f"Recall per class: {label_text(second)} minus {label_text(first)} (points)",
                      xaxis_title="points", margin=dict(l=10, r=10, t=40, b=10), height=max(240, 28 * len(names) + 100),
                      showlegend=False)
    _category_axis(fig, "y", names)
    fig.update_yaxes(autorange="reversed")
    return fig


def _share(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) and np.isfinite(value) else "n/a"


def head_fit_caption(epochs: list[dict]) -> str:
    """What the points of an exact head fit are, in words for the Train page (CV or a validation folder)."""
    from core.network.headfit import CV_FOLDS

    if any(e.get("cross_validated") for e in epochs if e.get("l2") is not None):
        return (f"Phase 1 fits the head exactly on cached features: each point is one L2 strength (strongest first), "
                f"its 'validation' values out of fold ({CV_FOLDS}-fold cross-validation over every training photo). "
                "The grid runs once per way of scaling the features (each pooled stage as one, then each feature on "
                "its own), so the strengths repeat. The pair with the lowest out-of-fold loss without label "
                "smoothing is then refitted on all photos: that last fit is the model kept.")
    return ("Phase 1 fits the head exactly on cached features, once per L2 strength (weakest first) and way of "
            "scaling the features; each point is one fit, and the one with the lowest validation loss (without label "
            "smoothing) is kept.")
