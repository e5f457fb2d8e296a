"""Export a finished run (.keras, SavedModel, LiteRT float32/float16/int8, ONNX), check each export's parity
with the Keras model on the run's held-out images (validation, else test), and pack a demo bundle for a TensorFlow-free deployment.

Everything lands in `<run>/exports/`; `exports/parity.json` holds one entry per format (merged across calls).
Exporting needs the train profile with the TensorFlow backend; reading the results (core.serving.bundle) does not.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import importlib.util
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core import StudioError
from core.base.runs import CLASSES, CONFIG, EVALUATION, METRICS, MODEL, RunDir, read_json, write_json_atomic

EXPORTS = "exports"
PARITY = "parity.json"
BUNDLES = "bundles"
# The rule: a float export must give the Keras model's top-1 on at least 99% of validation images.
FLOAT_AGREEMENT = 0.99
# ...counted over images the Keras model decides: where its top two probabilities are closer than this, float16
# rounding (probabilities move by < 0.005) can swap them, which is a tie, not an export error. Seen once in 80
# validation photos with an exactly fitted head at 96 px, whose export accuracy even went up.
TIE_MARGIN = 0.01
# int8 calibration: enough training images to see every class's activation ranges, few enough to stay fast.
REPRESENTATIVE_IMAGES = 100
MISTAKE_THUMBNAILS = 18  # the Evaluate page shows up to 18 mistakes
THUMBNAIL_SIDE = 160


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One export: the file (or folder) it writes under exports/, and whether it is a float format."""

    filename: str
    is_float: bool = True
    needs: tuple[str, ...] = ()  # importable modules the exporter and its parity check need
    serve: bool = False  # runs in the serve profile (core.serving.bundle) without TensorFlow


LITERT = ("ai_edge_litert",)
FORMATS: dict[str, ExportFormat] = {
    "keras": ExportFormat("model.keras"),
    "savedmodel": ExportFormat("savedmodel"),
    "tflite": ExportFormat("model_float32.tflite", needs=LITERT, serve=True),
    "tflite_fp16": ExportFormat("model_float16.tflite", needs=LITERT, serve=True),
    "tflite_int8": ExportFormat("model_int8.tflite", is_float=False, needs=LITERT, serve=True),
    "onnx": ExportFormat("model.onnx", needs=("tf2onnx", "onnx", "onnxruntime"), serve=True),
}
PIP_NAMES = {"ai_edge_litert": "ai-edge-litert", "tf2onnx": "tf2onnx", "onnx": "onnx", "onnxruntime": "onnxruntime"}


def exports_dir(run: RunDir) -> Path:
    return run.path / EXPORTS


def export_path(run: RunDir, fmt: str) -> Path:
    """Where format `fmt` of this run is (or will be) written."""
    return exports_dir(run) / FORMATS[check_formats([fmt])[0]].filename


def read_parity(run: RunDir) -> dict[str, Any]:
    """exports/parity.json: {format: entry}, empty before the first export."""
    return read_json(exports_dir(run) / PARITY, {}) or {}


def check_formats(formats: Sequence[str]) -> list[str]:
    """Known format names in FORMATS order (SavedModel before the LiteRT formats that reuse it), without repeats;
    "all" = every format; unknown names fail with a hint."""
    chosen: list[str] = []
    for name in formats:
        names = list(FORMATS) if name == "all" else [name]
        for fmt in names:
            if fmt not in FORMATS:
                hint = difflib.get_close_matches(fmt, FORMATS, n=1)
                raise StudioError(f"Unknown export format {fmt!r}" + (f"; did you mean {hint[0]!r}?" if hint else
                                  f"; choose from {', '.join(FORMATS)} or all."))
            if fmt not in chosen:
                chosen.append(fmt)
    if not chosen:
        raise StudioError(f"Choose at least one export format: {', '.join(FORMATS)} or all.")
    return sorted(chosen, key=list(FORMATS).index)


