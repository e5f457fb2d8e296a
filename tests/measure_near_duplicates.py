"""Near-duplicate groups on planted bursts (issue 30.4): `python tests/measure_near_duplicates.py [SHAPES_DIR]`.

flowers-mini as the health test lays it out (train/ + test/), plus 10 altered copies beside their originals (pairs)
and 4 bursts of 5 (an original and 4 altered copies of it, as a burst of shots would be), then the health check.
Prints, as JSON: bursts found whole (all 5 in one group), bursts split or missed, pair copies found, and groups
holding no planted photo (false alarms among flowers-mini's own photos). With SHAPES_DIR (a generated check set,
docs/benchmarks.md), its groups too: every one there is a false alarm (its photos are all distinct).
Not collected by pytest: a measurement, written down in docs/benchmarks.md."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent / "results")]

from test_health import CLASSES, altered_copy, planted_dataset  # noqa: E402

from core.results.health import health_report  # noqa: E402

FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "flowers-mini"


def plant_bursts(root: Path, per_burst: int = 5) -> list[set[str]]:
    """One burst in each of the first 4 classes: an original and per_burst - 1 altered copies of it."""
    bursts = []
    for index, name in enumerate(CLASSES[:4]):
        original = sorted((root / "train" / name).glob("*.jpg"))[30]
        members = {str(original.relative_to(root))}
        for k in range(per_burst - 1):
            shot = original.with_name(f"burst{k}-{original.name}")
            altered_copy(original, shot, seed=5000 + 10 * index + k)
            members.add(str(shot.relative_to(root)))
        bursts.append(members)
    return bursts


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="near-dups-") as tmp:
        root = Path(tmp) / "data"
        truth = planted_dataset(FLOWERS, root)
        bursts = plant_bursts(root)
        report = health_report(root, cache_dir=Path(tmp) / "cache")
        groups = [set(group["paths"]) for group in report["near_duplicates"]]
        planted = truth["duplicates"] | truth["leaks"] | set().union(*bursts)
        pairs_found = sum(any(copy in g for g in groups) for copy in truth["duplicates"])
        whole = sum(any(burst <= g and len(g) == len(burst) for g in groups) for burst in bursts)
        result = {"photos": report["photos"], "groups": len(groups), "sizes": sorted(len(g) for g in groups),
                  "bursts_whole": f"{whole} of {len(bursts)}",
                  "burst_members_found": sum(len(b & set().union(*groups)) for b in bursts),
                  "pair_copies_found": f"{pairs_found} of {len(truth['duplicates'])}",
                  "leaks_found": sum(any(leak in set(g['paths']) for g in report['leaks']) for leak in truth['leaks']),
                  "false_groups": sum(not (g & planted) for g in groups)}
        if len(sys.argv) > 1:
            shapes = health_report(sys.argv[1], cache_dir=Path(tmp) / "cache-shapes")
            result["shapes_photos"] = shapes["photos"]
            result["shapes_false_groups"] = len(shapes["near_duplicates"])
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
