"""Messages every page shows the same way: an error as its sentence, visitor-given names kept literal, and the serve
profile's "train here instead"; and where the pages are (page_file), for links from either entrypoint. Streamlit only; no other pages/ module is imported here, so all of them may use it.

The other shared helpers live by concern: pages/_session.py (the app shell, this session's workspace and what it
remembers), pages/_loaders.py (cached loaders), pages/_model_choice.py (the run or demo bundle to look at) and
pages/_sidebar.py (the sidebar).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import streamlit as st

from core import StudioError
from core.serving import profile


def require_train_profile(what: str) -> None:
    """In the serve profile: say plainly why this page can't work here, point to the pages that do, stop."""
    if profile.is_train_profile():
        return
    st.info(profile.train_profile_message(what), icon=":material/info:")
    links = st.columns(4)
    links[0].page_link(page_file("evaluate"), label="Evaluate the demo", icon=":material/analytics:")
    links[1].page_link(page_file("classify"), label="Classify photos", icon=":material/image_search:")
    st.stop()


def literal_names(message: str, names: Iterable[str], folders: Iterable[Path] = ()) -> str:
    """A sentence from core, for st.error/st.markdown, with each visitor-given name in it (class, file, run)
    escaped by core.base.safetext.markdown_literal, so a name reads as written and never as a link, bold or math;
    each of `folders` (a dataset root) is named by its folder name, not by its path on the server."""
    import re

    from core.base.safetext import markdown_literal, plain

    message = plain(message)
    folders = [Path(f) for f in folders if Path(f).name]  # "/" would name nothing
    for folder in folders:
        message = message.replace(str(folder), folder.name)
    names = [*names, *(f.name for f in folders)]
    # Only names Markdown would act on need it; one pass, longest first, so no name is escaped twice.
    risky = sorted({plain(n) for n in names if n and markdown_literal(n) != plain(n)}, key=len, reverse=True)
    if not risky:
        return message
    return re.sub("|".join(map(re.escape, risky)), lambda m: markdown_literal(m.group()), message)


def show_error(err: Exception) -> None:
    """A StudioError as the sentence it is; anything else with its type, so it can be reported."""
    st.error(str(err) if isinstance(err, StudioError) else f"{type(err).__name__}: {err}")


# Where the pages are, for links between them from any entrypoint: the repository's streamlit_app.py, or
# train_demo/streamlit_app.py (a training demo on Community Cloud). Streamlit resolves a page's path against the folder
# of the script it was started with, so "pages/train.py" would point into train_demo/ there; an absolute path is the
# same page from both.
PAGES_DIR = Path(__file__).resolve().parent


def page_file(name: str) -> str:
    """The page `name` ("data", "train", ...) as st.Page, st.page_link and st.switch_page take it."""
    path = PAGES_DIR / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"no page {name!r} in {PAGES_DIR}")
    return str(path)
