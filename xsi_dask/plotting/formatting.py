"""Numbers as a report shows them: a few significant digits, thousands separators, units, powers of ten.

A report that prints ``0.0002842200919985771`` or ``638489.4953203215`` makes
its reader count digits; these helpers give ``2.842 × 10⁻⁴`` and
``6.385 × 10⁵``, counts as ``949,769`` and durations as ``2 min 05 s``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = ["as_number", "format_number", "format_seconds", "format_value"]

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_DASH = "—"


def as_number(value: Any) -> float | None:
    """``value`` as a float, or None where it is None, a bool or no number (an attribute a report may lack)."""
    try:
        return None if value is None or isinstance(value, (bool, np.bool_)) else float(value)
    except (TypeError, ValueError):
        return None


def _strip(text: str) -> str:
    """Drop trailing zeros after a decimal point (and the point itself)."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_number(x: Any, unit: str = "", *, sig: int = 4) -> str:
    """``x`` with ``sig`` significant digits and its unit, for a reader.

    Integers are shown exactly with thousands separators (``949,769``).
    Reals of magnitude in [1e-3, 1e5) are shown in fixed notation rounded to
    ``sig`` significant digits, trailing zeros dropped (``379.9``,
    ``0.002842``, ``20``); smaller and larger ones as a mantissa of ``sig``
    significant digits times a power of ten (``2.842 × 10⁻⁴``). The unit
    follows after a space (none before ``%`` and ``°``).

    Parameters
    ----------
    x : int, float, numpy scalar or 0-d array
        The number (a bool is shown as ``yes`` / ``no``; None as a dash).
    unit : str
        Appended after the number, e.g. ``"keV"``, ``"s"``, ``"%"``.
    sig : int
        Significant digits of a real number (at least 1).

    Returns
    -------
    str

    Raises
    ------
    TypeError
        ``x`` is not a number.
    """
    if x is None:
        return _DASH
    if isinstance(x, np.ndarray) and x.ndim == 0:
        x = x.item()
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    sig = max(1, int(sig))
    if isinstance(x, Integral):
        text = f"{int(x):,}"
    elif isinstance(x, Real):
        v = float(x)
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            text = "∞" if v > 0 else "−∞"
        elif v == 0:
            text = "0"
        else:
            exp = math.floor(math.log10(abs(v)))
            mant = round(v / 10**exp, sig - 1)
            if abs(mant) >= 10:  # 9.9996 rounds to 10.0: one more power of ten
                exp, mant = exp + 1, mant / 10
            if -3 <= exp < 5:
                decimals = max(0, sig - 1 - exp)
                text = _strip(f"{round(v, decimals):,.{decimals}f}")
            else:
                text = f"{_strip(f'{mant:.{sig - 1}f}')} × 10{str(exp).translate(_SUPERSCRIPT)}"
    else:
        raise TypeError(f"format_number: expected a number, got {type(x).__name__} {x!r}")
    if not unit:
        return text
    return f"{text}{unit}" if unit in ("%", "°") else f"{text} {unit}"


def format_seconds(seconds: Any) -> str:
    """A duration for a reader: ``0.47 s``, ``7.41 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if seconds is None:
        return _DASH
    s = float(seconds)
    if not math.isfinite(s) or s < 60:
        return format_number(s, "s", sig=3)
    if s < 3600:
        m, r = divmod(round(s), 60)
        return f"{m} min {r:02d} s"
    h, r = divmod(round(s / 60), 60)
    return f"{h} h {r:02d} min"


def format_value(value: Any, unit: str = "") -> str:
    """Any attribute value as table text: numbers by :func:`format_number`, lists joined, None as a dash."""
    if value is None:
        return _DASH
    if isinstance(value, (bool, np.bool_, Integral, Real)) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return format_number(value, unit)
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(format_value(v) for v in value) + (f" {unit}" if unit else "")
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {format_value(v)}" for k, v in value.items())
    return f"{value} {unit}" if unit else str(value)
