"""Command line: app | train | evaluate | predict | inspect | status | export | health | report | compare | doctor |
bench.

The result (a run folder, JSON) alone on stdout; progress, notes and a one-line `error: ...` on stderr
(core.terminal); the exit code says how it ended (EXIT_CODES).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from core import StudioError

# One scheme for every command (README: "Exit codes"). 2 is also argparse's own code for a command line it cannot
# read, so every kind of bad input shares it; 1 is what Python exits with on an unexpected error (a traceback).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 3
EXIT_CODES = {
    EXIT_OK: "done (a training run stopped on request too: its folder is printed and status.json says stopped)",
    EXIT_FAILED: "a step failed (an export format that failed its parity check; an unexpected error, with a "
                 "traceback)",
    EXIT_BAD_INPUT: "bad input: the command line, a path, a setting, a dataset that cannot be trained on (inspect), "
                    "a photo that cannot be read (predict), a run with nothing to report (report)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
PROG = "python -m core"  # the app's trainer processes and older scripts; installed, the same is `effnet-studio`
CONSOLE_PROG = "effnet-studio"
PREDICT_CHUNK = 32  # photos classified per call: a bar that moves, and memory bounded by the chunk, not the list


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))  # a verdict's "13.8–37.5" stays readable


def _load_augmentation(value: str) -> Any:
    """A preset name, a JSON file, or inline JSON."""
    if value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise StudioError(f"--augmentation: inline JSON is invalid ({err.msg}).") from None
    if value.endswith(".json") or Path(value).is_file():
        path = Path(value)
        if not path.is_file():
            raise StudioError(f"--augmentation: file {path} not found.")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise StudioError(f"{path}: invalid JSON ({err.msg} at line {err.lineno}).") from None
    return value


# What each train flag sets, in words; train_help() adds the default from TrainConfig and the allowed range and
# unit from core.base.config.RULES, so the help can never disagree with what the config accepts.
TRAIN_HELP = {
    "data": "the labelled image folder: one sub-folder per class, or train/ (val/ test/) holding them; or a .zip",
    "backbone": "the pretrained network (efficientnet_lite0|lite1|lite2, efficientnet_b0..b7, efficientnet_v2_*), or "
                "baseline_cnn: a small CNN trained from scratch, the baseline that shows what pretrained weights buy "
                "(every layer trains from the first epoch: no frozen phase, no fine-tuning)",
    "image_size": "the side photos are resized to",
    "batch_size": "images per step per device",
    "head_epochs": "phase 1, the head on the frozen backbone ('features' mode fits it exactly whatever the number); "
                   "from scratch: the epochs of the whole network, an upper bound for early stopping",
    "finetune_epochs": "phase 2, the top stages unfrozen",
    "head_lr": "the learning rate of the head's epochs in 'images' mode, and of every layer from scratch",
    "finetune_lr": "the learning rate when fine-tuning",
    "optimizer": "the gradient optimizer of epoch training and fine-tuning: adam, or sgd (SGD with momentum 0.9, which "
                 "usually wants a ~10x higher learning rate); the exact head fit of head_mode 'features' uses none, "
                 "so there it changes only fine-tuning",
    "reduce_lr_patience": "epochs without a better validation loss before the learning rate is halved",
    "seed": "one seed for the split, shuffling, augmentation and initialisation",
    "val_fraction": "share of each class held out for validation when there is no val/ folder",
    "test_fraction": "share held out for a final test (class folders only)",
    "unfreeze_stages": "top EfficientNet stages unfrozen when fine-tuning",
    "label_smoothing": "label smoothing of the loss",
    "dropout": "dropout before the classifier",
    "head_mode": "features (cache frozen features once, fit the head exactly) or images (epochs over images)",
    "early_stopping_patience": "epochs without a better validation loss before a phase stops",
    "threads": "augmentation threads",
    "run_name": "a label for the run in the app",
    "mixed_precision": "float16/bfloat16 compute",
    "xla": "XLA compilation",
}


def train_help(key: str) -> str:
    """'the side photos are resized to (pixels, 32 to 1024; default: the backbone's recipe size)'."""
    from core.base.config import RULES, SCRATCH_DEFAULTS, TrainConfig, _number

    rule, default = RULES[key], getattr(TrainConfig(), key)
    shown = rule.null if default is None and rule.null else default
    facts = []
    if rule.kind in ("int", "float") and rule.low is not None:
        facts.append(f"{rule.unit + ', ' if rule.unit else ''}{_number(rule.low)} to {_number(rule.high)}")
    elif rule.kind == "choice":
        facts.append(" | ".join(str(c) for c in rule.choices))
    facts.append(f"default: {shown if shown not in ('', None) else 'none'}")
    if key in SCRATCH_DEFAULTS:  # a default that follows the backbone
        facts.append(f"from scratch: {SCRATCH_DEFAULTS[key] if SCRATCH_DEFAULTS[key] is not None else 'none'}")
    return f"{TRAIN_HELP[key]} ({'; '.join(facts)})".replace("%", "%%")


