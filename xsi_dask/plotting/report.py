"""A small self-contained HTML report: tables of formatted values and figures, paths relative to the report."""

from __future__ import annotations

import datetime as dt
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .formatting import format_value

__all__ = ["GENERATOR", "image_src", "is_our_report", "write_report"]

GENERATOR = "xsi_dask report"
"""The ``<meta name="generator">`` of every report written here (how a report of ours is told from another file)."""

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:90%;
vertical-align:top}th{font-weight:600;background:#f6f6f6}
figure{margin:0.5em 0 1.5em}figcaption{font-size:85%;color:#555}
img{max-width:100%;border:1px solid #eee}h2{border-bottom:1px solid #ddd}.note{color:#a00}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(rows: Mapping[str, Any]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(format_value(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def image_src(figure: str | Path, report: str | Path) -> str:
    """The ``src`` of ``figure`` in the HTML file ``report``: relative to the report's folder, URL-quoted.

    Both paths are made absolute against the working directory first, so a
    report written with a relative ``--out`` finds its figures wherever it is
    opened from (and wherever the folder is moved to, figures included).
    """
    rel = os.path.relpath(os.path.abspath(figure), os.path.dirname(os.path.abspath(report)))
    return quote(Path(rel).as_posix())


def is_our_report(path: str | Path) -> bool:
    """Whether ``path`` is an HTML report written by :func:`write_report` (its generator meta tag)."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(2048)
    except (OSError, UnicodeDecodeError):
        return False
    # reports of xsi_dask 0.1 carry no generator tag: their title says what they are
    return f"<meta name='generator' content='{GENERATOR}'>" in head or "<title>xsi_dask run: " in head


Section = tuple[str, Mapping[str, Any], Sequence[Path]] | tuple[str, Mapping[str, Any], Sequence[Path], Sequence[str]]
"""(heading, table, figures) or (heading, table, figures, notes): one section of :func:`write_report`."""


def write_report(out: str | Path, *, title: str, sections: Sequence[Section], subtitle: str = "",
                 links: Sequence[tuple[str, str | Path]] = ()) -> Path:
    """Write the HTML file ``out``: a title, links, then per section a heading, a table, figures and notes.

    Parameters
    ----------
    out : str or Path
        The report file (written to a temporary sibling, then renamed over).
    title : str
        Page title and heading.
    sections : sequence of (heading, table, figures) or (heading, table, figures, notes)
        ``table`` maps row names to values (numbers formatted by
        :func:`~xsi_dask.plotting.formatting.format_value`, never raw
        floats); ``figures`` are image files, referenced relative to
        ``out`` (:func:`image_src`); ``notes`` are sentences shown in red
        under the heading (what the reader must not miss).
    subtitle : str
        A line under the title.
    links : sequence of (text, file)
        Files shown as links under the subtitle (a Dask performance report),
        referenced relative to ``out`` like the figures.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    OSError
        The file cannot be written (the caller maps it to the package's error).
    """
    out = Path(out)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<meta name='generator' content='{GENERATOR}'>",
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1><p>{_esc(subtitle + ' · ' if subtitle else '')}{dt.datetime.now():%Y-%m-%d %H:%M}</p>",
    ]
    if links:
        parts.append("<p>" + " · ".join(f"<a href='{_esc(image_src(path, out))}'>{_esc(text)}</a>" for text, path in links)
                     + "</p>")
    for section in sections:
        heading, table, figures = section[:3]
        notes = section[3] if len(section) > 3 else ()
        parts.append(f"<h2>{_esc(heading)}</h2>")
        parts += [f"<p class='note'>{_esc(n)}</p>" for n in notes]
        if table:
            parts.append(_table(table))
        for fig in figures:
            name = Path(fig).name
            parts.append(f"<figure><img src='{_esc(image_src(fig, out))}' alt='{_esc(Path(fig).stem)}'>"
                         f"<figcaption>{_esc(name)}</figcaption></figure>")
    parts.append("</body></html>")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text("\n".join(parts), encoding="utf-8")
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
