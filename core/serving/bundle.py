"""Classify from an exported model without TensorFlow: LiteRT or ONNX Runtime, plus demo bundles.

This module is the serve profile's model runtime. It imports numpy, Pillow/OpenCV (through core.data.images)
and one of `ai_edge_litert` / `onnxruntime`, never TensorFlow or Keras, so a hosted demo fits a 512 MiB
dyno. A demo bundle is one folder (or a zip of it) made by `core.serving.export.make_demo_bundle`:

    manifest.json     run id, backbone, image size, format, model file, metrics summary, sha256 of every file
    model.onnx | model_*.tflite
    classes.json, config.json, metrics.jsonl, evaluation.json (mistake paths point at mistakes/*.jpg)
    parity.json       how the export agreed with the Keras model on the run's validation images
    mistakes/*.jpg    small thumbnails of the most confident mistakes
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, Sequence

import numpy as np

from core import StudioError
from core.serving.predict import Classifier
from core.serving.sharing import RunnerPool, default_pool_size

MANIFEST = "manifest.json"
BUNDLE_VERSION = 1
# Files every bundle holds besides the model (named in the manifest) and the thumbnails.
BUNDLE_FILES = ("classes.json", "config.json", "metrics.jsonl", "evaluation.json")
RUNTIMES = {".onnx": "onnxruntime", ".tflite": "litert"}
# LiteRT float32: exact parity, and against ONNX Runtime on a B0 bundle it loaded faster, classified faster and
# peaked ~30 MiB lower, for a similar install size (docs/deploy.md). ONNX stays supported.
DEFAULT_RUNTIME_FORMAT = "tflite"
# Zip safety: a bundle holds a dozen files; the largest model (B7 float32) is ~260 MB.
MAX_ZIP_MEMBERS = 200
MAX_ZIP_BYTES = 1024 * 1024 * 1024
MAX_COMPRESSION_RATIO = 200  # far above what models/JSON/JPEGs reach, far below a zip bomb's


class ModelRunner(Protocol):
    """Runs an exported classifier: uint8 (N, S, S, 3) pixels in, (N, classes) probabilities out."""

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class OnnxRunner:
    """An ONNX file in an onnxruntime CPU session."""

    def __init__(self, path: Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise StudioError("Classifying with an .onnx model needs ONNX Runtime: "
                              "pip install onnxruntime (see requirements.txt).") from err
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # warnings about unused initialisers are noise for users
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise StudioError(f"{path}: ONNX Runtime cannot load this model ({_first_line(err)}); "
                              "export the run again.") from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: images})[0])


class LiteRTRunner:
    """A .tflite file in ai-edge-litert's Interpreter (float32, float16 or int8-quantised)."""

    def __init__(self, path: Path, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise StudioError("Classifying with a .tflite model needs LiteRT: pip install ai-edge-litert.") from err
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except Exception as err:  # the wrapper raises ValueError/RuntimeError with C++ text
            raise StudioError(f"{path}: LiteRT cannot load this model ({_first_line(err)}); "
                              "export the run again.") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = int(self.input["shape"][0])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if len(images) != self.batch:  # the batch dimension is dynamic (-1); resize only when it changes
            self.interpreter.resize_tensor_input(self.input["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self.batch = len(images)
        self.interpreter.set_tensor(self.input["index"], _quantise(images, self.input))
        self.interpreter.invoke()
        return _dequantise(self.interpreter.get_tensor(self.output["index"]), self.output)


def _quantise(images: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Our exports keep a uint8 input; a model quantised with an int8 input needs scale/zero-point applied."""
    dtype = np.dtype(detail["dtype"])
    if dtype == images.dtype:
        return images
    scale, zero_point = detail["quantization"]
    if dtype.kind in "iu" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(images / scale + zero_point), info.min, info.max).astype(dtype)
    return images.astype(dtype)


def _dequantise(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind in "iu" and scale:
        return (values.astype(np.float32) - zero_point) * scale
    return values


def open_runner(path: Path | str, threads: int | None = None) -> ModelRunner:
    """A runner for an .onnx or .tflite file, chosen by its extension."""
    path = Path(path)
    if not path.is_file():
        raise StudioError(f"{path}: model file not found.")
    runtime = RUNTIMES.get(path.suffix.lower())
    if runtime is None:
        raise StudioError(f"{path}: cannot classify with a {path.suffix or 'extensionless'} file without "
                          "TensorFlow; export the run as onnx or tflite.")
    return OnnxRunner(path, threads) if runtime == "onnxruntime" else LiteRTRunner(path, threads)


class BundleClassifier(Classifier):
    """core.serving.predict.Classifier's resizing, TTA and result format over an exported model instead of Keras.

    Subclassing (rather than copying) Classifier keeps preprocessing and output identical to the train
    profile's; only `__init__` (no Keras model) and `probabilities` (the runtime) differ. One image per
    inference by default: on CPU it is as fast per image as a batch, and a B0 at 224 px peaks ~150 MiB lower
    than with 10 images at once (the activations dominate a served process's memory).

    One classifier serves every visitor of a server at once: each call borrows a runner of its own from a pool
    (core.serving.sharing), `runners` of them at most (default: one per core, up to 4).
    """

    def __init__(self, model_path: Path | str, classes: Sequence[str], image_size: int, tta: bool = False,
                 threads: int | None = None, batch_size: int = 1, runners: int | None = None):
        self.run = None
        self.model_path = Path(model_path)
        self.runners: RunnerPool[ModelRunner] = RunnerPool(lambda: open_runner(self.model_path, threads),
                                                           runners or default_pool_size())
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.tta = bool(tta)
        self.batch_size = batch_size

    @classmethod
    def from_bundle(cls, folder: Path | str, threads: int | None = None) -> "BundleClassifier":
        """The classifier of a demo bundle folder (see load_demo_bundle for a checked, whole bundle)."""
        return load_demo_bundle(folder, threads=threads).classifier

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities for uint8 images, mirrored-TTA averaged like core.network.model.predict_probabilities."""
        probs = self._predict(images)
        if self.tta:
            probs = (probs + self._predict(images[:, :, ::-1])) / 2.0
        return probs

    def _predict(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        with self.runners.borrowed() as runner:
            parts = [runner(images[i:i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, len(self.classes)))


@dataclasses.dataclass
class DemoBundle:
    """A loaded, checked demo bundle: what the Evaluate and Classify pages need, without the dataset."""

    path: Path
    manifest: dict[str, Any]
    classes: list[str]
    config: dict[str, Any]
    evaluation: dict[str, Any]
    metrics: list[dict[str, Any]]
    parity: dict[str, Any]
    classifier: BundleClassifier

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id", self.path.name))


def load_demo_bundle(path: Path | str, extract_to: Path | str | None = None,
                     threads: int | None = None, runners: int | None = None) -> DemoBundle:
    """Check and load a bundle folder or .zip; a missing or damaged file raises StudioError naming it. `threads` per
    runner and `runners` at most (core.serving.sharing) serve visitors at once."""
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        path = bundle_root(extract_bundle_zip(path, extract_to) if extract_to else extracted_bundle(path))
    elif path.is_file():
        raise StudioError(f"{path}: not a demo bundle; give its folder or its .zip.")
    elif not path.is_dir():
        raise StudioError(f"{path}: no such demo bundle folder or zip.")
    manifest = _read_json(path, MANIFEST)
    if not isinstance(manifest, dict) or "model_file" not in manifest or "image_size" not in manifest:
        raise StudioError(f"{path / MANIFEST}: not a demo bundle manifest (no model_file/image_size); "
                          "make the bundle again with `python -m core export RUN --bundle`.")
    if int(manifest.get("bundle_version", 0)) > BUNDLE_VERSION:
        raise StudioError(f"{path}: bundle version {manifest['bundle_version']} is newer than this app reads "
                          f"({BUNDLE_VERSION}); update the app.")
    _check_files(path, manifest)
    classes = _read_json(path, "classes.json")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise StudioError(f"{path / 'classes.json'}: expected a non-empty list of class names.")
    evaluation = _read_json(path, "evaluation.json")
    if not isinstance(evaluation, dict):
        raise StudioError(f"{path / 'evaluation.json'}: expected a JSON object.")
    evaluation["root"] = str(path.resolve())  # thumbnails are relative to the bundle, wherever it is now
    classifier = BundleClassifier(path / manifest["model_file"], classes, int(manifest["image_size"]),
                                  tta=bool(manifest.get("tta", False)), threads=threads, runners=runners)
    return DemoBundle(path=path, manifest=manifest, classes=classes, config=_read_json(path, "config.json"),
                      evaluation=evaluation, metrics=_read_jsonl(path, "metrics.jsonl"),
                      parity=_read_json(path, "parity.json", required=False) or {}, classifier=classifier)


def _check_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists with its recorded size and sha256 (catches truncated copies)."""
    files = manifest.get("files") or {}
    for name in (*BUNDLE_FILES, manifest["model_file"]):
        if name not in files and not (folder / name).is_file():
            raise StudioError(f"{folder / name}: missing from the demo bundle; make the bundle again.")
    for name, expected in files.items():
        target = _inside(folder, name)
        if not target.is_file():
            raise StudioError(f"{target}: missing from the demo bundle; make the bundle again.")
        if target.stat().st_size != expected.get("bytes", target.stat().st_size) \
                or ("sha256" in expected and file_sha256(target) != expected["sha256"]):
            raise StudioError(f"{target}: damaged (its size or checksum differs from {MANIFEST}); "
                              "copy or make the bundle again.")


def _inside(folder: Path, name: str) -> Path:
    """`folder/name`, refusing names that climb out of the folder."""
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise StudioError(f"{folder / MANIFEST}: file name {name!r} points outside the bundle.")
    return folder / relative


def _read_json(folder: Path, name: str, required: bool = True) -> Any:
    path = folder / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not required:
            return None
        raise StudioError(f"{path}: missing from the demo bundle; make the bundle again.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StudioError(f"{path}: not valid JSON ({_first_line(err)}); make the bundle again.") from None


def _read_jsonl(folder: Path, name: str) -> list[dict[str, Any]]:
    path = folder / name
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except FileNotFoundError:
        raise StudioError(f"{path}: missing from the demo bundle; make the bundle again.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StudioError(f"{path}: a line is not valid JSON ({_first_line(err)}).") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_bundle_zip(archive: Path | str, target: Path | str | None = None) -> Path:
    """Extract a bundle zip into `target` (default: a new temporary folder), refusing unsafe members.

    Refused: absolute names, `..`, links and devices, more than MAX_ZIP_MEMBERS files, more than
    MAX_ZIP_BYTES in all, or a member that inflates more than MAX_COMPRESSION_RATIO times (a zip bomb).
    Sizes are counted while writing, so a header that lies about a size does not get past the cap.
    """
    archive = Path(archive)
    target = Path(target) if target else Path(tempfile.mkdtemp(prefix="studio-bundle-"))
    target.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            if len(members) > MAX_ZIP_MEMBERS:
                raise StudioError(f"{archive}: {len(members)} files is more than a demo bundle holds "
                                  f"({MAX_ZIP_MEMBERS} at most).")
            if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                raise StudioError(f"{archive}: unpacks to more than {MAX_ZIP_BYTES >> 20} MiB; not a demo bundle.")
            written = 0
            for member in members:
                destination = _member_destination(archive, target, member)
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                written += _copy_capped(bundle, member, destination, MAX_ZIP_BYTES - written, archive)
    except zipfile.BadZipFile as err:
        raise StudioError(f"{archive}: damaged zip file ({err}); download or make the bundle again.") from None
    return target


def extracted_bundle(archive: Path | str) -> Path:
    """The zip extracted once into a cache folder named by its content hash (a Streamlit rerun reuses it).

    Extracted beside the final name and renamed into place, so two processes never see half a folder.
    """
    archive = Path(archive)
    cache = Path(os.environ.get("STUDIO_BUNDLE_CACHE") or Path(tempfile.gettempdir()) / "studio-bundles")
    target = cache / f"{archive.stem}-{file_sha256(archive)[:16]}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache))
    try:
        extract_bundle_zip(archive, partial)
        partial.rename(target)
    except OSError:
        if not target.is_dir():  # not a lost race with another process: a real failure
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _member_destination(archive: Path, target: Path, member: zipfile.ZipInfo) -> Path:
    """Where a zip member may go, or StudioError when it would escape `target` or is not a plain file."""
    name = member.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        raise StudioError(f"{archive}: member {member.filename!r} points outside the bundle folder; refusing it.")
    kind = stat.S_IFMT(member.external_attr >> 16)  # 0 when the zip tool stored no Unix file type
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise StudioError(f"{archive}: member {member.filename!r} is a link or device, not a file; refusing it.")
    destination = (target / name).resolve()
    if not destination.is_relative_to(target.resolve()):
        raise StudioError(f"{archive}: member {member.filename!r} points outside the bundle folder; refusing it.")
    if member.compress_size and member.file_size / member.compress_size > MAX_COMPRESSION_RATIO:
        raise StudioError(f"{archive}: member {member.filename!r} inflates {member.file_size // member.compress_size}"
                          "-fold, like a zip bomb; refusing it.")
    return destination


def _copy_capped(bundle: zipfile.ZipFile, member: zipfile.ZipInfo, destination: Path, budget: int,
                 archive: Path) -> int:
    """Copy one member, stopping as soon as it passes its declared size or the remaining budget."""
    limit = min(member.file_size, budget)
    copied = 0
    with bundle.open(member) as source, open(destination, "wb") as out:
        while chunk := source.read(1 << 20):
            copied += len(chunk)
            if copied > limit:
                raise StudioError(f"{archive}: member {member.filename!r} is larger than its header says; "
                                  "refusing the zip.")
            out.write(chunk)
    return copied


def bundle_root(folder: Path) -> Path:
    """The folder holding manifest.json: `folder` itself, or its single top-level subfolder (zips of a folder)."""
    if (folder / MANIFEST).is_file():
        return folder
    children = [c for c in folder.iterdir() if not c.name.startswith((".", "__MACOSX"))]
    if len(children) == 1 and (children[0] / MANIFEST).is_file():
        return children[0]
    raise StudioError(f"{folder}: no {MANIFEST} found; this is not a demo bundle.")


def find_bundles(folder: Path | str) -> list[Path]:
    """Bundle folders and zips directly inside `folder` (e.g. a deployment's demo/ folder), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir()
             if (p.is_dir() and (p / MANIFEST).is_file()) or (p.suffix.lower() == ".zip" and p.is_file())]
    return sorted(found)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]


__all__ = ["BundleClassifier", "DemoBundle", "LiteRTRunner", "OnnxRunner", "bundle_root", "extract_bundle_zip",
           "find_bundles", "load_demo_bundle", "open_runner", "DEFAULT_RUNTIME_FORMAT"]
