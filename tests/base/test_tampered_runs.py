"""Run folders with damaged files (issue 14): the readers name the run and the file in one sentence, and the Train
and Evaluate pages and the sidebar keep working and keep showing the other runs.

Each case damages one file of a run the way a probe of the hosted app did (wrong types, text that is not JSON,
numbers JSON turns into infinity), then checks core.base.runs' reader and the pages through the app's entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from streamlit.testing.v1 import AppTest

from core import StudioError
from core.training import jobs
from core.base.runs import DAMAGED, RunDamaged, RunDir, list_runs
from core.base.safetext import markdown_literal
from test_app import APP, make_run, no_exceptions, workspace  # noqa: F401 (workspace is a fixture)


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_status(run: RunDir, text: str) -> None:
    """status.json exactly as given (raw text: JSON's writer would never produce some of these)."""
    run.file("status.json").write_text(text, encoding="utf-8")


def running_with(heartbeat: str, pid: int | None = None) -> Callable[[RunDir], None]:
    """A 'running' status whose trainer process is gone, with this heartbeat written verbatim."""
    def tamper(run: RunDir) -> None:
        write_status(run, f'{{"state": "running", "pid": {pid or dead_pid()}, "phase": "head", '
                          f'"heartbeat": {heartbeat}}}')
    return tamper


def with_text(name: str, text: str) -> Callable[[RunDir], None]:
    def tamper(run: RunDir) -> None:
        run.file(name).write_text(text, encoding="utf-8")
    return tamper


def with_json(name: str, value: object) -> Callable[[RunDir], None]:
    return with_text(name, json.dumps(value))


def evaluation_with(**changes: object) -> Callable[[RunDir], None]:
    def tamper(run: RunDir) -> None:
        evaluation = json.loads(run.file("evaluation.json").read_text())
        run.file("evaluation.json").write_text(json.dumps({**evaluation, **changes}))
    return tamper


def garbage_metrics_line(run: RunDir) -> None:
    with open(run.file("metrics.jsonl"), "a", encoding="utf-8") as handle:
        handle.write('this is not JSON\n{"kind": "epoch", "epoch": "three", "loss": 1}\n[1, 2]\n')


# name -> (damage, what the Train and Evaluate pages must say about the damaged run)
CASES: dict[str, tuple[Callable[[RunDir], None], str]] = {
    "heartbeat text": (running_with('"abc"'), "'heartbeat' is \"abc\""),
    "heartbeat list": (running_with("[1]"), "'heartbeat' is a list"),
    "heartbeat infinite": (running_with("1e400"), "'heartbeat' is an infinite number"),
    "heartbeat null": (running_with("null"), "no valid heartbeat"),
    "status not JSON": (with_text("status.json", '{"state": "runn'), "status.json is damaged: not valid JSON"),
    "status a list": (with_json("status.json", ["running"]), "status.json is damaged: a list"),
    "status wrong state": (with_json("status.json", {"state": 5, "heartbeat": 1}), "its state is 5"),
    "status wrong fields": (with_json("status.json", {"state": "succeeded", "pid": "x", "error": ["e"],
                                                      "fraction": "half", "phases": 3}), "'pid' is \"x\""),
    "config not JSON": (with_text("config.json", "{backbone: b0"), "config.json is damaged: not valid JSON"),
    "config a list": (with_json("config.json", [1, 2]), "config.json is damaged: a list"),
    "config wrong types": (with_json("config.json", {"data": "/nowhere", "image_size": "big", "head_epochs": [1]}),
                           "config.json is damaged: image_size must be"),
    "metrics garbage line": (garbage_metrics_line, "3 lines of metrics.jsonl could not be read"),
    "evaluation wrong shape": (evaluation_with(confusion_matrix=[[1, 2]], accuracy="high"),
                               "evaluation.json is damaged: 'confusion_matrix' is not 3 rows of 3 counts"),
    "evaluation not an object": (with_json("evaluation.json", [0.9]), "evaluation.json is damaged: not a JSON object"),
    "evaluation path outside": (evaluation_with(mistakes=[{"path": "../../other/x.png", "true": "daisy",
                                                           "predicted": "roses", "confidence": 0.7}]),
                                "points outside the evaluated folder"),
    "classes not a list": (with_json("classes.json", {"0": "daisy"}), "classes.json is damaged: an object"),
    "classes of numbers": (with_json("classes.json", [1, 2, 3]), "classes.json is damaged"),
}


def damaged_run(runs_dir: Path, case: str) -> RunDir:
    run = make_run(runs_dir, "run-bad")
    CASES[case][0](run)
    return run


# ----------------------------------------------------------------------------------------- the readers
@pytest.mark.parametrize("heartbeat", ['"abc"', "[1]", "1e400", "null", "1e300", "true"])
def test_a_bogus_heartbeat_is_no_heartbeat_so_a_dead_trainer_is_not_running_for_ever(tmp_path: Path,
                                                                                     heartbeat: str) -> None:
    run = make_run(tmp_path, "run-bad")
    running_with(heartbeat)(run)
    status = run.read_status()
    if heartbeat != "1e300":  # a finite time, dropped only when compared with the clock (effective_status)
        assert status.get("heartbeat") is None
    if heartbeat not in ("null", "1e300"):
        assert "'heartbeat' is" in status[DAMAGED] and "run-bad" in status[DAMAGED]
    for state in (run.effective_status(), jobs.run_state(run)):
        assert state["state"] == "failed", state
    assert jobs.active_run(tmp_path) is None
    view = jobs.run_view(run)
    assert view.state == "failed" and "no valid heartbeat" in view.headline


@pytest.mark.parametrize("pid", [1, os.getpid()])
def test_a_live_process_behind_the_pid_does_not_keep_a_run_without_heartbeat_running(tmp_path: Path,
                                                                                     pid: int) -> None:
    """Pids are reused (1 is always alive): without a heartbeat, which a trainer writes with every update,
    no process is training the run."""
    run = make_run(tmp_path, "run-bad")
    running_with('"abc"', pid=pid)(run)
    assert jobs.run_state(run)["state"] == "failed"
    assert jobs.active_run(tmp_path) is None  # Start is not blocked by it
    run.heartbeat(message="a real trainer's next update")  # ...and a live trainer's next write revives it
    assert jobs.run_state(run)["state"] == "running"


@pytest.mark.parametrize("text, problem", [
    ('{"state": "runn', "not valid JSON"),
    ('["running"]', "a list instead of a JSON object"),
    ('{"state": "exploded"}', "its state is \"exploded\""),
    ('{"state": "running", "heartbeat": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
])
def test_an_unreadable_status_reads_failed_with_one_sentence(tmp_path: Path, text: str, problem: str) -> None:
    run = make_run(tmp_path, "run-bad")
    write_status(run, text)
    with pytest.raises(RunDamaged, match="Run run-bad: status.json is damaged") as caught:
        run.read_status()
    assert problem in str(caught.value) and "\n" not in str(caught.value)
    status = jobs.run_state(run)
    assert status["state"] == "failed" and "status.json is damaged" in status["error"]


def test_wrong_typed_status_fields_are_dropped_and_named(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run-bad")
    CASES["status wrong fields"][0](run)
    status = run.read_status()
    assert status["state"] == "succeeded"
    assert not {"pid", "error", "fraction", "phases"} & set(status)
    for field in ("'pid'", "'error'", "'fraction'", "'phases'"):
        assert field in status[DAMAGED]
    view = jobs.run_view(run)  # progress, caption and headline read those fields
    assert view.state == "succeeded"


def test_the_trainer_replaces_a_damaged_status_instead_of_dying(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run-bad")
    write_status(run, "not json")
    run.heartbeat(message="still here")
    assert run.read_status()["state"] == "running"
    CASES["status wrong fields"][0](run)
    run.set_status("running", fraction=0.5)
    status = run.read_status()
    assert status["fraction"] == 0.5 and DAMAGED not in status and DAMAGED not in json.loads(
        run.file("status.json").read_text())


@pytest.mark.parametrize("case", ["config not JSON", "config a list", "config wrong types"])
def test_a_damaged_config_is_named_and_the_run_still_listed(tmp_path: Path, case: str) -> None:
    run = damaged_run(tmp_path, case)
    with pytest.raises(RunDamaged) as caught:
        run.read_config()
    assert isinstance(caught.value, StudioError) and CASES[case][1] in str(caught.value)
    assert str(tmp_path) not in str(caught.value)  # names the run, not the server's folders
    assert run.display_name() == "config.json damaged"
    assert [r.run_id for r in list_runs(tmp_path)] == ["run-bad"]
    assert jobs.run_view(run).state == "succeeded"


def test_bad_metrics_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run-bad")
    garbage_metrics_line(run)
    with open(run.file("metrics.jsonl"), "ab") as handle:
        handle.write(b'\xff\xfe{"kind": "epoch"}\n{"kind": "epoch", "epoch": 9, "loss": NaN}\n')
    lines = run.read_metric_lines()
    assert lines.skipped == 4
    assert [r["epoch"] for r in lines.records if r.get("kind") == "epoch"] == [1, 2, 3, 9]  # a NaN loss is a fact
    assert "4 lines of metrics.jsonl could not be read" in lines.note("run-bad")
    assert run.read_metrics() == lines.records


@pytest.mark.parametrize("case", ["evaluation wrong shape", "evaluation not an object", "evaluation path outside"])
def test_a_damaged_evaluation_is_named_and_the_model_not_offered(tmp_path: Path, case: str) -> None:
    run = damaged_run(tmp_path, case)
    with pytest.raises(RunDamaged, match="Run run-bad: evaluation.json is damaged"):
        run.read_evaluation()
    verdict = jobs.model_verdict(run)
    assert not verdict.usable and "evaluation.json is damaged" in verdict.reason


@pytest.mark.parametrize("case", ["classes not a list", "classes of numbers"])
def test_damaged_classes_are_named(tmp_path: Path, case: str) -> None:
    run = damaged_run(tmp_path, case)
    with pytest.raises(RunDamaged, match="Run run-bad: classes.json is damaged"):
        run.read_classes()
    assert any("classes.json" in line for line in run.damage())


def test_a_damaged_split_is_named(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run-bad")
    with_json("split.json", [1])(run)
    with pytest.raises(RunDamaged, match="Run run-bad: split.json is damaged"):
        run.read_split()


def test_only_plain_folder_names_are_runs(tmp_path: Path) -> None:
    make_run(tmp_path, "run-good")
    odd = tmp_path / "[x](http:e.com)"
    odd.mkdir()
    (odd / "config.json").write_text("{}")
    assert [r.run_id for r in list_runs(tmp_path)] == ["run-good"]


# ----------------------------------------------------------------------------------------- the pages
def two_runs(runs_dir: Path, case: str) -> None:
    """A damaged run and a healthy one, the healthy one newest (so the sidebar's 'Latest' names it)."""
    bad = damaged_run(runs_dir, case)
    good = make_run(runs_dir, "run-good")
    now = time.time()
    os.utime(bad.file("config.json"), (now - 60, now - 60))
    os.utime(good.file("config.json"), (now, now))


def page_text(at: AppTest) -> str:
    """What a visitor reads: markdown, captions, alerts, headings and the choices of select boxes."""
    parts = [str(e.value) for kind in ("markdown", "caption", "info", "warning", "error", "success", "subheader")
             for e in getattr(at, kind)]
    parts += [str(option) for box in at.selectbox for option in box.options]
    parts += [str(option) for box in at.multiselect for option in box.options]
    return "\n".join(parts)


def open_page(page: str, run_id: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["run"] = run_id
    at.run()
    at.switch_page(page).run()
    no_exceptions(at)
    return at


def unescaped(text: str) -> str:
    """Markdown's backslash escapes removed, to compare with what the reader's message says."""
    return text.replace("\\", "")


@pytest.mark.parametrize("case", list(CASES))
def test_train_and_evaluate_pages_name_the_damaged_run_and_list_the_healthy_one(workspace: Path,  # noqa: F811
                                                                                case: str) -> None:
    two_runs(workspace / "runs", case)
    message = CASES[case][1]
    for page in ("pages/train.py", "pages/evaluate.py"):
        at = open_page(page, "run-bad")
        sidebar = "\n".join(str(m.value) for m in at.sidebar.markdown)
        assert "run-good" in sidebar and "succeeded" in sidebar, sidebar  # the sidebar read every run's status
        text = unescaped(page_text(at))
        if page.endswith("evaluate.py") and case.startswith("heartbeat null"):
            assert "run-bad" in text and "failed" in text  # its label: ended, not 'running' for ever
        else:
            assert message in text, (page, text)
        if page.endswith("evaluate.py"):
            assert any(o.startswith("run-good") for o in at.selectbox(key="evaluate_run").options)
            assert "Traceback" not in text
    at = open_page("pages/train.py", "run-good")  # the healthy run shows as usual beside the damaged one
    assert any("Training finished" in s.value for s in at.success)


# ----------------------------------------------------------------------------------------- names as text
HOSTILE = "**bold** [x](http://e.com) $x^2$"
LONG = "a" * 120 + "-middle-" + "z" * 112  # 240 characters


def run_with_classes(runs_dir: Path, classes: list[str]) -> RunDir:
    """A run whose evaluation is no better than always answering classes[0] (so the page says so, by name)."""
    run = make_run(runs_dir, "run-names")
    run.write_classes(classes)
    matrix = [[4, 0, 0], [2, 0, 0], [2, 0, 0]]
    run.write_evaluation({"split": "val", "images": 8, "classes": classes, "accuracy": 0.5, "top_k": 1,
                          "top_k_accuracy": 0.5, "macro_auc": 0.5, "confusion_matrix": matrix,
                          "per_class": [{"class": c, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
                                        for c in classes],
                          "most_confused": [{"true": classes[1], "predicted": classes[0], "count": 2}],
                          "mistakes": [{"path": "x/0.png", "true": classes[1], "predicted": classes[0],
                                        "confidence": 0.7}], "root": str(runs_dir / "gone")})
    return run


def test_a_class_name_shows_literally_on_the_evaluate_page(workspace: Path) -> None:  # noqa: F811
    run_with_classes(workspace / "runs", [HOSTILE, "roses", LONG])
    at = open_page("pages/evaluate.py", "run-names")
    values = [str(e.value) for kind in ("markdown", "caption", "warning", "info", "error") for e in getattr(at, kind)]
    assert any(markdown_literal(HOSTILE) in v for v in values), values  # the verdict and the axis note name it
    assert not any("[x](http://e.com)" in v or "**bold**" in v or "$x^2$" in v for v in values)
    caption = next(c for c in at.caption if "shortened on the axes" in c.value)
    assert markdown_literal(LONG, 60) in caption.value and markdown_literal(LONG) in caption.help


def test_a_long_class_name_is_shortened_on_the_confusion_matrix(workspace: Path) -> None:  # noqa: F811
    run_with_classes(workspace / "runs", [HOSTILE, "roses", LONG])
    at = open_page("pages/evaluate.py", "run-names")
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    ticks = figure["layout"]["xaxis"]["ticktext"]
    assert ticks == figure["layout"]["yaxis"]["ticktext"] and len(ticks) == 3
    assert all(len(t) <= 24 for t in ticks[1:]) and ticks[2].startswith("aaaa") and ticks[2].endswith("zzzz")
    assert "<" not in json.dumps(ticks)  # Plotly reads tags in labels: none get through
    hover = figure["data"][0]["customdata"]
    assert hover[2][0][0] == LONG  # the hover text keeps the whole name


def test_class_and_file_names_show_literally_on_the_data_page(workspace: Path) -> None:  # noqa: F811
    from conftest import write_png
    from core.base.workspace import Workspace

    hostile = "**bold** [x](e.com) $x^2$"  # a folder name holds no '/'
    root = Workspace.root().datasets_dir() / "names"
    for c, name in enumerate([hostile, LONG, "roses"]):
        for i in range(3):
            write_png(root / name / f"{i}.png", seed=10 * c + i)
    (root / "roses" / "photo\u202egpj.exe").write_bytes(b"MZ")  # posing as photoexe.jpg; skipped: not an image
    Workspace.root().save_state(dataset=str(root))
    at = AppTest.from_file(APP, default_timeout=30).run()
    no_exceptions(at)
    captions = [c for c in at.caption if "(3 images)" in c.value]
    assert any(c.value.startswith(markdown_literal(hostile)) for c in captions), [c.value for c in captions]
    long_caption = next(c for c in captions if c.value.startswith("aaa"))
    assert markdown_literal(LONG, 60) in long_caption.value and markdown_literal(LONG) in long_caption.help
    values = [str(e.value) for kind in ("markdown", "caption", "subheader", "error", "warning") for e in getattr(at, kind)]
    assert not any("[x](e.com)" in v or str(root) in v for v in values)  # no link, no server path
    skipped = "\n".join(frame.value.to_csv() for frame in at.dataframe)
    assert "photogpj.exe" in skipped and "\u202e" not in skipped
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert all(len(t) <= 24 for t in figure["layout"]["xaxis"]["ticktext"])
