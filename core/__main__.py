"""`python -m core ...`: the command-line face of the same core the app uses."""

# A trainer the app started lowers its own priority before anything else runs (core.base.cpushare).
from core.base.cpushare import apply_from_environment

apply_from_environment()

from core.cli import main  # noqa: E402 (after the priority, so threads started by imports get it too)

raise SystemExit(main())
