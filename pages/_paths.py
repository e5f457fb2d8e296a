"""Where the pages are, for links between them from any entrypoint: the repository's streamlit_app.py, or
train_demo/streamlit_app.py (a training demo on Community Cloud, whose folder holds its own requirements file).

Streamlit resolves a page's path against the folder of the script it was started with, so "pages/train.py" would
point into train_demo/ there; an absolute path is the same page from both.
"""

from __future__ import annotations

from pathlib import Path

PAGES_DIR = Path(__file__).resolve().parent


def page_file(name: str) -> str:
    """The page `name` ("data", "train", ...) as st.Page, st.page_link and st.switch_page take it."""
    path = PAGES_DIR / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"no page {name!r} in {PAGES_DIR}")
    return str(path)
