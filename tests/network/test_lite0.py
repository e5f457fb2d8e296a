"""Tests for core.network.lite0: converted ImageNet weights classify real photos, and the .pth reader is safe."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator

import cv2
import keras
import numpy as np
import pytest
from conftest import IN_CI
import skimage.data

from core.network import lite0

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


def imagenet_input(name: str) -> np.ndarray:
    """A skimage sample photo as a (1, 224, 224, 3) float32 RGB batch in 0..255."""
    image = getattr(skimage.data, name)()
    return cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)[None]


def predict(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    """Class probabilities for a batch of one, in inference mode."""
    # predict() compiles the whole graph once; op-by-op eager calls are very slow on JAX.
    return np.asarray(model.predict(batch, verbose=0))[0]


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """A fresh KERAS_HOME for this module, so no user cache is read or written."""
    home = tmp_path_factory.mktemp("keras_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def conversion(keras_home: pathlib.Path) -> tuple[pathlib.Path, str, float]:
    """Convert once for the module: (cache path, what went to stderr, seconds taken)."""
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        path = lite0.lite0_imagenet_weights_path()
    return path, err.getvalue(), time.perf_counter() - start


@pytest.fixture(scope="module")
def imagenet_model(conversion: tuple[pathlib.Path, str, float]) -> keras.Model:
    """The 1000-class Lite0 with converted ImageNet weights."""
    return lite0.build_efficientnet_lite0()


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    """The raw .pth tensors, read by the restricted reader."""
    return lite0.load_torch_state_dict(lite0.lite0_pth_path())


def test_conversion_is_cached_under_keras_home(conversion: tuple[pathlib.Path, str, float], keras_home: pathlib.Path) -> None:
    path, stderr, seconds = conversion
    assert path == keras_home / "models" / "efficientnet_lite0_imagenet.weights.h5"
    assert path.is_file()
    assert stderr.count("\n") == 1
    assert stderr.startswith("Converting EfficientNet-Lite0 ImageNet weights from ")
    assert str(lite0.lite0_pth_path()) in stderr and str(path) in stderr
    print(f"conversion took {seconds:.2f}s")
    # Second call: cache hit, silent, and no temp files left behind.
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert lite0.lite0_imagenet_weights_path() == path
    assert err.getvalue() == ""
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_state_dict_has_expected_tensors(state_dict: dict[str, np.ndarray]) -> None:
    assert len(state_dict) == 296
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert "_blocks.0._expand_conv.weight" not in state_dict  # stage 1 has expand ratio 1
    assert state_dict["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)


@pytest.mark.parametrize(("image", "expected"), [("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)])
def test_imagenet_top1(imagenet_model: keras.Model, image: str, expected: set[int]) -> None:
    probs = predict(imagenet_model, imagenet_input(image))
    top5 = [int(i) for i in np.argsort(-probs)[:5]]
    print(f"{keras.backend.backend()} {image} top5 {top5}")
    assert top5[0] in expected, top5


def test_cat_probability_mass(imagenet_model: keras.Model) -> None:
    # Correct weights put ~0.95 on the cat classes; the threshold catches subtler layout bugs below.
    probs = predict(imagenet_model, imagenet_input("chelsea"))
    assert probs[sorted(CAT_CLASSES)].sum() > 0.9


def _reshape_instead_of_transpose(w: np.ndarray) -> np.ndarray:
    """A classic conversion bug: same target shape, scrambled values."""
    return w.reshape(w.shape[2], w.shape[3], w.shape[1], w.shape[0])


def _swap_kernel_hw(w: np.ndarray) -> np.ndarray:
    """A subtle conversion bug: kernel rows and columns swapped (only the 3x3 stem is affected)."""
    return np.transpose(w, (3, 2, 1, 0))


def test_wrong_conv_layout_is_detected(conversion: object, state_dict: dict[str, np.ndarray]) -> None:
    model = lite0.build_efficientnet_lite0()  # cheaper than a random init on JAX; overwritten below
    batch = imagenet_input("chelsea")
    lite0.assign_torch_weights(model, state_dict, conv_fn=_reshape_instead_of_transpose)
    assert int(np.argmax(predict(model, batch))) not in CAT_CLASSES
    lite0.assign_torch_weights(model, state_dict, conv_fn=_swap_kernel_hw)
    # Still ranks a cat first, but test_cat_probability_mass's threshold rejects it.
    assert predict(model, batch)[sorted(CAT_CLASSES)].sum() < 0.9


def test_shape_mismatch_raises(conversion: object, state_dict: dict[str, np.ndarray]) -> None:
    model = lite0.build_efficientnet_lite0()
    with pytest.raises(ValueError, match="stem_conv"):
        lite0.assign_torch_weights(model, state_dict, conv_fn=lambda w: w)  # OIHW left untransposed
    extra = dict(state_dict, **{"_blocks.16._bn1.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="unmapped"):
        lite0.assign_torch_weights(model, extra)
    missing = {k: v for k, v in state_dict.items() if k != "_blocks.3._bn2.running_var"}
    with pytest.raises(ValueError, match="missing"):
        lite0.assign_torch_weights(model, missing)


class _Evil:
    """Pickles to a call of os.system, which a safe reader must never make."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _legacy_file(header_first: object, state: object) -> bytes:
    """Bytes of a legacy-format .pth whose first pickle and state-dict pickle are given."""
    parts = [header_first, 1001, {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, state, []]
    return b"".join(pickle.dumps(p, protocol=2) for p in parts)


@pytest.mark.parametrize("where", ["legacy-header", "legacy-state", "zip"])
def test_forbidden_global_is_rejected(tmp_path: pathlib.Path, where: str) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil(marker)
    path = tmp_path / "evil.pth"
    if where == "legacy-header":
        path.write_bytes(_legacy_file(evil, {}))
    elif where == "legacy-state":
        path.write_bytes(_legacy_file(0x1950A86A20F9469CFC6C, evil))
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", pickle.dumps(evil, protocol=2))
    with pytest.raises(ValueError, match=r"Cannot read PyTorch weights file .*evil\.pth.*forbidden global"):
        lite0.load_torch_state_dict(path)
    assert not marker.exists()


def test_truncated_file_is_rejected(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(lite0.lite0_pth_path().read_bytes()[:1_000_000])
    with pytest.raises(ValueError, match=r"Cannot read PyTorch weights file .*truncated\.pth"):
        lite0.load_torch_state_dict(path)


def test_zip_format_reads_the_same_tensors(tmp_path: pathlib.Path, state_dict: dict[str, np.ndarray]) -> None:
    # Repack the legacy file as torch's zip layout: <dir>/data.pkl plus one file per storage.
    with open(lite0.lite0_pth_path(), "rb") as f:
        state_pickle, raw = lite0._read_legacy_parts(f)
    path = tmp_path / "repacked.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", state_pickle)
        zf.writestr("archive/byteorder", "little")
        for key, data in raw.items():
            zf.writestr(f"archive/data/{key}", data)
    repacked = lite0.load_torch_state_dict(path)
    assert repacked.keys() == state_dict.keys()
    assert all(np.array_equal(repacked[k], state_dict[k]) for k in state_dict)


def test_layer_names_follow_keras_efficientnet(imagenet_model: keras.Model) -> None:
    model = imagenet_model
    names = {layer.name for layer in model.layers}
    for expected in ["rescaling", "stem_conv", "stem_bn", "stem_activation", "block1a_dwconv", "block1a_project_bn",
                     "block2a_expand_conv", "block2b_add", "block6d_project_bn", "block7a_project_conv",
                     "top_conv", "top_bn", "top_activation", "avg_pool", "top_dropout", "predictions"]:
        assert expected in names
    assert "block1a_expand_conv" not in names
    assert len({n[:7] for n in names if n.startswith("block")}) == 16
    # Published Lite0 size: 4,652,008 trainable parameters (BN moving statistics come on top).
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 4_652_008


def test_input_size_limits(conversion: object) -> None:
    model = lite0.build_efficientnet_lite0(include_top=False, input_shape=(32, 32, 3))
    assert model.output_shape == (None, 1, 1, 1280)
    with pytest.raises(ValueError, match="32"):
        lite0.build_efficientnet_lite0(weights=None, input_shape=(31, 64, 3))


def test_random_init_without_weights() -> None:
    # Loaded models start from cheap zeros; weights=None must still get a trainable random init.
    model = lite0.build_efficientnet_lite0(weights=None, include_top=False, input_shape=(32, 32, 3))
    assert 0.05 < float(np.std(model.get_layer("stem_conv").get_weights()[0])) < 1.0


def test_headless_small_input_loads_weights(imagenet_model: keras.Model) -> None:
    model = lite0.build_efficientnet_lite0(include_top=False, pooling="avg", input_shape=(96, 96, 3))
    assert model.output_shape == (None, 1280)
    assert "predictions" not in {layer.name for layer in model.layers}
    for name in ["stem_conv", "block4b_dwconv", "block7a_project_bn", "top_bn"]:
        for got, want in zip(model.get_layer(name).get_weights(), imagenet_model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)
    features = model.predict(imagenet_input("chelsea")[:, :96, :96], verbose=0)
    assert features.shape == (1, 1280) and np.isfinite(features).all()


_JAX_SCRIPT = """
import json
import cv2, numpy as np, skimage.data, keras
from core.network import lite0
names = ("chelsea", "coffee")
x = np.stack([cv2.resize(getattr(skimage.data, n)(), (224, 224), interpolation=cv2.INTER_AREA) for n in names])
# predict() compiles the whole graph once; op-by-op eager calls are much slower on JAX.
probs = lite0.build_efficientnet_lite0().predict(x.astype("float32"), verbose=0)
out = {n: [int(i) for i in np.argsort(-p)[:5]] for n, p in zip(names, probs)}
print(json.dumps(dict(out, backend=keras.backend.backend())))
"""


def test_jax_backend_ranks_cat_first(conversion: tuple[pathlib.Path, str, float], keras_home: pathlib.Path) -> None:
    if importlib.util.find_spec("jax") is None:
        if IN_CI:
            pytest.fail("jax is not importable, but CI must run the JAX backend test")
        pytest.skip("jax is not importable")
    # The backend is fixed at import time, so JAX runs in a child process; it reuses the TF-written cache.
    env = dict(os.environ, KERAS_BACKEND="jax", KERAS_HOME=str(keras_home),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _JAX_SCRIPT], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"jax top5 {result}")
    assert result["backend"] == "jax"
    assert "Converting" not in done.stderr  # the cached file was reused across backends
    assert result["chelsea"][0] in CAT_CLASSES, result
    assert result["coffee"][0] in COFFEE_CLASSES, result
