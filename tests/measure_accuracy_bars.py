"""Measure the accuracy the tests' tiny recipes reach on flowers-mini over several seeds, and the bar each test
sets from it (mean - 3 sd, rounded down to 0.01): `python tests/measure_accuracy_bars.py [--seeds 0 1 2 3 4]`.

The bars in the tests (ACCURACY_BARS in tests/conftest.py) and the measured figures in docs/testing.md come from
this command; rerun it when the recipe changes. Each recipe is trained through the command line like a user would.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FLOWERS = REPO.parent / "shared" / "data" / "flowers-mini"
RECIPES = {
    # the CLI tests' run: the default recipe (exact head fit), 1 fine-tuning epoch, 96 px
    "tiny_96": ["--image-size", "96", "--head-epochs", "1", "--finetune-epochs", "1", "--batch-size", "32"],
    # the default recipe with no fine-tuning at 64 px (the trainer and data-parallel tests' size)
    "head_64": ["--image-size", "64", "--finetune-epochs", "0"],
}


def accuracy(recipe: list[str], seed: int, models: Path) -> float:
    result = subprocess.run([sys.executable, "-m", "core", "-q", "--models-dir", str(models), "train", "--data",
                             str(FLOWERS), *recipe, "--seed", str(seed)], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    run = Path(result.stdout.strip().splitlines()[-1])
    return json.loads((run / "evaluation.json").read_text())["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    args = parser.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as models:
        for name in args.recipes:
            scores = [accuracy(RECIPES[name], seed, Path(models)) for seed in args.seeds]
            mean, sd = statistics.mean(scores), statistics.stdev(scores)
            out[name] = {"seeds": args.seeds, "accuracy": scores, "mean": round(mean, 4), "sd": round(sd, 4),
                         "bar_mean_minus_3sd": math.floor((mean - 3 * sd) * 100) / 100}
            print(json.dumps({name: out[name]}), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
