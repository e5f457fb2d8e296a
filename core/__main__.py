"""`python -m core ...`: the command-line face of the same core the app uses."""

from core.cli import main

raise SystemExit(main())
