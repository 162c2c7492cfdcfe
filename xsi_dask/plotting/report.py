"""A small self-contained HTML report of a run: figures, parameters, timings."""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path
from typing import Any

__all__ = ["write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:90%}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}h2{border-bottom:1px solid #ddd}
"""


def _table(rows: dict[str, Any]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def write_report(out: Path, *, title: str, sections: list[tuple[str, dict[str, Any], list[Path]]]) -> Path:
    """Write ``out`` (HTML) with one section per (heading, key/value table, figures)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>{dt.datetime.now():%Y-%m-%d %H:%M}</p>"]
    for heading, table, figures in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if table:
            parts.append(_table(table))
        for fig in figures:
            rel = Path(fig).relative_to(out.parent) if Path(fig).is_absolute() else Path(fig)
            parts.append(f"<img src='{html.escape(str(rel))}' alt='{html.escape(Path(fig).stem)}'>")
    parts.append("</body></html>")
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(out)
    return out
