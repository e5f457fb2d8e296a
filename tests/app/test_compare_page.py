"""Evaluate's Compare tab (issue 20): two runs, or an experiment pair, scored on the same photos by
core.results.compare.compare_runs; its verdict, intervals, McNemar's test, classes and curves, and its refusals."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import StudioError
from core.training import pairs
from test_app import APP, CLASSES, make_run, no_exceptions, texts, workspace  # noqa: F401 (workspace: fixture)
from test_pairs import make_pair

VERDICT = "B (augmentation): 90.0%, A (no augmentation): 60.0%: +30.0 points (95% CI 20.0–40.0), not chance."


def fake_result(first: str, second: str) -> dict:
    """What compare_runs returns, by its contract (issue 20): differences are B minus A."""
    return {"verdict": VERDICT, "significant": True, "photos": 40, "direction": "B - A",
            "runs": {"a": {"id": first, "label": "no augmentation", "backbone": "efficientnet_lite0",
                           "settings": {"augmentation": "none"}},
                     "b": {"id": second, "label": "augmentation", "backbone": "efficientnet_lite0",
                           "settings": {"augmentation": "light"}}},
            "source": "test split",
            "accuracy": {"a": 0.6, "b": 0.9, "difference": 0.3, "ci95": [0.2, 0.4]},
            "macro_f1": {"a": 0.55, "b": 0.88, "difference": 0.33, "ci95": [0.21, 0.45]},
            "mcnemar": {"a_only_right": 1, "b_only_right": 13, "p_value": 0.0018},
            "per_class": [{"class": c, "recall_a": 0.6 + 0.1 * i, "recall_b": 0.9, "difference": 0.3 - 0.1 * i}
                          for i, c in enumerate(CLASSES)],
            "curves": {"a": [{"kind": "epoch", "epoch": 1, "val_accuracy": 0.4, "val_loss": 1.2}],
                       "b": [{"kind": "epoch", "epoch": 1, "val_accuracy": 0.5, "val_loss": 1.0},
                             {"kind": "epoch", "epoch": 2, "val_accuracy": 0.8, "val_loss": 0.6}]}}


@pytest.fixture
def fake_compare(monkeypatch: pytest.MonkeyPatch) -> list:
    """compare_runs replaced by the contract's dict; returns the calls (first id, second id, data)."""
    calls = []

    def compare_runs(first, second, data=None, seed=0):
        calls.append((first.run_id, second.run_id, data))
        return fake_result(first.run_id, second.run_id)

    monkeypatch.setattr("core.results.compare.compare_runs", compare_runs)
    return calls


def unescaped(markdown: str) -> str:
    """Markdown as it reads on the page: its backslash escapes dropped."""
    import re

    return re.sub(r"\\(.)", r"\1", markdown)