TRAIN_FLAGS = {  # flag -> (config key, type)
    "data": str, "backbone": str, "image_size": int, "batch_size": int, "head_epochs": int,
    "finetune_epochs": int, "head_lr": float, "finetune_lr": float, "optimizer": str, "seed": int,
    "val_fraction": float, "test_fraction": float, "unfreeze_stages": int, "label_smoothing": float, "dropout": float,
    "head_mode": str, "early_stopping_patience": int, "reduce_lr_patience": int, "threads": int, "run_name": str,
    "mixed_precision": str, "xla": str,
}


OVERRIDES_HELP = ("the cleaning loop's corrections: auto (default: DATA.overrides.json beside the dataset folder "
                  "when it exists), none (the folders as they are), or the path of an overrides file")


def cmd_train(args: argparse.Namespace) -> int:
    from core.base.config import TrainConfig, default_preset, read_config_file
    from core.base.runs import RunDir, check_run_id

    # The file's values and the flags are checked together, once (TrainConfig.from_dict below), so a flag can fix
    # a value of the file and nothing is created before every setting has passed.
    values: dict[str, Any] = {}
    if args.config:
        values.update(read_config_file(args.config))
    if args.run_id:
        check_run_id(args.run_id)
    for key in TRAIN_FLAGS:
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.augmentation is not None:
        values["augmentation"] = _load_augmentation(args.augmentation)
    if args.weights is not None:
        values["weights"] = None if args.weights.lower() in ("none", "random", "null") else args.weights
    if args.no_class_weights:
        values["class_weights"] = False
    if args.tta:
        values["tta"] = True
    if args.no_tta:
        values["tta"] = False
    if args.overrides is not None:
        values["overrides"] = _overrides_setting(args.overrides)
    if isinstance(values.get("data"), str) and values["data"].lower().endswith(".zip"):
        values["data"] = str(_unpacked(values["data"], args.display))
    if args.preset is not None:
        values["preset"] = args.preset
    from core.network.device import accelerator_hint

    accelerator = accelerator_hint()  # the driver's word: the backend must not start before training sets it up
    if "preset" not in values:  # the device's default: Best on a GPU, Quick on a CPU
        values["preset"] = default_preset(accelerator)
    config = TrainConfig.from_dict(values)
    from core.data.augment import resolve_spec

    from core.data.augment import check_output_size

    check_output_size(resolve_spec(config.augmentation), config.resolved_image_size)  # before anything is created
    args.display.note(_preset_note(config, accelerator, Path(args.models_dir or _models_dir())))
    from core.training.train import run_training

    run = RunDir(Path(args.models_dir or _models_dir()) / args.run_id) if args.run_id else None
    if run is not None:
        run.path.mkdir(parents=True, exist_ok=True)
    run = run_training(config, run=run, models_dir=args.models_dir, exit_on_stop=True,
                       on_progress=_training_progress(args.display))
    if run is None:  # one of several processes, not the first: that one wrote the run folder and prints it
        args.display.note("this process trained its share; process 0 wrote the run folder")
        return EXIT_OK
    args.display.close()  # the last phase's line before the result
    print(run.path)
    return EXIT_OK


