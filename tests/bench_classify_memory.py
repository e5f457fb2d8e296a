"""Server-side peak memory of classifying six 7000x7000 JPEGs (issue 14's probe): the old Classify path against the
budgeted one, each in a fresh interpreter, side by side.

    .venv/bin/python -m tests.bench_classify_memory                   # decoding and resizing only, no model
    .venv/bin/python -m tests.bench_classify_memory --run models/RUN  # plus a real model: classify and heatmaps

old: what pages/classify.py did before: every upload decoded at full size (core.data.images.decode_image) and kept, the
     model fed `classify_arrays` (which resizes), heatmaps computed on and overlaid over the full-size photo.
new: core.serving.predict.decode_uploads: each JPEG decoded at reduced DCT scale straight to the model's size plus a 384 px
     preview, heatmaps from the model-size input.
Peak RSS is each child's own VmHWM; Streamlit's own encoding of the shown images is not included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTOS, SIDE, DETAILED = 6, 7000, 12


def write_photos(folder: Path, count: int = PHOTOS, side: int = SIDE) -> list[Path]:
    """Smooth photo-like JPEGs (about 1 MB each, like the probe's 768 KB ones), distinct per index."""
    import numpy as np
    from PIL import Image

    paths = []
    for i in range(count):
        colours = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        path = folder / f"IMG_{i:04d}.jpg"
        Image.fromarray(colours).resize((side, side), Image.BILINEAR).save(path, format="JPEG", quality=80)
        paths.append(path)
    return paths


def peak_mb() -> float:
    """VmHWM, this process image's peak (ru_maxrss would start at the parent's size after a vfork exec)."""
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024


def child(how: str, photos: list[Path], run: str | None, size: int) -> dict:
    """One measurement in this (fresh) process: the baseline after imports and model load, then the peak."""
    import numpy as np

    from core.data.images import decode_image, resize_for_model
    from core.serving.predict import decode_uploads

    classifier = None
    if run:
        from core.results.cam import heatmap_for
        from core.serving.predict import Classifier
        from core.base.runs import RunDir

        classifier = Classifier(RunDir(run))
        size = classifier.image_size
        # Warm up outside the measurement: the first call at a batch size sets up ~280 MB in TensorFlow, once per
        # server and batch size, whatever the photos; the measurement is about the photos.
        blank = np.zeros((size, size, 3), np.uint8)
        classifier.classify_arrays([blank] * len(photos))
        heatmap_for(classifier.model, blank, 0, size)
    uploads = [_Upload(p.name, p.read_bytes()) for p in photos]  # what Streamlit already holds in memory
    baseline = peak_mb()
    started = time.perf_counter()
    if how == "old":
        images = [decode_image(u.getvalue(), u.name) for u in uploads]
        if classifier:
            results = classifier.classify_arrays(images, top_k=3)
            for image, top in list(zip(images, results))[:DETAILED]:
                heatmap_for(classifier.model, image, classifier.classes.index(top[0]["class"]), size)
        else:
            [resize_for_model(image, size) for image in images]
    else:
        batch = decode_uploads(uploads, size, thumbnails=DETAILED)
        assert not batch.problems, batch.problems
        inputs = [item.photo.model_input for item in batch.photos]
        if classifier:
            results = classifier.classify_arrays(inputs, top_k=3)
            for image, top in list(zip(inputs, results))[:DETAILED]:
                heatmap_for(classifier.model, image, classifier.classes.index(top[0]["class"]), size)
    return {"path": how, "baseline_mb": round(baseline, 1), "peak_mb": round(peak_mb(), 1),
            "growth_mb": round(peak_mb() - baseline, 1), "seconds": round(time.perf_counter() - started, 2),
            "model": bool(run), "size": size}


class _Upload:
    def __init__(self, name: str, data: bytes):
        self.name, self._data = name, data

    def getvalue(self) -> bytes:
        return self._data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run folder whose model classifies (and draws heatmaps); none: decode only")
    parser.add_argument("--size", type=int, default=224, help="model input size without --run (default 224)")
    parser.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--photos", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, [Path(p) for p in args.photos], args.run, args.size)))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        photos = write_photos(Path(folder))
        sizes = sorted({p.stat().st_size for p in photos})
        print(f"{PHOTOS} JPEGs of {SIDE}x{SIDE}, {sizes[0] / 1024:.0f}-{sizes[-1] / 1024:.0f} KB each; "
              f"{'model ' + args.run if args.run else 'no model (decode + resize only)'}")
        rows = []
        for how in ("old", "new"):
            command = [sys.executable, "-m", "tests.bench_classify_memory", "--child", how, "--size", str(args.size),
                       "--photos", *map(str, photos)] + (["--run", args.run] if args.run else [])
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                print(f"{how}: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                return 1
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| path | baseline MB | peak RSS MB | growth MB | seconds |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['path']} | {row['baseline_mb']:,.0f} | {row['peak_mb']:,.0f} | {row['growth_mb']:,.0f} | "
              f"{row['seconds']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
