"""Command line: train | evaluate | predict | inspect | status | export | health | report | bench.

JSON on stdout; on bad input a one-line `error: ...` on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core import StudioError

EXIT_BAD_INPUT = 1
EXIT_NOT_TRAINABLE = 2
EXIT_NO_REPORT = 2  # report: no such run, nothing to report, or the file cannot be written


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


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
    "backbone": "the pretrained network (efficientnet_lite0|lite1|lite2, efficientnet_b0..b7, efficientnet_v2_*)",
    "image_size": "the side photos are resized to",
    "batch_size": "images per step per device",
    "head_epochs": "phase 1, the head on the frozen backbone ('features' mode fits it exactly whatever the number)",
    "finetune_epochs": "phase 2, the top stages unfrozen",
    "head_lr": "Adam's learning rate for the head in 'images' mode",
    "finetune_lr": "Adam's learning rate when fine-tuning",
    "seed": "one seed for the split, shuffling, augmentation and initialisation",
    "val_fraction": "share of each class held out for validation when there is no val/ folder",
    "test_fraction": "share held out for a final test (class folders only)",
    "unfreeze_stages": "top EfficientNet stages unfrozen when fine-tuning",
    "label_smoothing": "label smoothing of the loss",
    "dropout": "dropout before the classifier",
    "head_mode": "features (cache frozen features once, fit the head exactly) or images (Adam over images)",
    "early_stopping_patience": "epochs without a better validation loss before a phase stops",
    "threads": "augmentation threads",
    "run_name": "a label for the run in the app",
    "mixed_precision": "float16/bfloat16 compute",
    "xla": "XLA compilation",
}


def train_help(key: str) -> str:
    """'the side photos are resized to (pixels, 32 to 1024; default: the backbone's recipe size)'."""
    from core.base.config import RULES, TrainConfig, _number

    rule, default = RULES[key], getattr(TrainConfig(), key)
    shown = rule.null if default is None and rule.null else default
    facts = []
    if rule.kind in ("int", "float") and rule.low is not None:
        facts.append(f"{rule.unit + ', ' if rule.unit else ''}{_number(rule.low)} to {_number(rule.high)}")
    elif rule.kind == "choice":
        facts.append(" | ".join(str(c) for c in rule.choices))
    facts.append(f"default: {shown if shown not in ('', None) else 'none'}")
    return f"{TRAIN_HELP[key]} ({'; '.join(facts)})".replace("%", "%%")


TRAIN_FLAGS = {  # flag -> (config key, type)
    "data": str, "backbone": str, "image_size": int, "batch_size": int, "head_epochs": int,
    "finetune_epochs": int, "head_lr": float, "finetune_lr": float, "seed": int, "val_fraction": float,
    "test_fraction": float, "unfreeze_stages": int, "label_smoothing": float, "dropout": float,
    "head_mode": str, "early_stopping_patience": int, "threads": int, "run_name": str,
    "mixed_precision": str, "xla": str,
}


OVERRIDES_HELP = ("the cleaning loop's corrections: auto (default: DATA.overrides.json beside the dataset folder "
                  "when it exists), none (the folders as they are), or the path of an overrides file")


def cmd_train(args: argparse.Namespace) -> int:
    from core.base.config import TrainConfig, read_config_file
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
        values["data"] = str(_unpacked(values["data"]))
    config = TrainConfig.from_dict(values)
    from core.data.augment import resolve_spec

    from core.data.augment import check_output_size

    check_output_size(resolve_spec(config.augmentation), config.resolved_image_size)  # before anything is created
    from core.training.train import run_training

    run = RunDir(Path(args.models_dir or _models_dir()) / args.run_id) if args.run_id else None
    if run is not None:
        run.path.mkdir(parents=True, exist_ok=True)
    run = run_training(config, run=run, models_dir=args.models_dir, exit_on_stop=True)
    if run is None:  # one of several processes, not the first: that one wrote the run folder and prints it
        print("this process trained its share; process 0 wrote the run folder", file=sys.stderr)
        return 0
    print(run.path)
    return 0


def _unpacked(data: str | Path) -> Path:
    """--data may be a .zip: unpacked with the upload's checks (core.data.ingest.dataset_folder), said on stderr."""
    from core.data.ingest import dataset_folder

    folder = dataset_folder(data)
    if folder != Path(data):
        print(f"{Path(data).name}: unpacked into {folder}", file=sys.stderr)
    return folder


def _models_dir() -> Path:
    from core.base.runs import default_models_dir

    return default_models_dir()


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.results.evaluate import evaluate_run
    from core.base.runs import RunDir

    _print_json(evaluate_run(RunDir.open(args.run, args.models_dir), data=args.data, split=args.split))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from core.serving.predict import Classifier
    from core.base.runs import RunDir

    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise StudioError(f"{missing[0]}: no such image file.")
    results = Classifier(RunDir.open(args.run, args.models_dir)).classify_files(args.images, top_k=args.top_k)
    _print_json(results)
    return 0 if all("error" not in r for r in results) else EXIT_BAD_INPUT


