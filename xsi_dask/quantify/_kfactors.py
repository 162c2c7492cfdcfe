"""Cliff-Lorimer k-factors from a YAML or CSV file."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from ..errors import InputFileNotFoundError, KFactorError

__all__ = ["read_kfactors"]

_KEY = re.compile(r"^[A-Z][a-z]?(_[A-Z][A-Za-z0-9]*)?$")  # "Fe" or "Fe_Ka", "Ba_Lb1", "U_M2N4"


def _value(raw, where: str, key: str) -> float:
    if isinstance(raw, bool):
        raise KFactorError(f"{where}: the k-factor of {key} is not a number: {raw!r}")
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise KFactorError(f"{where}: the k-factor of {key} is not a number: {raw!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise KFactorError(f"{where}: the k-factor of {key} must be a positive finite number; got {raw!r}")
    return v


def _key(raw, where: str) -> str:
    key = str(raw).strip()
    if not _KEY.match(key):
        raise KFactorError(f"{where}: {raw!r} is not an element ('Fe') or an X-ray line ('Fe_Ka')")
    return key


def _read_yaml(path: Path, text: str) -> dict[str, float]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        raise KFactorError(f"{path}{at}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if isinstance(data, dict) and set(data) == {"kfactors"}:
        data = data["kfactors"]
    if not isinstance(data, dict) or not data:
        raise KFactorError(f"{path}: expected a mapping of lines or elements to k-factors, e.g. '{{Fe_Ka: 1.0, Cr_Ka: 0.95}}'; "
                           f"got {type(data).__name__}")
    found: dict[str, list[int]] = {}
    for i, line in enumerate(text.splitlines()):
        for k in data:
            if re.match(rf"^\s*['\"]?{re.escape(str(k).strip())}['\"]?\s*:", line):
                found.setdefault(str(k).strip(), []).append(i + 1)
    twice = {k: n for k, n in found.items() if len(n) > 1}
    if twice:  # YAML keeps the last of a repeated key: refused, as in a CSV
        k, n = next(iter(twice.items()))
        raise KFactorError(f"{path} lines {', '.join(map(str, n))}: {k} is given {len(n)} times")
    lines = {k: n[0] for k, n in found.items()}
    out = {}
    for k, v in data.items():
        where = f"{path} line {lines[str(k).strip()]}" if str(k).strip() in lines else str(path)
        key = _key(k, where)
        out[key] = _value(v, where, key)
    return out


def _read_csv(path: Path, text: str) -> dict[str, float]:
    rows = list(csv.reader(line for line in text.splitlines()))
    numbered = [(i + 1, r) for i, r in enumerate(rows) if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if not numbered:
        raise KFactorError(f"{path}: empty; expected a header 'line,kfactor' and one row per line")
    n0, header = numbered[0]
    cols = [c.strip().lower() for c in header]
    key_col = next((c for c in ("line", "element") if c in cols), None)
    if key_col is None or "kfactor" not in cols or len(cols) != 2:
        raise KFactorError(f"{path} line {n0}: the header must be 'line,kfactor' (or 'element,kfactor'); got {header}")
    ik, iv = cols.index(key_col), cols.index("kfactor")
    out: dict[str, float] = {}
    for n, row in numbered[1:]:
        where = f"{path} line {n}"
        if len(row) != 2:
            raise KFactorError(f"{where}: expected 2 columns ({key_col},kfactor); got {len(row)}: {row}")
        key = _key(row[ik], where)
        if key in out:
            raise KFactorError(f"{where}: {key} is given twice")
        out[key] = _value(row[iv].strip(), where, key)
    if not out:
        raise KFactorError(f"{path}: a header but no k-factors")
    return out


def read_kfactors(path, *, lines=None) -> dict[str, float]:
    """Cliff-Lorimer k-factors from a YAML or CSV file.

    YAML: a mapping ``{Fe_Ka: 1.0, Cr_Ka: 0.95}`` keyed by X-ray line or by
    element (``{Fe: 1.0}``), optionally under a top-level ``kfactors:`` key.
    CSV: a header ``line,kfactor`` (or ``element,kfactor``) and one row per
    line; lines starting with ``#`` are comments. The k-factor convention is
    exspy's (see :func:`quantify`): C_A = k_A I_A / sum_B k_B I_B, only ratios
    matter.

    Parameters
    ----------
    path : str or Path
        ``.yaml``/``.yml`` or ``.csv``.
    lines : sequence of str, optional
        The lines the analysis needs ("Fe_Ka"): each must have a k-factor, by
        line or by its element.

    Returns
    -------
    dict
        Line or element -> k-factor (float > 0), as keyed in the file.

    Raises
    ------
    InputFileNotFoundError
        No such file.
    KFactorError
        An unknown extension, malformed YAML or CSV, an unknown column, a key
        that is neither an element nor a line, a repeated key, a value that is
        not a positive finite number, a line of ``lines`` without k-factor;
        the file and line number are named.

    References
    ----------
    Cliff, G. & Lorimer, G. W. (1975). J. Microsc. 103, 203-207,
    doi:10.1111/j.1365-2818.1975.tb03895.x.
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileNotFoundError(f"k-factor file not found: {p}")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        out = _read_yaml(p, text)
    elif suffix == ".csv":
        out = _read_csv(p, text)
    else:
        raise KFactorError(f"{p}: unknown k-factor file type {suffix!r}; use .yaml/.yml ({{Fe_Ka: 1.0}}) or .csv (line,kfactor)")
    if lines is not None:
        missing = [ln for ln in lines if ln not in out and ln.split("_")[0] not in out]
        if missing:
            raise KFactorError(f"{p}: no k-factor for {', '.join(missing)} (the file gives {sorted(out)})")
    return out