def _preset_note(config: Any, accelerator: str, runs_dir: Path) -> str:
    """'Preset quick: <what it does>. Expected: about 1:05 (...)', said before the run starts."""
    from core.base.config import PRESET_SUMMARIES
    from core.training.estimate import estimate_run, planned_counts

    counts, cross_validated = planned_counts(config, accelerator)
    estimate = estimate_run(config, counts, accelerator, runs_dir, cross_validated=cross_validated)
    return f"Preset {config.preset}: {PRESET_SUMMARIES[config.preset]} Expected on this {accelerator.upper()}: " \
           f"{estimate.describe()}."


def _training_progress(display: Any) -> Any:
    """The trainer's progress records, as written into status.json, to the terminal; the device it trains on is
    said once, with the first record (by then training has set up its devices)."""
    from core.terminal import OFF, device_note

    said = threading.Event()
    lock = threading.Lock()

    def show(record: dict[str, Any]) -> None:
        if display.mode == OFF:
            return
        with lock:  # the trainer's ticker thread reports too
            if not said.is_set():
                said.set()
                display.note(device_note())
            display.show(record)

    return show


def _unpacked(data: str | Path, display: Any) -> Path:
    """--data may be a .zip: unpacked with the upload's checks (core.data.ingest.dataset_folder), said on stderr."""
    from core.data.ingest import dataset_folder

    folder = dataset_folder(data)
    if folder != Path(data):
        display.note(f"{Path(data).name}: unpacked into {folder}")
    return folder


def _models_dir() -> Path:
    from core.base.runs import default_models_dir

    return default_models_dir()


def _stages(display: Any, *stages: tuple[str, str, str]) -> Any:
    """A command's stages (name, words, unit) reported like training's phases (core.terminal.Stages)."""
    from core.terminal import Stage, Stages

    return Stages(display, [Stage(name, 0, unit=unit, title=words) for name, words, unit in stages])


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.results.evaluate import evaluate_run
    from core.base.runs import RunDir

    stages = _stages(args.display, ("decode", "Decoding images", "images"), ("evaluate", "Scoring images", "images"))
    names = {"decoding": "decode", "scoring": "evaluate"}  # evaluate_run's words for its stages
    result = evaluate_run(RunDir.open(args.run, args.models_dir), data=args.data, split=args.split,
                          progress=lambda stage, done, total: stages(names.get(stage, stage), done, total))
    stages.finish()
    args.display.close()
    _print_json(result)
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from core.serving.predict import Classifier
    from core.base.runs import RunDir

    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise StudioError(f"{missing[0]}: no such image file.")
    run = RunDir.open(args.run, args.models_dir)
    stages = _stages(args.display, ("load", "Loading the model", "steps"), ("classify", "Classifying", "photos"))
    stages("load", 0, 1)
    classifier = Classifier(run)
    results: list[dict[str, Any]] = []
    for start in range(0, len(args.images), PREDICT_CHUNK):
        stages("classify", len(results), len(args.images))
        results += classifier.classify_files(args.images[start:start + PREDICT_CHUNK], top_k=args.top_k)
    stages("classify", len(results), len(args.images))
    stages.finish()
    args.display.close()
    _print_json(results)
    return EXIT_OK if all("error" not in r for r in results) else EXIT_BAD_INPUT


