"""Known endmember spectra for NMF: checking the references and placing them in the start.

:func:`xsi_dask.nmf` with ``fixed_spectra=`` keeps some rows of H equal to
given reference spectra (a pure phase measured elsewhere, another run's
``spectra``, :func:`read_reference_spectrum` of a spectrum file) and updates
only the others; W is updated for every component as usual. The two pure
steps here are each tested on their own: :func:`reference_spectra` checks and
normalises the references against the montage view's energy axis, and
:func:`place_references` puts them into a start (W, H).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.optimize import linear_sum_assignment

from ..errors import DecompositionError, ViewError

__all__ = ["reference_spectra", "place_references"]


def _energy_mismatch(ref: np.ndarray, view: np.ndarray) -> str | None:
    """Why two energy axes (keV) differ, or None when they agree to 1e-3 of a channel."""
    if ref.shape != view.shape:
        return f"the references have {ref.size} channels, the view {view.size}"
    width = float(np.min(np.abs(np.diff(view)))) if view.size > 1 else 1.0
    bad = np.flatnonzero(~(np.abs(ref - view) <= 1e-3 * width))
    if bad.size:
        i = int(bad[0])
        return (f"channel {i} is at {ref[i]:.6g} keV in the references and {view[i]:.6g} keV in the view "
                f"({bad.size} channels differ)")
    return None


def reference_spectra(fixed_spectra, energy: xr.DataArray | np.ndarray, n_components: int) -> np.ndarray:
    """Known spectra checked against a montage view and normalised to sum 1.

    Parameters
    ----------
    fixed_spectra : array-like of shape (n_fixed, channels) or (channels,), or xarray.DataArray
        Reference spectra over the view's energy axis (any non-negative
        scale: counts, a mean spectrum, another NMF's ``spectra``). A
        DataArray must have an ``energy`` dimension whose coordinate (keV)
        equals the view's, channel for channel (to 1e-3 of a channel); its
        other dimension (e.g. ``component``) numbers the references. A plain
        array is taken to be over the view's channels, in order.
    energy : xarray.DataArray or ndarray of shape (channels,)
        The view's energy coordinate in keV (``montage["energy"]``).
    n_components : int
        The NMF's k: at most this many references.

    Returns
    -------
    ndarray of shape (n_fixed, channels), float64
        Each reference divided by its sum.

    Raises
    ------
    ViewError
        The references' energy axis differs from the view's (other channel
        count, another calibration or channel selection); the message names the
        first channel that differs. Interpolation is never done silently:
        select the view's channels, or resample the references yourself.
    DecompositionError
        Not 1-D or 2-D; no reference; more references than ``n_components``;
        a reference with a negative or non-finite value, or summing to 0
        (each named by its position).
    """
    view_e = np.asarray(getattr(energy, "values", energy), dtype=np.float64).reshape(-1)
    M = view_e.size
    if isinstance(fixed_spectra, xr.DataArray):
        if "energy" not in fixed_spectra.dims or fixed_spectra.ndim not in (1, 2):
            raise DecompositionError(f"fixed_spectra: a DataArray needs dims (component, energy) or (energy,); got "
                                     f"{fixed_spectra.dims}")
        if "energy" in fixed_spectra.coords:
            why = _energy_mismatch(np.asarray(fixed_spectra["energy"].values, dtype=np.float64), view_e)
        elif fixed_spectra.sizes["energy"] != M:
            why = f"the references have {fixed_spectra.sizes['energy']} channels, the view {M}"
        else:
            why = None
        if why is not None:
            raise ViewError(f"fixed_spectra: the references' energy axis is not the montage view's: {why}; give "
                            "references on the view's channels (no interpolation is done)")
        other = [d for d in fixed_spectra.dims if d != "energy"]
        R = fixed_spectra.transpose(*other, "energy").data
        if hasattr(R, "compute"):  # lazy, e.g. a region of the montage summed: montage.isel(...).sum(("y", "x"))
            R = R.compute()
        if hasattr(R, "todense"):  # a pydata-sparse block of the montage view
            R = R.todense()
    else:
        R = fixed_spectra
    try:
        R = np.array(R, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DecompositionError(f"fixed_spectra must be numbers (n_fixed, channels); got {type(fixed_spectra).__name__} "
                                 f"({exc})") from None
    if R.ndim == 1:
        R = R[None, :]
    if R.ndim != 2 or R.shape[1] != M:
        raise DecompositionError(f"fixed_spectra must have shape (n_fixed, {M}) over the view's {M} channels; got "
                                 f"{np.shape(fixed_spectra)}")
    n = R.shape[0]
    if n == 0:
        raise DecompositionError("fixed_spectra holds no reference; leave it out (None) for a free NMF")
    if n > n_components:
        raise DecompositionError(f"fixed_spectra: {n} references but n_components={n_components}; fix at most "
                                 "n_components spectra")
    for i, r in enumerate(R):
        if not np.isfinite(r).all():
            raise DecompositionError(f"fixed_spectra: reference {i} has {int((~np.isfinite(r)).sum())} non-finite "
                                     "values (NaN or inf)")
        if (r < 0).any():
            raise DecompositionError(f"fixed_spectra: reference {i} has negative values (min {r.min():.3g} at "
                                     f"{view_e[int(np.argmin(r))]:.4g} keV); NMF spectra are non-negative")
        if not r.sum() > 0:
            raise DecompositionError(f"fixed_spectra: reference {i} is all zero; it cannot be normalised to sum 1")
    return R / R.sum(1, keepdims=True)


def place_references(H: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put the references into a start H (k, channels) in place of the rows most like them.

    Each reference replaces one row of H, assigned by the Hungarian method on
    the cosine between the reference and the rows (maximum total cosine), and
    takes that row's sum as its scale, so the row's W column (its abundance
    map, in the row's scale) stays a consistent start. The other rows (the
    usual start, e.g. NNDSVDa) are kept.

    Parameters
    ----------
    H : ndarray of shape (k, channels)
        The start's spectra (any scale, non-negative).
    refs : ndarray of shape (n_fixed, channels)
        References summing to 1 (:func:`reference_spectra`).

    Returns
    -------
    H : ndarray of shape (k, channels)
        A copy with ``H[pos[i]] = s_i * refs[i]``, s_i the replaced row's sum (1 where it was 0).
    pos : ndarray of shape (n_fixed,), int
        The row of each reference.

    References
    ----------
    Kuhn, H. W. (1955). The Hungarian method for the assignment problem.
    Naval Res. Logist. Q. 2, 83-97. doi:10.1002/nav.3800020109
    """
    H = np.array(H, dtype=np.float64)
    nh = np.linalg.norm(H, axis=1)
    cos = (refs / np.linalg.norm(refs, axis=1, keepdims=True)) @ (H / np.where(nh > 0, nh, 1.0)[:, None]).T
    rows, cols = linear_sum_assignment(-cos)
    pos = cols[np.argsort(rows)].astype(np.int64)
    scale = H[pos].sum(1)
    scale = np.where(scale > 0, scale, 1.0)
    H[pos] = scale[:, None] * refs
    return H, pos
