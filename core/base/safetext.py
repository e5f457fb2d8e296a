"""Names from visitors (class folders, file names, run names) made safe to show and to export.

A name is data, not markup: pages show it through `st.text`/`st.code`, or inside Markdown only after `markdown_literal`
(which escapes every character Markdown, KaTeX or HTML would act on). Bidirectional control characters are removed
everywhere, so `photo\u202egpj.exe` cannot pose as `photoexe.jpg`. Spreadsheet cells that start like a formula
are neutralised (OWASP's CSV-injection advice), since a CSV from the app is opened in Excel by someone else.
"""

from __future__ import annotations

import re
import unicodedata

# Unicode bidi controls (embeddings, overrides, isolates, marks) and other invisible format characters that
# change how the surrounding text reads.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Characters Markdown, Streamlit's extensions (:emoji:, :red[...]), KaTeX ($) or HTML act on anywhere in a line.
# '-' and '.' only act at the start of a line (a list item, "1."), so they are escaped only there: a folder name
# such as "flowers-mini" stays readable in the Markdown source too.
MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+!|<>$~:&^])")
LINE_START = re.compile(r"^(\s*)(-|\d+(?=[.)]))")
DEFAULT_MAX_CHARS = 60


def plain(name: object) -> str:
    """The name as one line of visible text: bidi controls and other control characters removed."""
    text = str(name)
    return "".join(" " if ch in "\r\n\t" else ch for ch in text
                   if ch not in BIDI_CONTROLS and (unicodedata.category(ch) != "Cc" or ch in "\r\n\t"))


def shorten(name: object, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """`plain(name)`, cut in the middle with an ellipsis when longer than `max_chars` (both ends stay readable:
    the start says what it is, the end often holds the number or extension)."""
    text = plain(name)
    if len(text) <= max_chars:
        return text
    keep = max_chars - 1
    head = (keep + 1) // 2
    return text[:head] + "…" + text[len(text) - (keep - head):]


def markdown_literal(name: object, max_chars: int | None = None) -> str:
    """A name to put inside Markdown (st.markdown, captions, labels) so it shows exactly as written: every
    character Markdown, KaTeX ($) or HTML acts on is backslash-escaped."""
    text = shorten(name, max_chars) if max_chars else plain(name)
    escaped = MARKDOWN_SPECIALS.sub(r"\\\1", text)
    start = LINE_START.match(escaped)
    if start and start.group(2) == "-":
        return start.group(1) + "\\-" + escaped[start.end():]
    if start:  # "1. name" would start a numbered list: escape the dot (or parenthesis) after the number
        end = start.end()
        return escaped[:end] + "\\" + escaped[end:]
    return escaped


def csv_cell(value: object) -> object:
    """A value for a CSV another person will open in a spreadsheet: text starting like a formula gets a leading
    apostrophe, so Excel and LibreOffice show it instead of evaluating it. Numbers pass unchanged."""
    if isinstance(value, str):
        text = plain(value)
        return "'" + text if text.startswith(FORMULA_STARTS) else text
    return value
