"""How the suite reads the CI variable (issue 19): a missing prerequisite must fail on any CI service."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ci_is_read_the_way_ci_services_spell_it():
    """Issue 19: CI=1, CI=TRUE and CI=yes make a missing prerequisite a failure too, not only CI=true."""
    import subprocess
    import sys

    code = "import sys; sys.path.insert(0, 'tests'); import conftest; print(conftest.IN_CI)"
    for value, expected in (("true", "True"), ("1", "True"), ("TRUE", "True"), ("yes", "True"), ("", "False"),
                            ("0", "False"), ("false", "False")):
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                             env={"CI": value, "PATH": "/usr/bin:/bin"})
        assert out.stdout.strip() == expected, (value, out.stdout, out.stderr[-500:])