def cmd_inspect(args: argparse.Namespace) -> int:
    from core.data.datasets import scan

    report = scan(_unpacked(args.data)).report
    _print_json(report.to_dict())
    if not report.trainable:
        print("error: " + " ".join(report.errors), file=sys.stderr)
        return EXIT_NOT_TRAINABLE
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from core.serving.export import export_run, make_demo_bundle
    from core.base.runs import RunDir

    run = RunDir.open(args.run, args.models_dir)
    result = export_run(run, args.format or ["all"], data_root=args.data,
                        progress=lambda message: print(message, file=sys.stderr))
    if args.bundle and not result["failed"]:
        folder = make_demo_bundle(run, args.bundle_format, data_root=args.data)
        result["bundle"] = {"folder": str(folder), "zip": str(folder.with_suffix(".zip"))}
    _print_json(result)
    if result["failed"]:
        reasons = "; ".join(f"{fmt}: {result['formats'][fmt].get('error')}" for fmt in result["failed"])
        print(f"error: export failed for {reasons}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from core.training.jobs import run_view
    from core.base.runs import RunDir

    run = RunDir.open(args.run, args.models_dir)
    view = run_view(run)  # the same reading of the run as the app's pages
    _print_json({"run": run.run_id, **view.status, "state": view.state, "headline": view.headline,
                 "progress": round(view.fraction, 4), "has_model": view.has_model,
                 "usable_model": view.model.usable, "model_note": view.model.reason})
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from core.network.device import doctor

    report = doctor(args.seconds)
    _print_json(report)
    if report["gpus_seen_by_driver"] and report["devices"][0]["kind"] != "gpu":
        print(f"warning: nvidia-smi lists {len(report['gpus_seen_by_driver'])} GPU(s) but {report['backend']} "
              "trains on the CPU: install the GPU wheels (make install-plan says which).", file=sys.stderr)
    return 0


def _overrides_setting(text: str) -> str | None:
    """--overrides: "auto" (the file beside the dataset, when there is one), "none", or a file's path."""
    return None if text.lower() in ("none", "null", "off") else text


def cmd_health(args: argparse.Namespace) -> int:
    from core.results.health import health_report

    _print_json(health_report(_unpacked(args.data), backbone=args.backbone, image_size=args.image_size,
                              cache_dir=args.cache_dir, overrides=_overrides_setting(args.overrides)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The stakeholder report (core.serving.report); bad input exits 2 with the run or file named, as the issue asks."""
    from core.serving.report import default_report_name, write_report
    from core.base.runs import RunDir

    try:
        run = RunDir.open(args.run, args.models_dir)
        out = write_report(run, Path(args.out) if args.out else Path(default_report_name(run)))
    except StudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NO_REPORT
    print(out)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from core import bench

    result = bench.run(args.what, args)
    _print_json(result)
    return 0


MANUAL = """EfficientNet Studio from the command line: the same core as the app.

The path of a dataset, in order:
  inspect DATA        what is in a labelled folder (classes, counts, damaged files); exit 2 if it can't be trained
  health DATA         likely wrong labels, near-duplicates, train/test leaks, outliers (one feature pass)
  train --data DATA   fine-tune a pretrained backbone; prints the run folder (models/<run id>)
  status RUN          a run's state as JSON
  evaluate RUN        accuracy, confusion matrix, per-class scores, calibration (--data DIR: another folder)
  predict RUN IMG...  top-k classes per photo as JSON
  export RUN          Keras, SavedModel, TFLite (float32/16, int8) and ONNX, each checked against Keras
  report RUN          one self-contained HTML report for people who will not open the app
  doctor, bench       what training runs on here, and measurements (docs/benchmarks.md)

`python -m core COMMAND --help` explains each command's options, with defaults and units."""

EPILOG = """examples:
  python -m core train --data ../shared/data/flowers-mini
  python -m core evaluate models/run-20261130-120000-ab12 --data holdout/
  python -m core report models/run-20261130-120000-ab12 --out report.html

exit codes: 0 done; 1 bad input or a failed step (a one-line "error: ..." on stderr); 2 inspect: not
trainable, report: nothing to report; 130 interrupted. JSON results go to stdout, messages to stderr."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=MANUAL, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", help="folder holding run folders (default: ./models or $STUDIO_MODELS_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune a backbone on a labelled image folder; prints the run folder")
    train.add_argument("--config", help="JSON config file (flags override its values)")
    for key, kind in TRAIN_FLAGS.items():
        train.add_argument("--" + key.replace("_", "-"), dest=key, type=kind, help=train_help(key))
    train.add_argument("--augmentation", help="preset (none|light|seed), a JSON file, or inline JSON")
    train.add_argument("--weights", help="imagenet (default) or none for random initialisation")
    train.add_argument("--no-class-weights", action="store_true", help="do not weight classes by frequency")
    train.add_argument("--tta", action="store_true",
                       help="mirrored test-time augmentation: each photo scored with its mirror, averaged (off by "
                       "default: about a point either way on the check sets, for ~11%% more run time)")
    train.add_argument("--no-tta", action="store_true", help="no mirrored test-time augmentation (the default)")
    train.add_argument("--overrides", default=None, help=OVERRIDES_HELP)
    train.add_argument("--run-id", help="write into models/<run-id> (used by the app)")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a run; prints JSON and writes evaluation.json (its own "
                              "split) or evaluations/<name>.json (--data, or a split it is not scored on)")
    evaluate.add_argument("run", help="run folder or run id")
    evaluate.add_argument("--data", help="evaluate on every image of this labelled folder (or .zip) instead of the "
                          "run's split; saved as evaluations/<folder name>.json")
    evaluate.add_argument("--split", choices=["train", "val", "test"],
                          help="which saved split (default test, else val); another than the scored one is saved "
                          "as evaluations/<split>-split.json")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="classify images with a run; prints JSON top-k per image")
    predict.add_argument("run", help="run folder or run id")
    predict.add_argument("images", nargs="+", help="photo files (JPEG, PNG, BMP, WebP)")
    predict.add_argument("--top-k", type=int, default=5, help="classes listed per photo, most likely first "
                         "(default 5)")
    predict.set_defaults(func=cmd_predict)

    inspect = sub.add_parser("inspect", help="report a dataset folder (or a .zip of one) as JSON; exit 2 if it "
                                                "can't be trained on")
    inspect.add_argument("data", help="a folder of class folders (or train/ val/ test/), or a .zip of one")
    inspect.set_defaults(func=cmd_inspect)

    status = sub.add_parser("status", help="print a run's state as JSON (a dead trainer reads failed or stopped)")
    status.add_argument("run", help="run folder or run id")
    status.set_defaults(func=cmd_status)

    export = sub.add_parser("export", help="export a run with parity checks on its validation images; prints JSON")
    export.add_argument("run", help="run folder or run id")
    export.add_argument("--format", action="append",
                        help="keras|savedmodel|tflite|tflite_fp16|tflite_int8|onnx|all (repeatable; default all)")
    export.add_argument("--bundle", action="store_true", help="also pack a demo bundle (folder + zip)")
    export.add_argument("--bundle-format", default="tflite", help="the bundle's model format (default tflite)")
    export.add_argument("--data", help="the dataset's current location, if it moved since training")
    export.set_defaults(func=cmd_export)

    doctor = sub.add_parser("doctor", help="what training runs on here (backend, devices, precision, XLA, versions) "
                                           "and a few-second convolution test; prints JSON")
    doctor.add_argument("--seconds", type=float, default=2.0, help="length of the convolution test (default 2 s)")
    doctor.set_defaults(func=cmd_doctor)

    health = sub.add_parser("health", help="data health as JSON: suspect labels, near-duplicates and train/test "
                            "leaks, imbalance, outliers, odd shapes (one feature pass, cached)")
    health.add_argument("data", help="a labelled image folder or a .zip of one")
    health.add_argument("--backbone", default=None, help="default: the recipe's backbone")
    health.add_argument("--image-size", type=int, default=None, help="default: the backbone's recipe size")
    health.add_argument("--cache-dir", default=None, help="decoded images and features (default: training's cache)")
    health.add_argument("--overrides", default="auto", help=OVERRIDES_HELP)
    health.set_defaults(func=cmd_health)
    report = sub.add_parser("report", help="a stakeholder report: one self-contained HTML file (model card, data, "
                            "curves, confusion matrix, mistakes with heatmaps, exports) that opens offline; prints "
                            "its path")
    report.add_argument("run", help="run folder or run id")
    report.add_argument("--out", help="the HTML file to write, or a folder (default: report-<run id>.html here)")
    report.set_defaults(func=cmd_report)
    bench = sub.add_parser("bench", help="measure: loader | train | recipe throughput, scale (memory, disk, "
                                         "time per phase by dataset size), stop (seconds to stop in each phase)")
    bench.add_argument("what", choices=["loader", "train", "recipe", "scale", "stop", "features", "health"],
                       help="loader: images/s per loader; train: steps/s per phase; recipe: this recipe against "
                       "the tutorial's, accuracy and whole-run time; scale: memory, disk and time by dataset size; "
                       "stop: seconds to stop in each phase; features: pooled stages by re-splits; health: the "
                       "health check against one feature pass")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