def require_export_stack(formats: Sequence[str]) -> None:
    """Fail before any work when the backend is not TensorFlow or an exporter's package is missing."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise StudioError(f"Exporting needs the TensorFlow backend (this process runs {keras.backend.backend()}); "
                          "run it again with KERAS_BACKEND=tensorflow.")
    missing = sorted({module for fmt in formats for module in FORMATS[fmt].needs
                      if importlib.util.find_spec(module) is None})
    if missing:
        raise StudioError(f"Exporting {', '.join(formats)} needs {', '.join(missing)}: "
                          f"pip install {' '.join(PIP_NAMES[m] for m in missing)} (see requirements-train.txt).")


def export_run(run: RunDir, formats: Sequence[str], data_root: Path | str | None = None,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write each format into <run>/exports/, check its parity on held-out images (parity_part), merge parity.json.

    A format whose exporter fails, or a float format under FLOAT_AGREEMENT, is kept in the result with
    `passed: false` (and `error`), never dropped; `failed` lists them. `data_root` points at a moved dataset.
    """
    from core.results.evaluate import load_run_model

    formats = check_formats(formats)
    require_export_stack(formats)
    model = float32_model(load_run_model(run))
    exports_dir(run).mkdir(exist_ok=True)
    say = progress or (lambda message: None)
    part = parity_part(run)
    say(f"Decoding the {part} images for the parity check")
    images, labels = split_images(run, part, limit=PARITY_IMAGES, data_root=data_root)
    reference = _predict_keras(model, images)
    exporter = _Exporter(run, model, data_root)
    entries: dict[str, Any] = {}
    try:
        for fmt in formats:
            say(f"Exporting {fmt}")
            entries[fmt] = {**exporter.export_and_check(fmt, images, labels, reference), "checked_on": part}
            _merge_parity(run, {fmt: entries[fmt]})
    finally:
        exporter.close()
    return {"run_id": run.run_id, "exports_dir": str(exports_dir(run)), "formats": entries,
            "failed": [fmt for fmt, entry in entries.items() if entry.get("passed") is False]}


def _merge_parity(run: RunDir, entries: dict[str, Any]) -> None:
    write_json_atomic(exports_dir(run) / PARITY, {**read_parity(run), **entries})


class _Exporter:
    """The exporters of one run, sharing one traced SavedModel between the SavedModel and LiteRT formats."""

    def __init__(self, run: RunDir, model, data_root: Path | str | None):
        self.run, self.model, self.data_root = run, model, data_root
        self._saved_model: Path | None = None
        self._scratch: tempfile.TemporaryDirectory | None = None

    def export_and_check(self, fmt: str, images: np.ndarray, labels: np.ndarray,
                         reference: np.ndarray) -> dict[str, Any]:
        """Export one format and compare it with the Keras model's probabilities on `images`."""
        path = exports_dir(self.run) / FORMATS[fmt].filename
        entry: dict[str, Any] = {"format": fmt, "file": f"{EXPORTS}/{path.name}", "float": FORMATS[fmt].is_float,
                                 "created": _now()}
        try:
            started = time.perf_counter()
            getattr(self, f"_export_{fmt}")(path)
            entry["export_seconds"] = round(time.perf_counter() - started, 2)
            entry["bytes"] = _size(path)
            probs = predict_export(fmt, path, images)
        except StudioError:
            raise
        except Exception as err:  # a converter failing on one format should not lose the others
            entry.update(passed=False, error=_error_text(err))
            return entry
        entry.update(parity_numbers(probs, reference, labels))
        entry["required_agreement"] = FLOAT_AGREEMENT if FORMATS[fmt].is_float else None
        decided = entry["decisive_agreement"]
        entry["passed"] = bool(decided >= FLOAT_AGREEMENT) if FORMATS[fmt].is_float else True
        if not entry["passed"]:
            entry["error"] = (f"top-1 agrees with the Keras model on {decided:.1%} of the held-out images it "
                              f"decides (top two more than {TIE_MARGIN} apart), under the required "
                              f"{FLOAT_AGREEMENT:.0%}.")
        return entry

    # --- one method per format ------------------------------------------------------------------
    def _export_keras(self, path: Path) -> None:
        shutil.copyfile(self.run.file(MODEL), path)

    def _export_savedmodel(self, path: Path) -> None:
        _replace_tree(path, lambda tmp: self.model.export(str(tmp), format="tf_saved_model", verbose=False))
        self._saved_model = path

    def _export_onnx(self, path: Path) -> None:
        """tf2onnx over Keras' exported SavedModel (what `python -m tf2onnx.convert --saved-model` does).

        Not Keras' own `format="onnx"`: it converts a traced function and lists the function's captured
        constants (the mean/variance of the Normalization layer in keras.applications' EfficientNetB0-B7 and
        V2-S) as required graph inputs, so the .onnx cannot run. The SavedModel route freezes them.
        """
        import tensorflow as tf
        from tf2onnx import convert, tf_loader

        level = tf.get_logger().level
        tf.get_logger().setLevel("ERROR")  # tf2onnx freezes graphs through TF1 APIs that warn on every call
        try:
            graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
                str(self._saved_model_dir()), None, None, tag=["serve"], signatures=["serve"],
                return_tensors_to_rename=True)
            _replace_file(path, lambda tmp: convert.from_graph_def(
                graph_def, name=self.model.name, input_names=inputs, output_names=outputs,
                tensors_to_rename=renames, output_path=str(tmp)))
        finally:
            tf.get_logger().setLevel(level)

    def _export_tflite(self, path: Path) -> None:
        _replace_file(path, lambda tmp: tmp.write_bytes(self._convert()))

    def _export_tflite_fp16(self, path: Path) -> None:
        import tensorflow as tf

        _replace_file(path, lambda tmp: tmp.write_bytes(self._convert(
            optimizations=[tf.lite.Optimize.DEFAULT], supported_types=[tf.float16])))

    def _export_tflite_int8(self, path: Path) -> None:
        """Full-integer: int8 weights and activations, calibrated on training images; the input stays uint8
        (the model's own input dtype; its Rescaling layers and a QUANTIZE op sit inside) and the output float32
        probabilities, so the runtime feeds the same pixels as for every other format."""
        import tensorflow as tf

        calibration = representative_images(self.run, data_root=self.data_root)

        def representative_dataset():
            for image in calibration:
                yield [image[None]]

        _replace_file(path, lambda tmp: tmp.write_bytes(self._convert(
            optimizations=[tf.lite.Optimize.DEFAULT], representative_dataset=representative_dataset,
            supported_ops=[tf.lite.OpsSet.TFLITE_BUILTINS_INT8])))

    # --- LiteRT conversion ------------------------------------------------------------------------
    def _convert(self, supported_ops: list | None = None, supported_types: list | None = None, **options) -> bytes:
        """TFLiteConverter over Keras' exported SavedModel: the route Keras' own `format="litert"` takes
        (ExportArchive -> SavedModel -> from_saved_model), traced once here for all three LiteRT formats."""
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_saved_model(str(self._saved_model_dir()))
        # Builtin ops only (Keras adds SELECT_TF_OPS): a model needing TF ops could not run in ai-edge-litert,
        # so conversion should fail here rather than in the deployment.
        converter.target_spec.supported_ops = supported_ops or [tf.lite.OpsSet.TFLITE_BUILTINS]
        if supported_types:
            converter.target_spec.supported_types = supported_types
        for name, value in options.items():
            setattr(converter, name, value)
        return converter.convert()

    def _saved_model_dir(self) -> Path:
        if self._saved_model is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="studio-export-")
            self._saved_model = Path(self._scratch.name) / "savedmodel"
            self.model.export(str(self._saved_model), format="tf_saved_model", verbose=False)
        return self._saved_model

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()


