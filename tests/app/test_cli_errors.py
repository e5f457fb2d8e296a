"""`python -m core train` with settings of the wrong type or out of range (issue 14): one `error: ...` line that
names the setting and what it allows, no traceback, no run folder left behind, and exit code 2 (bad input, issue
18: the same code argparse gives a command line it cannot read).

Every case fails in TrainConfig.validate, before TensorFlow is imported or a folder is made, so each subprocess
takes a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from core import StudioError
from core.cli import EXIT_BAD_INPUT
from core.base.config import RULES, SEED_MAX, TrainConfig

# (config file contents or None, extra flags, words the one error line must hold)
CASES = {
    "image_size text": ({"image_size": "big"}, [], ["image_size", "at least 32 and at most 1024", '"big"']),
    "head_epochs list": ({"head_epochs": [1]}, [], ["head_epochs", "at least 0 and at most 1000", "a list"]),
    "seed negative": (None, ["--seed", "-1"], ["seed", f"at most {SEED_MAX}", "not -1"]),
    "seed 2**40": (None, ["--seed", str(2**40)], ["seed", f"at least 0 and at most {SEED_MAX}"]),
    "seed in a file": ({"seed": 2.5}, [], ["seed", "a whole number"]),
    "threads negative": (None, ["--threads", "-1"], ["threads", "at least 1 and at most 256"]),
    "image size 0": (None, ["--image-size", "0"], ["image_size", "at least 32"]),
    "batch size huge": (None, ["--batch-size", "100000"], ["batch_size", "at most 4096"]),
    "learning rate infinite": ('{"head_lr": 1e400}', [], ["head_lr", "above 0 and below 1", "infinite"]),
    "learning rate NaN": (None, ["--finetune-lr", "nan"], ["finetune_lr", "above 0 and below 1", "NaN"]),
    "dropout 1": (None, ["--dropout", "1"], ["dropout", "at least 0 and below 1"]),
    "boolean as text": ({"tta": "yes"}, [], ["tta", "true or false"]),
    "choice unknown": (None, ["--xla", "maybe"], ["xla", "'auto', 'on', 'off'"]),
    "number as text": ({"val_fraction": "0.2"}, [], ["val_fraction", "a number"]),
    "fractions over 1": (None, ["--val-fraction", "0.6", "--test-fraction", "0.5"], ["below 1"]),
    "run name too long": (None, ["--run-name", "x" * 201], ["run_name", "at most 200 characters"]),
    "augmentation a number": ({"augmentation": 5}, [], ["augmentation", "a preset name or a list"]),
    "config not JSON": ("{head_epochs: 3", [], ["not valid JSON"]),
    "config a list": ("[1, 2]", [], ["must be a JSON object"]),
    "config nested too deeply": ("[" * 100_000 + "]" * 100_000, [], ["nested too deeply"]),
    "run id a path": (None, ["--run-id", "../escaped"], ["Run id", "plain folder name"]),
}


def config_file(tmp_path: Path, contents: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(contents if isinstance(contents, str) else json.dumps(contents), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_setting_is_one_error_line_and_leaves_no_run(case: str, tmp_path: Path) -> None:
    contents, flags, words = CASES[case]
    models = tmp_path / "models"
    args = ["--models-dir", str(models), "train", "--data", str(tmp_path / "photos"), *flags]
    if contents is not None:
        args += ["--config", str(config_file(tmp_path, contents))]
    result = run_cli(*args, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == EXIT_BAD_INPUT == 2, result.stderr
    assert "Traceback" not in result.stderr and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not models.exists() or not any(models.iterdir())
    assert not (tmp_path / "escaped").exists()


def test_a_value_argparse_cannot_read_is_its_usage_error(tmp_path: Path) -> None:
    result = run_cli("--models-dir", str(tmp_path / "models"), "train", "--data", str(tmp_path), "--seed", "abc",
                     timeout=120)
    assert result.returncode == 2 and "error: argument --seed: invalid int value: 'abc'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "models").exists()


def test_a_flag_overrides_a_file_value_before_anything_is_checked(tmp_path: Path) -> None:
    """The file's values and the flags are checked together: --data fills a file that has none."""
    path = config_file(tmp_path, {"seed": -1})
    result = run_cli("--models-dir", str(tmp_path / "models"), "train", "--config", str(path),
                     "--data", str(tmp_path / "photos"), "--seed", "7", "--head-epochs", "0", "--finetune-epochs", "0",
                     timeout=120)
    assert result.returncode == EXIT_BAD_INPUT and "at least one epoch" in result.stderr  # seed 7 passed; the epochs did not


def test_the_range_ends_are_allowed() -> None:
    for seed in (0, SEED_MAX):
        TrainConfig.from_dict({"data": "x", "seed": seed})
    TrainConfig.from_dict({"data": "x", "image_size": 32, "batch_size": 4096, "threads": 256, "head_lr": 0.5,
                           "dropout": 0.0, "weights": None, "finetune_epochs": None, "augmentation": []})
    with pytest.raises(StudioError, match="seed must be at least 0 and at most 4294967295"):
        TrainConfig.from_dict({"data": "x", "seed": SEED_MAX + 1})


def test_every_setting_has_a_rule() -> None:
    """A new TrainConfig field must say what it accepts, or validate() would let any value through."""
    assert set(RULES) == set(TrainConfig.__dataclass_fields__)


def test_bench_serve_without_its_folders_says_which_flag_is_missing(tmp_path: Path) -> None:
    result = run_cli("bench", "serve", "--demo", str(tmp_path))
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-2000:]
    assert "--venv" in result.stderr and "Traceback" not in result.stderr