def cmd_inspect(args: argparse.Namespace) -> int:
    from core.data.datasets import scan

    report = scan(_unpacked(args.data, args.display)).report
    _print_json(report.to_dict())
    if not report.trainable:
        print("error: " + " ".join(report.errors), file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from core.serving.export import check_formats, export_run, make_demo_bundle
    from core.base.runs import RunDir

    run = RunDir.open(args.run, args.models_dir)
    formats = check_formats(args.format or ["all"])
    steps = [("export", "Exporting, each format checked against Keras", "formats")]
    steps += [("bundle", "Packing the demo bundle", "steps")] if args.bundle else []
    stages = _stages(args.display, *steps)
    exported: list[str] = []

    def said(message: str) -> None:  # export_run's words: "Decoding the ... images ...", then "Exporting <format>"
        if message.startswith("Exporting ") and message.split()[-1] in formats:
            exported.append(message.split()[-1])
            stages("export", len(exported) - 1, len(formats), message=exported[-1])
        else:
            stages("export", 0, len(formats), message=message[0].lower() + message[1:])

    result = export_run(run, formats, data_root=args.data, progress=said)
    stages("export", len(formats), len(formats))
    if args.bundle and not result["failed"]:
        stages("bundle", 0, 1)
        folder = make_demo_bundle(run, args.bundle_format, data_root=args.data)
        result["bundle"] = {"folder": str(folder), "zip": str(folder.with_suffix(".zip"))}
    stages.finish()
    args.display.close()
    _print_json(result)
    if result["failed"]:
        reasons = "; ".join(f"{fmt}: {result['formats'][fmt].get('error')}" for fmt in result["failed"])
        print(f"error: export failed for {reasons}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from core.training.jobs import run_view
    from core.base.runs import RunDir

    run = RunDir.open(args.run, args.models_dir)
    view = run_view(run)  # the same reading of the run as the app's pages
    _print_json({"run": run.run_id, **view.status, "state": view.state, "headline": view.headline,
                 "progress": round(view.fraction, 4), "has_model": view.has_model,
                 "usable_model": view.model.usable, "model_note": view.model.reason})
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from core.installplan import install_report
    from core.network.device import doctor

    report = doctor(args.seconds)
    # The install section (issue 29.5): the plan this venv was built with against the plan now, its CUDA wheels,
    # and what to run. Composed here, beside the device report, so the device module stays about devices.
    report["install"] = install = install_report()
    _print_json(report)
    if report["gpus_seen_by_driver"] and report["devices"][0]["kind"] != "gpu":
        # With the plan's pinned wheels in place, what is left to look at is the driver, not the install.
        hint = ("The pinned CUDA wheels are installed: check that the driver supports CUDA 12.5 or newer."
                if install["matches"] and install["cuda_wheels"]["state"] == "pinned" else install["next"])
        print(f"warning: nvidia-smi lists {len(report['gpus_seen_by_driver'])} GPU(s) but {report['backend']} "
              f"trains on the CPU: install the GPU wheels (make install-plan says which). {hint}", file=sys.stderr)
    elif install["venv"] and not install["matches"]:
        print(f"note: {install['next']}", file=sys.stderr)
    return EXIT_OK


def _overrides_setting(text: str) -> str | None:
    """--overrides: "auto" (the file beside the dataset, when there is one), "none", or a file's path."""
    return None if text.lower() in ("none", "null", "off") else text


def cmd_health(args: argparse.Namespace) -> int:
    from core.results.health import health_report

    stages = _stages(args.display, ("decode", "Decoding images", "images"),
                     ("features", "Computing frozen-base features", "images"))
    report = health_report(_unpacked(args.data, args.display), backbone=args.backbone, image_size=args.image_size,
                           cache_dir=args.cache_dir, overrides=_overrides_setting(args.overrides), on_progress=stages)
    stages.finish()
    args.display.close()
    _print_json(report)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """The stakeholder report (core.serving.report); bad input exits 2 with the run or file named, as the issue asks."""
    from core.serving.report import default_report_name, write_report
    from core.base.runs import RunDir

    try:
        run = RunDir.open(args.run, args.models_dir)
        other = RunDir.open(args.compare, args.models_dir) if args.compare else None
        out = write_report(run, Path(args.out) if args.out else Path(default_report_name(run)), compare_with=other)
    except StudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(out)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    """Two runs scored on the same photos (core.results.compare): JSON with intervals and a verdict; runs that
    cannot be compared (other classes, other test photos) exit 2 with the reason."""
    from core.base.runs import RunDir
    from core.results.compare import compare_runs

    stages = _stages(args.display, *[(f"{stage} {role}", f"{words} ({role})", "images") for role in "AB"
                                     for stage, words in (("decoding", "Decoding images"), ("scoring", "Scoring"))])
    try:
        first, second = RunDir.open(args.run_a, args.models_dir), RunDir.open(args.run_b, args.models_dir)
        result = compare_runs(first, second, data=Path(args.data) if args.data else None, seed=args.seed,
                              replicates=args.replicates, progress=stages if args.data else None)
    except StudioError as err:
        args.display.close()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    stages.finish()
    args.display.close()
    _print_json(result)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from core import bench

    # bench health reports the health check's stages; bench scale and stop one step per trainer process.
    args.progress = _stages(args.display, ("decode", "Decoding images", "images"),
                            ("features", "Computing frozen-base features", "images"),
                            ("runs", "Trainer processes", "runs"))
    result = bench.run(args.what, args)
    args.progress.finish()
    args.display.close()
    _print_json(result)
    return EXIT_OK


def cmd_app(args: argparse.Namespace) -> int:
    """Start the Streamlit app from wherever it is installed (core.launch); --dry-run prints the line instead."""
    from core import launch

    command = launch.streamlit_command(args.port, args.address, args.headless, args.streamlit_args or [],
                                       quiet=not args.verbose)
    if args.dry_run:
        _print_json({"app": str(launch.app_script()), "config": str(launch.config_file() or ""),
                     "models_dir": str(_models_dir()), "command": command})
        return EXIT_OK
    return launch.start(command)


MANUAL = """EfficientNet Studio from the command line: the same core as the app.

The path of a dataset, in order:
  app                 start the app in the browser (Streamlit) from wherever it is installed
  inspect DATA        what is in a labelled folder (classes, counts, damaged files); exit 2 if it can't be trained
  health DATA         likely wrong labels, near-duplicates, train/test leaks, outliers (one feature pass)
  train --data DATA   fine-tune a pretrained backbone; prints the run folder (models/<run id>)
  status RUN          a run's state as JSON
  evaluate RUN        accuracy, confusion matrix, per-class scores, calibration (--data DIR: another folder)
  predict RUN IMG...  top-k classes per photo as JSON
  export RUN          Keras, SavedModel, TFLite (float32/16, int8) and ONNX, each checked against Keras
  report RUN          one self-contained HTML report for people who will not open the app
  compare RUN RUN     two runs on the same photos: differences with 95%% intervals, McNemar's test, a verdict
  doctor, bench       what training runs on here, and measurements (docs/benchmarks.md)

The result (a run folder, JSON) is alone on stdout. Long commands show one line per phase on stderr: a bar with
the count, rate and time left on a terminal, plain lines elsewhere, nothing with --quiet. TensorFlow's own log
lines and Python warnings are hidden unless --verbose. `%(prog)s COMMAND --help` explains each command's
options, with defaults and units. Shell completion: not offered (argparse has none built in)."""


def epilog(prog: str) -> str:
    """Examples and the exit codes, under the manual."""
    codes = "\n".join(f"  {code}  {words}" for code, words in EXIT_CODES.items())
    return f"""examples:
  {prog} train --data ../shared/data/flowers-mini
  {prog} evaluate models/run-20261130-120000-ab12 --data holdout/
  {prog} report models/run-20261130-120000-ab12 --out report.html
  {prog} app --port 8501

exit codes (every error is one line "error: ..." on stderr):
{codes}"""


def _output_options(parser: argparse.ArgumentParser, after_command: bool) -> None:
    """-q/-v before or after the command's name (`train --data X -q` reads naturally): the sub-command's copy
    only sets a value when given, so it never resets one given before the name."""
    default = argparse.SUPPRESS if after_command else False
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="no progress and no notes on stderr, only errors (default: progress shown)")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="also TensorFlow's, XLA's and absl's log lines and Python warnings (default: hidden)")