def _replace_file(path: Path, write: Callable[[Path], Any]) -> None:
    """Write via a temporary name and rename, so a reader never sees half an export."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _replace_tree(path: Path, write: Callable[[Path], Any]) -> None:
    """Write a folder via a temporary name, then swap it in."""
    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _error_text(err: BaseException) -> str:
    """The exception's type and first line, short enough for parity.json and a UI message."""
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


# --- models, images and parity ------------------------------------------------------------------------
def float32_model(model):
    """The same network computing in float32: ONNX export needs a float32 policy, and a mixed-precision
    model (trained on a GPU) would otherwise carry float16 casts into every export."""
    import keras

    if not any(_is_mixed(layer.dtype_policy) for layer in _all_layers(model)):
        return model
    config = _float32_config(keras.saving.serialize_keras_object(model))
    clone = keras.saving.deserialize_keras_object(config, safe_mode=True)
    clone.set_weights(model.get_weights())
    return clone


def _all_layers(model) -> list:
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if hasattr(layer, "layers"):
            layers.extend(_all_layers(layer))
    return layers


def _is_mixed(policy: Any) -> bool:
    return str(getattr(policy, "name", policy)).startswith("mixed_")


def _float32_config(value: Any) -> Any:
    """A serialized model with every mixed_* dtype policy replaced by float32."""
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy" and _is_mixed(value.get("config", {}).get("name", "")):
            return {**value, "config": {**value["config"], "name": "float32"}}
        return {key: _float32_config(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    return "float32" if isinstance(value, str) and value in ("mixed_float16", "mixed_bfloat16") else value


# Held-out images a parity check compares on, at most (a seeded sample beyond): enough to see a 1% disagreement.
PARITY_IMAGES = 500


def parity_part(run: RunDir) -> str:
    """The split the parity check uses: validation when the run has one, else test. A run of the default recipe on
    a folder with train/ and test/ has no validation split (its head's L2 was chosen by cross-validation)."""
    split = run.read_split()
    for part in ("val", "test"):
        if split.get(part):
            return part
    raise StudioError(f"Run {run.run_id} has neither val nor test images in split.json; the export's parity check "
                      "needs held-out images.")


def split_images(run: RunDir, part: str, limit: int | None = None, seed: int = 0,
                 data_root: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images and labels of one saved split (a seeded sample of `limit` when given)."""
    from core.data.datasets import split_from_json
    from core.results.evaluate import run_image_size
    from core.data.loader import decode_cache

    root, parts = split_from_json(run.read_split(), Path(data_root) if data_root else None)
    samples = parts.get(part) or []
    if not samples:
        raise StudioError(f"Run {run.run_id} has no {part} images in split.json, which the export needs.")
    if limit is not None and len(samples) > limit:
        chosen = np.random.default_rng(seed).choice(len(samples), size=limit, replace=False)
        samples = [samples[i] for i in sorted(chosen)]
    missing = [s.path for s in samples if not (root / s.path).is_file()]
    if missing:
        raise StudioError(f"{root / missing[0]} is missing ({len(missing)} of the run's {part} images): "
                          "pass the dataset's current location (--data).")
    images = decode_cache([root / s.path for s in samples], run_image_size(run))
    return images, np.asarray([s.label for s in samples], dtype=np.int64)


def representative_images(run: RunDir, count: int = REPRESENTATIVE_IMAGES,
                          data_root: Path | str | None = None) -> np.ndarray:
    """int8 calibration images: a seeded sample of the run's training split (never validation or test)."""
    seed = int(run.read_config().get("seed", 0) or 0)
    return split_images(run, "train", limit=count, seed=seed, data_root=data_root)[0]


def _predict_keras(model, images: np.ndarray) -> np.ndarray:
    from core.network.model import predict_probabilities

    return predict_probabilities(model, images, batch_size=32)


def predict_export(fmt: str, path: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities from an export, each run the way its consumer runs it (bundle formats through core.serving.bundle)."""
    if FORMATS[fmt].serve:
        from core.serving.bundle import open_runner

        runner = open_runner(path)
        return np.concatenate([runner(images[i:i + 32]) for i in range(0, len(images), 32)]).astype(np.float64)
    if fmt == "keras":
        import keras

        return _predict_keras(keras.saving.load_model(path, compile=False, safe_mode=True), images)
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # keep a reference: its variables die with it
        return np.concatenate([loaded.serve(tf.constant(images[i:i + 32])).numpy()
                               for i in range(0, len(images), 32)]).astype(np.float64)
    raise StudioError(f"No parity runner for export format {fmt!r}.")


def parity_numbers(probs: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement with the Keras model, both accuracies, and the largest probability difference."""
    ours, theirs = probs.argmax(axis=1), reference.argmax(axis=1)
    top_two = np.sort(reference, axis=1)[:, -2:]
    decisive = (top_two[:, 1] - top_two[:, 0]) >= TIE_MARGIN
    export_accuracy = float(np.mean(ours == labels))
    keras_accuracy = float(np.mean(theirs == labels))
    return {"images": int(len(labels)), "agreement": float(np.mean(ours == theirs)),
            "disagreements": int(np.sum(ours != theirs)), "ties": int(np.sum(~decisive)),
            "decisive_agreement": float(np.mean(ours[decisive] == theirs[decisive])) if decisive.any() else 1.0,
            "keras_accuracy": keras_accuracy,
            "export_accuracy": export_accuracy, "accuracy_drop": keras_accuracy - export_accuracy,
            "max_abs_probability_difference": float(np.max(np.abs(probs - reference)))}


# --- demo bundle ------------------------------------------------------------------------------------------
def make_demo_bundle(run: RunDir, fmt: str | None = None, out_dir: Path | str | None = None,
                     data_root: Path | str | None = None) -> Path:
    """A folder (and a .zip beside it) holding everything the Evaluate and Classify pages need for this run,
    classifiable without TensorFlow. Exports `fmt` first when it has not passed its parity check yet."""
    from core.serving.bundle import BUNDLE_VERSION, DEFAULT_RUNTIME_FORMAT, MANIFEST, file_sha256

    fmt = fmt or DEFAULT_RUNTIME_FORMAT
    if fmt not in FORMATS or not FORMATS[fmt].serve:
        raise StudioError(f"A demo bundle needs a format that runs without TensorFlow: "
                          f"{', '.join(f for f, spec in FORMATS.items() if spec.serve)} (not {fmt!r}).")
    evaluation = run.read_evaluation()
    if evaluation is None:
        raise StudioError(f"Run {run.run_id} has no {EVALUATION}; evaluate it first (python -m core evaluate).")
    model_file = exports_dir(run) / FORMATS[fmt].filename
    parity = read_parity(run).get(fmt)
    if not model_file.is_file() or not parity or "agreement" not in parity:
        parity = export_run(run, [fmt], data_root=data_root)["formats"][fmt]
    if parity.get("passed") is False:
        raise StudioError(f"The {fmt} export of run {run.run_id} failed its parity check "
                          f"({parity.get('error', 'see exports/parity.json')}); bundle another format.")

    folder = Path(out_dir or exports_dir(run) / BUNDLES) / f"{run.run_id}-{fmt}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copyfile(model_file, folder / model_file.name)
    for name in (CLASSES, CONFIG, METRICS):
        if not run.file(name).is_file():
            raise StudioError(f"Run {run.run_id} has no {name}; a demo bundle needs it.")
        shutil.copyfile(run.file(name), folder / name)
    write_json_atomic(folder / EVALUATION, _bundle_evaluation(evaluation, folder, data_root))
    write_json_atomic(folder / PARITY, {fmt: parity})
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file()}
    write_json_atomic(folder / MANIFEST, _manifest(run, fmt, model_file.name, evaluation, parity, files,
                                                   BUNDLE_VERSION))
    _zip_folder(folder, folder.with_suffix(".zip"))
    return folder


def _manifest(run: RunDir, fmt: str, model_file: str, evaluation: dict[str, Any], parity: dict[str, Any],
              files: dict[str, Any], version: int) -> dict[str, Any]:
    config = run.read_config()
    return {
        "bundle_version": version,
        "run_id": run.run_id,
        "backbone": config.get("backbone"),
        "image_size": int(config.get("resolved", {}).get("image_size") or config.get("image_size")),
        "format": fmt,
        "model_file": model_file,
        "tta": bool(config.get("tta", False)),
        "classes": len(run.read_classes()),
        "metrics": {key: evaluation.get(key) for key in
                    ("split", "images", "accuracy", "top_k", "top_k_accuracy", "macro_auc")},
        "parity": {key: parity.get(key) for key in ("agreement", "export_accuracy", "keras_accuracy", "images")},
        "created": _now(),
        "files": files,
    }


def _bundle_evaluation(evaluation: dict[str, Any], folder: Path, data_root: Path | str | None) -> dict[str, Any]:
    """evaluation.json with the first mistakes' images as small JPEG thumbnails inside the bundle.

    Thumbnailed mistakes get `path` = mistakes/NN.jpg (relative to the bundle, whose folder load_demo_bundle
    puts in `root`) and keep `original_path`; mistakes whose image is gone keep their path and show no picture.
    """
    root = Path(data_root or evaluation.get("root") or ".")
    mistakes = []
    for i, mistake in enumerate(evaluation.get("mistakes", [])):
        thumbnail = f"mistakes/{i:02d}.jpg"
        if i < MISTAKE_THUMBNAILS and _write_thumbnail(root / mistake["path"], folder / thumbnail):
            mistake = {**mistake, "path": thumbnail, "original_path": mistake["path"]}
        mistakes.append(mistake)
    # Every scored photo's path would name the server's files and list photos the bundle does not carry: a demo's
    # confusion-matrix cells say so instead (pages/evaluate.cell_section).
    bundled = {key: value for key, value in evaluation.items() if key != "predictions"}
    return {**bundled, "root": ".", "mistakes": mistakes, "predictions_left_out": True}


def _write_thumbnail(source: Path, destination: Path) -> bool:
    """A JPEG no larger than THUMBNAIL_SIDE a side; False when the source cannot be read."""
    from PIL import Image

    from core.data.images import ImageError, read_image

    try:
        image = Image.fromarray(read_image(source, target_size=THUMBNAIL_SIDE))
    except ImageError:
        return False
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    destination.parent.mkdir(parents=True, exist_ok=True)
    image.save(destination, "JPEG", quality=85)
    return True


def _zip_folder(folder: Path, archive: Path) -> None:
    """Zip the bundle with its folder name on top, so unzipping gives one folder."""
    tmp = archive.with_name(f".{archive.name}.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                bundle.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    tmp.replace(archive)
