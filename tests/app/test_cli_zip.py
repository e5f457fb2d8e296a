"""`inspect` and `train --data` take a .zip too, unpacked through the upload's checks (issue 14.2)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from conftest import run_cli


def zip_of(folder: Path, archive: Path, per_class: int = 12) -> Path:
    with zipfile.ZipFile(archive, "w") as out:
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for image in sorted(class_dir.iterdir())[:per_class]:
                out.write(image, f"mini/{class_dir.name}/{image.name}")
    return archive


def test_inspect_and_train_take_a_zip_unpacked_once(tmp_path, flowers_dir):
    archive = zip_of(flowers_dir / "train", tmp_path / "mini.zip")
    env = {"STUDIO_WORKSPACE": str(tmp_path / "ws")}
    first = run_cli("inspect", str(archive), env=env, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads(first.stdout)
    assert len(report["classes"]) == 5 and "mini.zip: unpacked into" in first.stderr
    unpacked = list((tmp_path / "ws" / "datasets").iterdir())
    assert len(unpacked) == 1 and unpacked[0].name.startswith("mini-")
    trained = run_cli("--models-dir", str(tmp_path / "runs"), "train", "--data", str(archive), "--image-size", "64",
                      env=env, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    config = json.loads((Path(trained.stdout.strip().splitlines()[-1]) / "config.json").read_text())
    assert Path(config["data"]).parent == unpacked[0].parent  # the same folder, not unpacked twice
    assert list((tmp_path / "ws" / "datasets").iterdir()) == unpacked


def test_a_hostile_zip_on_the_command_line_is_refused_in_one_line(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("../../outside.png", b"x")
    result = run_cli("inspect", str(archive), env={"STUDIO_WORKSPACE": str(tmp_path / "ws")}, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "points outside its folder" in result.stderr
    assert not (tmp_path / "outside.png").exists()