def _command(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command that also takes -q/-v after its name."""
    command = sub.add_parser(name, **kwargs)
    _output_options(command, after_command=True)
    return command


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=MANUAL, epilog=epilog(prog),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", help="folder holding run folders (default: ./models or $STUDIO_MODELS_DIR)")
    _output_options(parser, after_command=False)
    from core.terminal import OFF, Display

    parser.set_defaults(display=Display(mode=OFF))  # `args.func(args)` called from code shows nothing; main() shows
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    app = _command(sub, "app", help="start the app (Streamlit) in the browser, with its own settings, from "
                   "wherever it is installed")
    app.add_argument("--port", type=int, default=8501, help="the port it listens on (default 8501)")
    app.add_argument("--address", default=None,
                     help="the address it listens on (default: Streamlit's, every interface)")
    app.add_argument("--headless", action="store_true",
                     help="do not open a browser tab (default: open one when there is a display)")
    app.add_argument("--dry-run", action="store_true",
                     help="print the app's files and the streamlit command as JSON, start nothing")
    app.add_argument("streamlit_args", nargs=argparse.REMAINDER,
                     help="after --: further `streamlit run` options, e.g. -- --server.maxUploadSize 200")
    app.set_defaults(func=cmd_app)

    train = _command(sub, "train", help="fine-tune a backbone on a labelled image folder; prints the run folder")
    train.add_argument("--config", help="JSON config file (flags override its values)")
    for key, kind in TRAIN_FLAGS.items():
        train.add_argument("--" + key.replace("_", "-"), dest=key, type=kind, help=train_help(key))
    train.add_argument("--preset", choices=["quick", "best"], default=None,
                       help="quick: a linear head fitted on frozen features (minutes on a CPU); best: then "
                       "fine-tunes the top stages on augmented photos (slower, more accurate). Default: best on a "
                       "GPU, quick on a CPU. Flags given override the preset's settings")
    train.add_argument("--augmentation", help="preset (none|light|seed), a JSON file, or inline JSON")
    train.add_argument("--weights", help="imagenet (default) or none for random initialisation (baseline_cnn: none, "
                       "its only choice)")
    train.add_argument("--no-class-weights", action="store_true", help="do not weight classes by frequency")
    train.add_argument("--tta", action="store_true",
                       help="mirrored test-time augmentation: each photo scored with its mirror, averaged (off by "
                       "default: about a point either way on the check sets, for ~11%% more run time)")
    train.add_argument("--no-tta", action="store_true", help="no mirrored test-time augmentation (the default)")
    train.add_argument("--overrides", default=None, help=OVERRIDES_HELP)
    train.add_argument("--run-id", help="write into models/<run-id> (used by the app)")
    train.set_defaults(func=cmd_train)

    evaluate = _command(sub, "evaluate", help="evaluate a run; prints JSON and writes evaluation.json (its own "
                        "split) or evaluations/<name>.json (--data, or a split it is not scored on)")
    evaluate.add_argument("run", help="run folder or run id")
    evaluate.add_argument("--data", help="evaluate on every image of this labelled folder (or .zip) instead of the "
                          "run's split; saved as evaluations/<folder name>.json")
    evaluate.add_argument("--split", choices=["train", "val", "test"],
                          help="which saved split (default test, else val); another than the scored one is saved "
                          "as evaluations/<split>-split.json")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = _command(sub, "predict", help="classify images with a run; prints JSON top-k per image")
    predict.add_argument("run", help="run folder or run id")
    predict.add_argument("images", nargs="+", help="photo files (JPEG, PNG, BMP, WebP)")
    predict.add_argument("--top-k", type=int, default=5, help="classes listed per photo, most likely first "
                         "(default 5)")
    predict.set_defaults(func=cmd_predict)

    inspect = _command(sub, "inspect", help="report a dataset folder (or a .zip of one) as JSON; exit 2 if it "
                       "can't be trained on")
    inspect.add_argument("data", help="a folder of class folders (or train/ val/ test/), or a .zip of one")
    inspect.set_defaults(func=cmd_inspect)

    status = _command(sub, "status", help="print a run's state as JSON (a dead trainer reads failed or stopped)")
    status.add_argument("run", help="run folder or run id")
    status.set_defaults(func=cmd_status)

    export = _command(sub, "export", help="export a run with parity checks on its validation images; prints JSON")
    export.add_argument("run", help="run folder or run id")
    export.add_argument("--format", action="append",
                        help="keras|savedmodel|tflite|tflite_fp16|tflite_int8|onnx|all (repeatable; default all)")
    export.add_argument("--bundle", action="store_true", help="also pack a demo bundle (folder + zip)")
    export.add_argument("--bundle-format", default="tflite", help="the bundle's model format (default tflite)")
    export.add_argument("--data", help="the dataset's current location, if it moved since training")
    export.set_defaults(func=cmd_export)

    doctor = _command(sub, "doctor", help="what training runs on here (backend, devices, precision, XLA, versions) "
                      "and a few-second convolution test; prints JSON")
    doctor.add_argument("--seconds", type=float, default=2.0, help="length of the convolution test (default 2 s)")
    doctor.set_defaults(func=cmd_doctor)

    health = _command(sub, "health", help="data health as JSON: suspect labels, near-duplicates and train/test "
                      "leaks, imbalance, outliers, odd shapes (one feature pass, cached)")
    health.add_argument("data", help="a labelled image folder or a .zip of one")
    health.add_argument("--backbone", default=None, help="default: the recipe's backbone")
    health.add_argument("--image-size", type=int, default=None, help="default: the backbone's recipe size")
    health.add_argument("--cache-dir", default=None, help="decoded images and features (default: training's cache)")
    health.add_argument("--overrides", default="auto", help=OVERRIDES_HELP)
    health.set_defaults(func=cmd_health)
    report = _command(sub, "report", help="a stakeholder report: one self-contained HTML file (model card, data, "
                      "curves, confusion matrix, mistakes with heatmaps, exports) that opens offline; prints "
                      "its path")
    report.add_argument("run", help="run folder or run id")
    report.add_argument("--out", help="the HTML file to write, or a folder (default: report-<run id>.html here)")
    report.add_argument("--compare", metavar="RUN", default=None,
                        help="another run (folder or id) to compare this one with on the same photos: the report "
                        "opens with the verdict, both differences with 95%% intervals and recall per class")
    report.set_defaults(func=cmd_report)
    compare = _command(sub, "compare", help="two runs scored on the same photos: accuracy and macro-F1 differences "
                       "with 95%% intervals (paired bootstrap), McNemar's test, per-class differences and a verdict")
    compare.add_argument("run_a", help="run folder or run id")
    compare.add_argument("run_b", help="run folder or run id")
    compare.add_argument("--data", default=None, help="a labelled folder to score both on (default: the runs' own "
                         "test photos, which must be the same)")
    compare.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    compare.add_argument("--replicates", type=int, default=2000,
                         help="bootstrap replicates of the 95%% intervals (default 2000, at least 100)")
    compare.set_defaults(func=cmd_compare)
    bench = _command(sub, "bench", help="measure: loader | train | recipe throughput, scale (memory, disk, "
                     "time per phase by dataset size), stop (seconds to stop in each phase)")
    bench.add_argument("what", choices=["loader", "train", "recipe", "scale", "stop", "features", "health", "serve",
                                        "load", "pool"],
                       help="loader: images/s per loader; train: steps/s per phase; recipe: this recipe against "
                       "the tutorial's, accuracy and whole-run time; scale: memory, disk and time by dataset size; "
                       "stop: seconds to stop in each phase; features: pooled stages by re-splits; health: the "
                       "health check against one feature pass; serve: a serve-profile app's seconds to a "
                       "listening port and peak memory; load: many Chromium visitors at once against a served app "
                       "(burst, training, sessions, soak); pool: ways of sharing one served model among threads")
    bench.add_argument("--venv", default=None, help="serve: a serve-profile virtual environment "
                       "(pip install -r requirements.txt)")
    bench.add_argument("--demo", default=None, help="serve: the folder holding the demo bundle(s) to serve")
    bench.add_argument("--photos", type=int, default=None,
                       help="serve: photos classified in the browser (default 10); load: photos each visitor "
                       "uploads at once (default 8)")
    bench.add_argument("--profile", choices=["serve", "train"], default="serve",
                       help="load: serve (the --venv serve-profile venv) or train (this venv, which can also train)")
    bench.add_argument("--parts", default=None, metavar="PART,...",
                       help="load: which of burst,training,sessions,soak to run (default: all the profile can; "
                       "training needs --profile train)")
    bench.add_argument("--visitors", type=int, default=8, help="load, pool: visitors classifying at the same moment "
                       "(default 8)")
    bench.add_argument("--ways", nargs="+", default=None, metavar="WAY",
                       help="pool: ways of sharing one model to compare (unguarded, lock, pool-N; default: unguarded "
                       "lock pool-1 pool-2 pool-4 pool-8)")
    bench.add_argument("--threads-per-runner", type=int, default=None,
                       help="pool: LiteRT/ONNX threads per runner (default: the runtime's own)")
    bench.add_argument("--sessions", type=int, default=200,
                       help="load: sessions opened and closed one after another (default 200)")
    bench.add_argument("--minutes", type=float, default=20.0, help="load: length of the soak in minutes (default 20)")
    bench.add_argument("--settle", type=float, default=130.0,
                       help="load: seconds to wait after sessions and the soak before measuring memory again, for "
                       "Streamlit to drop closed sessions (its disconnectedSessionTTL is 120 s; 0: do not wait)")
    bench.add_argument("--data", default=None, help="loader, recipe: the image folder; train: also measure fine-tune "
                                                     "steps fed by the real loader from it (real vs synthetic)")
    bench.add_argument("--mixed-precision", choices=["auto", "on", "off"], default="auto",
                       help="train: precision policy (auto: mixed on a GPU; on: bfloat16 or float16 as the device has)")
    bench.add_argument("--finetune-only", action="store_true",
                       help="train: measure only the recipe's fine-tune steps (no frozen/unfrozen/inference rows)")
    bench.add_argument("--synthetic", action="store_true",
                       help="train: random tensors only (no decoding or augmentation), even with --data")
    bench.add_argument("--image-size", type=int, default=224, help="loader, train: pixels per side (default 224)")
    bench.add_argument("--batch-size", type=int, default=32, help="loader, train: images per step (default 32)")
    bench.add_argument("--backbone", default="efficientnet_b0",
                       help="train: the network whose steps are timed (default efficientnet_b0)")
    bench.add_argument("--weights", default="none", help="imagenet or none (throughput does not depend on it)")
    bench.add_argument("--epochs", type=int, default=2, help="loader: passes over the data per contender")
    bench.add_argument("--steps", type=int, default=8, help="train: timed steps per measurement")
    bench.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="recipe: seeds to average over")
    bench.add_argument("--preset", choices=["quick", "best"], default=None,
                       help="recipe: the preset measured against the tutorial recipe (default: quick, the CPU's)")
    bench.add_argument("--augmentation", default="seed",
                       help="loader, train: augmentation preset (none|light|seed) or JSON (default seed)")
    bench.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="recipe: override a default setting for the measured variant (JSON values)")
    bench.add_argument("--recipe-backbone", default="efficientnet_lite0",
                       help="recipe: backbone for both recipes; features: the backbone studied")
    bench.add_argument("--size", dest="image_size_override", type=int, default=None,
                       help="features: image size (default: the backbone's recipe size)")
    bench.add_argument("--resplit", action="store_true",
                       help="recipe: each seed re-splits all photos into train/test (same test share) instead of "
                       "using the folder's own split")
    bench.add_argument("--candidates", nargs="+", metavar="SET",
                       help="features: only these feature sets (e.g. s6+s7+top); default all")
    bench.add_argument("--resplits", type=int, default=10, help="features: random train/test re-splits to average")
    bench.add_argument("--sizes", type=int, nargs="+", help="scale: dataset sizes in images (default 1000 5000 20000); stop: the one size (default 1000)")
    bench.add_argument("--work", help="scale: folder for the generated datasets (kept and reused; default a temp dir); "
                       "features: where features are cached (default $TMPDIR/studio-features)")
    bench.add_argument("--keep", action="store_true", help="scale: keep run folders and caches")
    bench.add_argument("--train-args", nargs=argparse.REMAINDER,
                       help="scale, stop: extra `train` flags for every run, last on the line (e.g. --image-size 96)")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:  # one before the command's name, the other after it
        parser.error("argument -v/--verbose: not allowed with argument -q/--quiet")
    from core.terminal import Display, quiet_logs

    # Before any command runs, so before anything imports TensorFlow (core.terminal says why that matters).
    with quiet_logs(verbose=args.verbose), Display(quiet=args.quiet) as display:
        args.display = display
        try:
            return args.func(args)
        except StudioError as err:
            display.close()
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            display.close()
            print("error: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # `... | head` closed the pipe: what it wanted was read; no traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK


def console() -> int:
    """The `effnet-studio` command (pyproject.toml's console script). An installed copy keeps runs and the app's
    workspace in the current folder (core.launch.installed_defaults); the rest is `python -m core`."""
    from core.launch import installed_defaults

    for key, value in installed_defaults(Path.cwd()).items():
        os.environ.setdefault(key, value)
    return main(prog=CONSOLE_PROG)