def compare_tab(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    at.switch_page("pages/evaluate.py").run()
    no_exceptions(at)
    return at


def test_the_newest_finished_pair_is_compared_with_its_verdict_intervals_classes_and_curves(
        workspace: Path, fake_compare: list) -> None:
    runs = workspace / "runs"
    make_pair(runs, ("succeeded", "succeeded"), 1)
    make_pair(runs, ("succeeded", "failed"), 2)  # newer, but it cannot be compared
    at = compare_tab()
    assert at.selectbox(key="compare_pair").value == 1
    assert fake_compare == [("run-p1-a", "run-p1-b", None)]
    assert [s.value for s in at.success if VERDICT in unescaped(s.value)]  # the verdict, prominent
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Accuracy: B − A"] == "+30.0 points" and metrics["Macro F1: B − A"] == "+33.0 points"
    assert metrics["McNemar's p"] == "0.0018" and metrics["A real difference"] == "yes"
    said = texts(at)
    assert "95% interval +20.0 to +40.0 points" in said and "95% interval +21.0 to +45.0 points" in said
    assert "Only A right: 1 · only B right: 13" in said
    assert "Pair 1: augmentation vs none: A is no augmentation (run-p1-a), B is augmentation (run-p1-b)" in said
    charts = {c.proto.id for c in at.get("plotly_chart")}
    assert len(charts) >= 3
    tables = [d.value for d in at.dataframe]
    per_class = next(t for t in tables if "recall A" in t.columns)
    assert list(per_class["class"]) == CLASSES and per_class["B − A (points)"].round(1).tolist() == [30.0, 20.0, 10.0]
    runs_table = next(t for t in tables if "settings that differ" in t.columns)
    assert runs_table["settings that differ"].tolist() == ["augmentation: none", "augmentation: light"]
    assert at.query_params["pair"] in (["1"], "1")
    assert "L2 strengths" not in said  # epochs on both sides: nothing to explain


def test_head_fit_trials_are_not_passed_off_as_epochs_and_training_photos_are_warned_of(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new user read an exact head fit's L2 trials as epochs of overfitting, and a score on the runs' own training
    photos as a real gap: the page says what each is."""
    def compare_runs(first, second, data=None, seed=0):
        result = fake_result(first.run_id, second.run_id)
        result["curves"]["b"] = [{"kind": "epoch", "epoch": i + 1, "val_loss": 0.9 + i / 10, "val_accuracy": 0.7,
                                  "l2": l2} for i, l2 in enumerate((0.001, 0.01, 0.1))]
        result["warning"] = "2,020 of these 2,521 photos were among run A's training or validation photos"
        return result

    monkeypatch.setattr("core.results.compare.compare_runs", compare_runs)
    make_pair(workspace / "runs", ("succeeded", "succeeded"), 1)
    at = compare_tab()
    assert "B · augmentation the points are the exact head fit's L2 strengths" in texts(at)
    assert [w for w in at.warning if "2,020 of these 2,521 photos" in w.value]


def test_an_unfinished_pair_says_why_and_is_not_compared(workspace: Path, fake_compare: list) -> None:
    make_pair(workspace / "runs", ("succeeded", "stopped"), 1)
    at = compare_tab({"pair": "1"})
    assert at.selectbox(key="compare_pair").value == 1
    assert "run B (augmentation) was stopped before it finished" in texts(at)
    assert fake_compare == []
    assert not [s for s in at.success if VERDICT in unescaped(s.value)]


def test_two_runs_chosen_by_hand_and_a_refusal_in_words(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = workspace / "runs"
    make_run(runs, "run-x")
    time.sleep(0.01)
    make_run(runs, "run-y")

    def refuse(first, second, data=None, seed=0):
        raise StudioError(f"Runs {first.run_id} and {second.run_id} were tested on different photos, so their "
                          "scores cannot be compared: train them on the same split.")

    monkeypatch.setattr("core.results.compare.compare_runs", refuse)
    at = compare_tab()
    assert not [s for s in at.selectbox if s.key == "compare_pair"]  # no pair: two runs of the person's choice
    assert (at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value) == ("run-y", "run-x")
    assert any("run-y and run-x were tested on different photos" in w.value for w in at.warning)
    at.selectbox(key="compare_b").set_value("run-y").run()
    assert "Choose two different runs." in texts(at)


def test_both_runs_scored_on_another_labelled_folder(workspace: Path, fake_compare: list) -> None:
    runs = workspace / "runs"
    make_pair(runs, ("succeeded", "succeeded"), 1)
    from core.data.ingest import COMPLETE_MARKER

    folder = workspace / "datasets" / "new-photos"
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
    (folder / COMPLETE_MARKER).write_text("")
    at = compare_tab()
    assert fake_compare[-1][2] is None
    at.selectbox(key="compare_folder").set_value(folder)
    at.button(key="compare_on_folder").click().run()
    no_exceptions(at)
    assert fake_compare[-1] == ("run-p1-a", "run-p1-b", folder)
    calls = len(fake_compare)
    at.button(key="compare_own").click().run()
    no_exceptions(at)
    assert len(fake_compare) == calls  # the runs' own photos again: their earlier comparison is kept, not redone
    assert "compare_data" not in at.session_state and not [b for b in at.button if b.key == "compare_own"]


def test_a_run_name_or_class_in_the_verdict_stays_text(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_pair(workspace / "runs", ("succeeded", "succeeded"), 1)

    def compare_runs(first, second, data=None, seed=0):
        result = fake_result(first.run_id, second.run_id)
        result["verdict"] = "[click](https://evil.example) **A**: 90.0%, B: 60.0%"
        result["per_class"][0]["class"] = "<b>roses</b>"
        return result

    monkeypatch.setattr("core.results.compare.compare_runs", compare_runs)
    at = compare_tab()
    verdict = next(s.value for s in at.success if "evil" in s.value)
    assert "[click](https" not in verdict and "\\*\\*A\\*\\*" in verdict  # shown as written: no link, no bold
    figure = "".join(c.proto.spec for c in at.get("plotly_chart"))
    assert "<b>roses" not in figure and "&lt;b&gt;roses" in figure


def test_compare_tab_without_a_second_run(workspace: Path, fake_compare: list) -> None:
    make_run(workspace / "runs", "run-only")
    at = compare_tab()
    assert "Train a second run to compare runs here, or start an experiment pair on the Train page." in texts(at)
    shutil.rmtree(workspace / "runs")
    assert fake_compare == []
    assert pairs.find_pairs(workspace / "runs") == []


def with_predictions(run, right: list[bool]) -> None:
    """Give a fake run's evaluation every photo's prediction: 60 photos of 3 classes, right where `right` says."""
    evaluation = run.read_evaluation()
    true = [i % 3 for i in range(len(right))]
    predicted = [t if ok else (t + 1) % 3 for t, ok in zip(true, right)]
    matrix = [[sum(1 for t, p in zip(true, predicted) if (t, p) == (i, j)) for j in range(3)] for i in range(3)]
    evaluation.update(images=len(right), accuracy=sum(right) / len(right), confusion_matrix=matrix,
                      predictions={"paths": [f"{CLASSES[t]}/{i}.png" for i, t in enumerate(true)], "true": true,
                                   "predicted": predicted, "confidence": [0.9] * len(right)})
    run.write_evaluation(evaluation)


def test_the_real_comparison_of_a_pair_on_fake_run_folders(workspace: Path) -> None:
    """core.results.compare itself (no fake): B right on 57 of 60 photos, A on 30: a real gap, said as one."""
    pair = make_pair(workspace / "runs", ("succeeded", "succeeded"), 1)
    with_predictions(pair.first, [i % 2 == 0 for i in range(60)])
    with_predictions(pair.second, [i % 20 != 1 for i in range(60)])
    at = compare_tab()
    verdict = next(unescaped(s.value) for s in at.success)
    assert "95.0%" in verdict and "50.0%" in verdict and "+45.0 points" in verdict and "not chance" in verdict
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Accuracy: B − A"] == "+45.0 points" and metrics["A real difference"] == "yes"
    assert "Only A right: 0 · only B right: 27" in texts(at)
    assert len({c.proto.id for c in at.get("plotly_chart")}) >= 3


def test_the_real_comparison_refuses_runs_of_other_classes(workspace: Path) -> None:
    runs = workspace / "runs"
    pair = make_pair(runs, ("succeeded", "succeeded"), 1)
    pair.second.write_classes(["cats", "dogs", "tulips"])
    at = compare_tab()
    refusal = next(w.value for w in at.warning if "different classes" in w.value)
    assert "run-p1-a" in refusal and "run-p1-b" in refusal
    assert not [s for s in at.success if "points" in s.value]


def test_a_comparison_on_a_folder_is_not_scored_again_on_every_redraw(workspace: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring on a folder saves each run's evaluations/<folder>.json (as compare_runs does): the page must keep its
    result rather than score both models again each time it is drawn."""
    from core.data.ingest import COMPLETE_MARKER

    make_pair(workspace / "runs", ("succeeded", "succeeded"), 1)
    folder = workspace / "datasets" / "new-photos"
    (folder / "daisy").mkdir(parents=True)
    (folder / COMPLETE_MARKER).write_text("")
    scored = []

    def compare_runs(first, second, data=None, seed=0):
        if data is not None:
            scored.append(data)
            for run in (first, second):
                (run.path / "evaluations").mkdir(exist_ok=True)
                (run.path / "evaluations" / f"{data.name}-{len(scored)}.json").write_text("{}")
        return fake_result(first.run_id, second.run_id)

    monkeypatch.setattr("core.results.compare.compare_runs", compare_runs)
    at = compare_tab()
    at.button(key="compare_on_folder").click().run()
    for _ in range(2):
        at.run()
    no_exceptions(at)
    assert scored == [folder]
