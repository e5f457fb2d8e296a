"""EfficientNet Studio: routes to the pages (in workflow order) and draws the shared sidebar (pages/_app.py)."""

from pages._app import run_app

run_app()
