"""``xsi-dask explore``: a simulated automated experiment on pre-acquired data, recorded in ``explore.zarr``.

The spectrum image is already acquired, so every pixel's scalar is known: the
experiment measures only the pixels its acquisition chooses (a lookup), and
the *true* scalar map (the scalarizer applied to every pixel) scores what it
found. This is how the DKL papers benchmark their automated experiments
(Roccapriore, Kalinin & Ziatdinov, Adv. Sci. 9, 2203422 (2022),
doi:10.1002/advs.202203422): a random start of 0.5 % of the pixels, then the
model's choices, against random sampling.

Inputs (:func:`load_inputs`):

* files read by RosettaSciIO (:func:`xsi_dask.io.readers.read_signals`): the
  structural image is the 2-D signal named by ``structure`` (its title, else
  its file's stem), the spectrum image the one 3-D signal on the same
  ``(y, x)`` grid (e.g. ``CuZn_HAADF.hspy`` + ``CuZn_EELS_mapping_tutorial.hspy``,
  or a Velox ``.emd`` holding a HAADF image and the EDS spectrum image);
* one montage store (:func:`xsi_dask.ingest`, ``xsi-dask simulate``): the
  structural image is a tile image (``structure``), the spectra are read by
  :class:`~xsi_dask.active.measure.MontageMeasure`, and ``features`` may name
  a results store whose SVD scores or NMF abundances are the features
  (:func:`~xsi_dask.active.features.reduced_features`; with ``structure``
  too, both, :func:`~xsi_dask.active.features.combine_features`).

What is run (:func:`explore`), for each seed ``0 .. seeds-1``:

* ``dkl``: :func:`~xsi_dask.active.loop.run_experiment` with
  ``dkl_factory(feature_bounds(X))`` and the named acquisition;
* ``random``: the same ``n_init`` random start, then pixels drawn uniformly
  among the unmeasured ones (no model: the discovery curve's baseline);
* ``gp`` (with ``baseline_gp``): the plain GP on the pixel coordinates
  (:func:`~xsi_dask.active.features.coordinate_features`,
  ``plain_gp_factory``) with the same acquisition and start.

Record (``explore.zarr``, a Zarr v3 group written to a temporary sibling and
renamed when complete): root attributes ``xsi_dask`` (format
``xsi-dask-explore``) and ``explore`` (the parameters, inputs, methods,
seeds); group ``truth`` (``true_value (y, x)``, ``image (y, x)``, the
top-1 % threshold); one group ``<method>/seed<k>`` per run (the Dataset of
``run_experiment``; the random baseline's has the same step variables,
without maps) with the discovery curve ``recall (step)`` and
``best_true (step)`` added, and the final scores in its attributes
(``final_recall``, ``final_best``, ``final_rmse``, ``final_coverage``,
``final_coverage_latent``);
``fit_worker`` is stored as an index into the attribute ``fit_workers``.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import NoSpectrumImageError, ParameterError, StoreFormatError
from ..io.readers import Signal, channel_energies, read_signals
from ..io.store import EXPLORE_FORMAT, MontageStore, atomic_output, check_output, output_kind
from .acquisition import ACQUISITIONS as _ALL_ACQUISITIONS
from .features import Features, combine_features, montage_patches, reduced_features, structure_patches
from .loop import _check_resources
from .loop import _count as _int
from .scalarizers import Scalarizer, parse_scalarizer

__all__ = [
    "ACQUISITIONS", "DEFAULT_WINDOW", "EXPLORE_VERSION", "ExploreInputs", "TOP_FRACTION", "default_n_init", "discovery", "explore",
    "load_inputs", "open_explore", "random_baseline", "scores",
]

ACQUISITIONS = tuple(a for a in _ALL_ACQUISITIONS if a != "random")
"""The acquisitions ``explore`` runs the DKL model with ("random" is the baseline it always runs)."""
EXPLORE_VERSION = 1
TOP_FRACTION = 0.01
"""The discovery curve's target: the pixels whose true value is in the top 1 %."""
DEFAULT_WINDOW = 5
"""Side of the structural patches (pixels) unless ``window`` says otherwise."""
_TRUTH_BLOCK_BYTES = 64 * 2**20  # the true map is computed in blocks of pixels of at most this many float64 bytes


def default_n_init(n_pixels: int) -> int:
    """The DKL papers' random start: 0.5 % of the candidate pixels, at least 5.

    Parameters
    ----------
    n_pixels : int
        Candidate pixels.

    Returns
    -------
    int
        ``max(5, ceil(0.005 * n_pixels))``.
    """
    return max(5, math.ceil(0.005 * n_pixels))


@dataclass
class ExploreInputs:
    """What an exploration runs on (:func:`load_inputs`).

    Attributes
    ----------
    features : Features
        The candidate pixels and their features, on ``shape``.
    measure : callable
        ``measure(y, x)`` -> the spectrum of pixel ``(y, x)`` (a lookup).
    energy : ndarray of shape (channels,), float64
        The spectra's energy axis, in ``units``.
    units : {"eV", "keV"}
    image : ndarray of shape (H, W), float64
        The structural image (the patches' source, or the store's tile image
        that places the tiles; the figures show it).
    image_name : str
        Its name.
    spectra_name : str
        What the spectra are (the signal's title and file, or the store).
    true_map : callable
        ``true_map(scalarizer) -> (H, W)`` float64, the scalarizer on every pixel (NaN off the candidates).
    sources : list of str
        The input paths.
    """

    features: Features
    measure: Callable[[int, int], Any]
    energy: np.ndarray
    units: str
    image: np.ndarray
    image_name: str
    spectra_name: str
    true_map: Callable[[Scalarizer], np.ndarray]
    sources: list[str] = field(default_factory=list)


# ---- checks of the parameters (before anything is read) ----


def _check_parameters(*, structure, features, feature_group, scalarizer, acquisition, budget, n_init, window, seeds,
                      steps) -> dict[str, Any]:
    if structure is None and features is None:
        raise ParameterError("give the structural image (--structure NAME) or a results store (--features RESULTS.zarr), "
                             "or both: the model needs features")
    if structure is not None and (not isinstance(structure, str) or not structure.strip()):
        raise ParameterError(f"structure must be a non-empty name, got {structure!r}")
    if feature_group not in (None, "svd", "nmf"):
        raise ParameterError(f"feature group must be 'svd' or 'nmf', got {feature_group!r}")
    if feature_group is not None and features is None:
        raise ParameterError(f"a feature group ({feature_group!r}) applies only with --features RESULTS.zarr")
    if not isinstance(scalarizer, str) or not scalarizer.strip():
        raise ParameterError(f"scalarizer must be a spec such as 'band:8.0-8.1', got {scalarizer!r}")
    if acquisition not in ACQUISITIONS:
        raise ParameterError(f"acquisition {acquisition!r}: unknown; known: {', '.join(ACQUISITIONS)} "
                             "(random sampling is run as the baseline anyway)")
    budget = _int(budget, "budget", 2)
    if n_init is not None:
        n_init = _int(n_init, "n_init", 1)
        if n_init >= budget:
            raise ParameterError(f"n_init ({n_init}) must be below the budget ({budget}): the model would choose no pixel")
    if window is None:
        window = DEFAULT_WINDOW
    elif structure is None:
        raise ParameterError(f"a window ({window}) applies to the patches of --structure, which is not given")
    window = _int(window, "window", 1)
    if window % 2 == 0:
        raise ParameterError(f"window must be odd (the patch is centred on its pixel), got {window}")
    seeds = _int(seeds, "seeds", 1)
    if steps is not None:
        steps = _int(steps, "steps", 1)
    return {"budget": budget, "n_init": n_init, "window": window, "seeds": seeds, "steps": steps}


# ---- inputs ----


def _names(sig: Signal) -> tuple[str, ...]:
    """What ``--structure`` may call a signal: its title, else its file's stem."""
    return (sig.title,) if sig.title else (sig.path.stem,)


def _label(sig: Signal) -> str:
    return f"{sig.title or sig.path.stem!r} {sig.shape} in {sig.path.name}"


def _select_structure(signals: list[Signal], name: str) -> Signal:
    images = [s for s in signals if len(s.shape) == 2]
    if not images:
        raise ParameterError(f"--structure {name!r}: the inputs hold no 2-D image; their signals: "
                             f"{'; '.join(_label(s) for s in signals)}")
    want = name.strip().lower()
    hits = [s for s in images if want in (n.lower() for n in _names(s))]
    if not hits:  # a file's stem names its only image too
        hits = [s for s in images if s.path.stem.lower() == want and sum(i.path == s.path for i in images) == 1]
    available = "; ".join(_label(s) for s in images)
    if not hits:
        raise ParameterError(f"--structure {name!r}: no 2-D image of that name; the images are: {available}")
    if len(hits) > 1:
        raise ParameterError(f"--structure {name!r}: {len(hits)} images have that name ({'; '.join(_label(s) for s in hits)}); "
                             "give the inputs so that one does (one file per image)")
    return hits[0]


def _select_spectra(signals: list[Signal], shape: tuple[int, int], image: str) -> Signal:
    cubes = [s for s in signals if s.is_spectrum_image]
    hits = [s for s in cubes if s.shape[:2] == tuple(shape)]
    if not hits:
        found = "; ".join(_label(s) for s in cubes) or "none"
        raise NoSpectrumImageError(f"no 3-D spectrum image (y, x, channels) on the {shape[0]} x {shape[1]} grid of the "
                                   f"structural image {image}; the spectrum images of the inputs: {found}")
    if len(hits) > 1:
        raise ParameterError(f"{len(hits)} spectrum images lie on the {shape[0]} x {shape[1]} grid of {image} "
                             f"({'; '.join(_label(s) for s in hits)}): the one to measure is ambiguous; give only its file")
    return hits[0]


_LENGTH_NM = {"pm": 1e-3, "å": 0.1, "a": 0.1, "angstrom": 0.1, "nm": 1.0, "µm": 1e3, "μm": 1e3, "um": 1e3, "mm": 1e6}
_CALIBRATION_RTOL = 1e-3  # relative difference of the pixel sizes (and of the origins, in pixels) taken as equal


def _calibration(sig: Signal) -> tuple[float, float, float, float, str] | None:
    """``(scale_y, scale_x, offset_y, offset_x, units)`` of the two spatial axes, or None when they carry none (pixels)."""
    from ..io.readers import _pixel_axes

    px = _pixel_axes(sig.axes[:2])
    if px.units == "px":
        return None
    return px.scale_y, px.scale_x, px.offset_y, px.offset_x, px.units


def _check_calibration(image: Signal, spectra: Signal) -> None:
    """Refuse a spectrum image whose pixel grid is not the structural image's, where both are calibrated.

    The pixel sizes must agree within 0.1 % (in one length unit when both are
    lengths, else in the same units), and so must the origins, within 0.1 %
    of a pixel, where both files record one (a non-zero offset: the readers
    write 0 when the file records no origin, as for the HAADF image of a Velox
    file whose spectrum image has one).

    Raises
    ------
    ParameterError
        The calibrations differ; the message names both signals and files and their calibrations.
    """
    a, b = _calibration(image), _calibration(spectra)
    if a is None or b is None:
        return
    fa, fb = _LENGTH_NM.get(a[4].lower()), _LENGTH_NM.get(b[4].lower())
    if fa is None or fb is None:
        fa = fb = 1.0
        same = a[4] == b[4]
    else:
        same = True
    scale_a, scale_b = np.array(a[:2]) * fa, np.array(b[:2]) * fb
    off_a, off_b = np.array(a[2:4]) * fa, np.array(b[2:4]) * fb
    same = same and bool(np.allclose(scale_a, scale_b, rtol=_CALIBRATION_RTOL, atol=0.0))
    recorded = (off_a != 0) & (off_b != 0)
    same = same and bool(np.all(~recorded | (np.abs(off_a - off_b) <= _CALIBRATION_RTOL * np.abs(scale_a))))
    if not same:
        def text(c):
            return f"pixel {c[0]:.6g} x {c[1]:.6g} {c[4]}, origin ({c[2]:.6g}, {c[3]:.6g}) {c[4]}"

        raise ParameterError(f"the spectrum image {_label(spectra)} ({text(b)}) is not on the pixel grid of the structural "
                             f"image {_label(image)} ({text(a)}): the same shape, another calibration; give the "
                             "spectrum image acquired with this image")


def _block(channels: int) -> int:
    """Pixels per block of the true map's computation (float64 spectra of ``channels``)."""
    return max(1, _TRUTH_BLOCK_BYTES // (8 * max(1, channels)))


def _files_inputs(paths: list[Path], structure: str, window: int) -> ExploreInputs:
    signals = [s for p in paths for s in read_signals(p)]
    img_sig = _select_structure(signals, structure)
    image = np.asarray(img_sig.data, dtype=np.float64)
    si_sig = _select_spectra(signals, image.shape, _label(img_sig))
    _check_calibration(img_sig, si_sig)
    energy, units = channel_energies(si_sig)
    si = np.asarray(si_sig.data)  # the "instrument": every spectrum, in the file's dtype
    H, W, C = si.shape
    feats = structure_patches(image, window)

    def measure(y: int, x: int) -> np.ndarray:
        return si[y, x]

    def true_map(scalarizer: Scalarizer) -> np.ndarray:
        flat = si.reshape(H * W, C)
        out = np.empty(H * W)
        step = _block(C)
        for lo in range(0, H * W, step):  # in blocks of views, in the file's dtype: the scalarizer casts only its bands
            out[lo:lo + step] = np.asarray(scalarizer(flat[lo:lo + step]), dtype=np.float64)
        return out.reshape(H, W)

    return ExploreInputs(feats, measure, energy, units, image, img_sig.title or img_sig.path.stem,
                         f"{si_sig.title or si_sig.signal_type or 'spectrum image'} {si.shape} in {si_sig.path.name}",
                         true_map, [str(p) for p in paths])


def _store_inputs(path: Path, structure: str | None, results: Path | None, feature_group: str | None,
                  window: int) -> ExploreInputs:
    from .measure import MontageMeasure

    store = MontageStore(path)
    names = store.image_names(0)
    if structure is not None and structure not in names:
        raise ParameterError(f"--structure {structure!r}: {path} has no tile image of that name; its images: "
                             f"{', '.join(names) or 'none'}")
    image_name = structure if structure is not None else (names[0] if names else None)
    if image_name is None:
        raise ParameterError(f"{path}: its tiles hold no structural image, which the measurement needs to place the tiles "
                             "on the mosaic (and the figures to show)")
    from .features import mosaic_image

    mosaic = mosaic_image(store, image_name)  # assembled once: the measurement, the patches and the figures
    image, tiles = mosaic
    measure = MontageMeasure(store, image=image_name, mosaic=mosaic)
    parts = []
    if structure is not None:
        parts.append(montage_patches(store, structure, window, mosaic=mosaic))
    if results is not None:
        from ..io.results import open_result_groups

        groups = open_result_groups(results)
        have = [g for g in ("nmf", "svd") if g in groups]
        group = feature_group or have[0]
        if group not in have:
            raise ParameterError(f"--features {results}: no {group} group (it has {', '.join(have)})")
        ds = groups[group]
        source = ds.attrs.get("store_uuid")
        if source != store.uuid:
            raise ParameterError(f"--features {results}: its {group} results were computed from "
                                 + (f"the montage store of uuid {source} ({ds.attrs.get('store', 'path not recorded')})"
                                    if source else "a montage store they do not record (no store_uuid)")
                                 + f", not from the input {path} (uuid {store.uuid}): give the results of this store")
        parts.append(reduced_features(ds, group))
    feats = parts[0] if len(parts) == 1 else combine_features(*parts)
    if feats.shape != image.shape:
        raise ParameterError(f"the features of {results} lie on a {feats.shape[0]} x {feats.shape[1]} mosaic, the store "
                             f"{path} on {image.shape[0]} x {image.shape[1]}: the results are not of this store")
    th, tw = store.tile_shape

    def true_map(scalarizer: Scalarizer) -> np.ndarray:
        import scipy.sparse as sp

        out = np.full(image.shape, np.nan)
        for (r, c), t in np.ndenumerate(tiles):
            csr = store.tile_csr(int(t))
            m = sp.csr_matrix((csr.data, csr.indices, csr.indptr), shape=csr.shape)
            vals = np.empty(csr.shape[0])
            step = _block(csr.shape[1])
            for lo in range(0, csr.shape[0], step):
                # in the counts' dtype: the scalarizer casts only the channels of its bands
                vals[lo:lo + step] = np.asarray(scalarizer(m[lo:lo + step].toarray()), dtype=np.float64)
            out[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = vals.reshape(th, tw)
        return out

    return ExploreInputs(feats, measure, np.asarray(store.energy, dtype=np.float64), "keV", image, image_name,
                         f"the spectra of the montage store {path.name}", true_map,
                         [str(path)] + ([str(results)] if results is not None else []))


def load_inputs(inputs: Sequence[str | Path], *, structure: str | None = None, features: str | Path | None = None,
                feature_group: str | None = None, window: int = DEFAULT_WINDOW) -> ExploreInputs:
    """Read the inputs of an exploration: the features, the measurement and the energy axis.

    Parameters
    ----------
    inputs : sequence of path
        Files read by RosettaSciIO, or one montage store.
    structure : str, optional
        The structural image: among the files' 2-D signals, by title (case
        insensitive), else by the file's stem; of a store, a tile image name.
    features : path, optional
        A results store (store input only): its SVD scores or NMF abundances as features.
    feature_group : {"svd", "nmf"}, optional
        Which; default ``nmf`` when the results have it, else ``svd``.
    window : int
        Odd side of the structural patches (pixels).

    Returns
    -------
    ExploreInputs
        The candidates' features on the structural image's ``(H, W)`` grid,
        the measurement (a lookup of the pre-acquired spectrum), the energy
        axis in its units, the structural image, the true map's function and
        the input paths.

    Raises
    ------
    ParameterError
        No input, a store beside files or several stores, ``features`` with
        files, a structure name that matches no image or several (the
        message lists the images), an energy axis not in eV or keV, a
        spectrum image whose spatial calibration (pixel size, origin, units)
        is not the structural image's, results of another store.
    NoSpectrumImageError
        No 3-D spectrum image on the structural image's grid (the message names the shapes found).
    InputFileNotFoundError, UnsupportedFormatError, CorruptFileError
        As :func:`xsi_dask.io.readers.read_signals`.
    StoreFormatError, LayoutError, CorruptStoreError
        A store or results store that cannot be used.
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ParameterError("give INPUT: files read by RosettaSciIO, or one montage store")
    stores = [p for p in paths if output_kind(p) == "montage"]
    if stores:
        if len(paths) > 1:
            raise ParameterError(f"one montage store alone is an input; got {len(paths)} inputs "
                                 f"({', '.join(map(str, paths))})")
        return _store_inputs(stores[0], structure, None if features is None else Path(features), feature_group, window)
    dirs = [p for p in paths if p.is_dir()]
    if dirs:
        raise StoreFormatError(f"{dirs[0]} is a folder but not an xsi_dask montage store; give files or one store")
    if features is not None:
        raise ParameterError("--features RESULTS.zarr places SVD/NMF features on a montage's mosaic: give the montage "
                             "store as the input (not files)")
    if structure is None:  # explore() has refused this already (_check_parameters); load_inputs is public
        raise ParameterError("with files as the input, give the structural image (--structure NAME): the model needs features")
    return _files_inputs(paths, structure, window)


# ---- the baseline and the scores ----


def random_baseline(features: Features, truth: np.ndarray, start: xr.Dataset, *, seed: int) -> xr.Dataset:
    """Random sampling from the same start: the discovery curve's baseline (no model, no measurement needed).

    Parameters
    ----------
    features : Features
        The candidates.
    truth : ndarray of shape features.shape
        The true scalar map (the value "measured" at a pixel).
    start : xarray.Dataset
        A run of :func:`~xsi_dask.active.loop.run_experiment`: its initial
        steps are the baseline's initial steps, its budget the baseline's.
    seed : int
        Seeds the draw of the remaining pixels (uniform without replacement among the unmeasured).

    Returns
    -------
    xarray.Dataset
        ``visited_y``, ``visited_x``, ``value``, ``initial`` on ``step`` and ``order (y, x)``,
        as a run's.

    References
    ----------
    Roccapriore, K. M., Kalinin, S. V. & Ziatdinov, M. (2022). Physics
    discovery in nanoplasmonic systems via autonomous experiments in scanning
    transmission electron microscopy. Adv. Sci. 9, 2203422,
    https://doi.org/10.1002/advs.202203422 (the protocol: a random start,
    the model's choices against random sampling, scored on the pre-acquired
    true map).
    """
    n_init = int(start["initial"].values.sum())
    budget = int(start.sizes["step"])
    rows_of = {(int(y), int(x)): i for i, (y, x) in enumerate(features.yx)}
    first = [rows_of[(int(y), int(x))] for y, x in zip(start["visited_y"].values[:n_init], start["visited_x"].values[:n_init],
                                                       strict=True)]
    free = np.setdiff1d(np.arange(features.n_pixels), first)
    rest = np.random.default_rng(np.random.SeedSequence([seed, 1])).choice(free, size=budget - n_init, replace=False)
    yx = features.yx[np.concatenate([first, rest]).astype(np.int64)]
    order = np.full(features.shape, -1, dtype=np.int64)
    order[yx[:, 0], yx[:, 1]] = np.arange(budget)
    return xr.Dataset(
        {"visited_y": ("step", yx[:, 0]), "visited_x": ("step", yx[:, 1]), "value": ("step", truth[yx[:, 0], yx[:, 1]]),
         "initial": ("step", np.arange(budget) < n_init), "order": (("y", "x"), order)},
        coords={"step": np.arange(budget), "y": np.arange(features.shape[0]), "x": np.arange(features.shape[1])},
        attrs={"n_init": n_init, "budget": budget, "seed": seed, "n_candidates": features.n_pixels,
               "acquisition_function": "uniform random among the unmeasured pixels"},
    )


def _on_candidates(truth: np.ndarray, features: Features) -> np.ndarray:
    """``truth`` with NaN off the candidate pixels (e.g. the holes of a montage): nothing there can be measured,
    so it is neither in the top fraction nor in the recall's count."""
    candidate = np.zeros(truth.shape, dtype=bool)
    candidate[features.yx[:, 0], features.yx[:, 1]] = True
    return np.where(candidate, truth, np.nan)


def _n_top(truth: np.ndarray, fraction: float = TOP_FRACTION) -> int:
    return max(1, math.ceil(fraction * int(np.isfinite(truth).sum())))


def _top_mask(truth: np.ndarray, fraction: float = TOP_FRACTION) -> tuple[np.ndarray, float]:
    """The pixels at or above the ``n_top``-th largest finite true value (ties included; NaN pixels, off the
    candidates, are never in it nor counted in ``n_top``), and that value."""
    finite = np.sort(truth[np.isfinite(truth)])
    threshold = float(finite[-_n_top(truth, fraction)])
    return np.isfinite(truth) & (truth >= threshold), threshold


def discovery(ds: xr.Dataset, truth: np.ndarray, *, fraction: float = TOP_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """The discovery curve of a run: top-``fraction`` recall and best true value after each measurement.

    Parameters
    ----------
    ds : xarray.Dataset
        A run (``visited_y``, ``visited_x`` on ``step``).
    truth : ndarray of shape (H, W)
        The true scalar map, NaN off the candidates (ignored: the top fraction
        is of the finite values, ``n_top`` counts them).
    fraction : float
        The top fraction of the true values that counts as a discovery (default 1 %).

    Returns
    -------
    recall : ndarray of shape (budget,)
        After ``k + 1`` measurements, the fraction of the ``n_top = ceil(fraction
        * pixels)`` pixels of the largest true values that were measured; when
        more pixels tie at the ``n_top``-th value, each of them counts, up to
        ``n_top`` (the convention of ``benchmarks/bench_dkl.py``).
    best : ndarray of shape (budget,)
        The largest true value among the first ``k + 1`` measured pixels.

    References
    ----------
    Roccapriore, K. M., Kalinin, S. V. & Ziatdinov, M. (2022). Physics
    discovery in nanoplasmonic systems via autonomous experiments in scanning
    transmission electron microscopy. Adv. Sci. 9, 2203422,
    https://doi.org/10.1002/advs.202203422 (the protocol: a random start,
    the model's choices against random sampling, scored on the pre-acquired
    true map).
    """
    top, _ = _top_mask(truth, fraction)
    y, x = ds["visited_y"].values, ds["visited_x"].values
    n_top = _n_top(truth, fraction)
    recall = np.minimum(np.cumsum(top[y, x]), n_top) / n_top
    best = np.fmax.accumulate(truth[y, x])  # a NaN (off the candidates) is no value found
    return recall, best


def scores(ds: xr.Dataset, truth: np.ndarray) -> dict[str, float]:
    """Final scores of a run: recall, best value; with maps, RMSE and 95 % coverages on the unmeasured pixels.

    Parameters
    ----------
    ds : xarray.Dataset
        A run; ``prediction``/``uncertainty`` (the final fit) and the attribute
        ``noise_variance`` when it has a model.
    truth : ndarray of shape (H, W), float64
        The true scalar map (the scalarizer on every pixel, in the scalarizer's
        units), NaN off the candidates (left out of every score).

    Returns
    -------
    dict
        ``recall`` (top 1 %), ``best`` (largest true value measured), ``rmse``
        (of the prediction against the truth over the unmeasured candidates,
        in the scalarizer's units, as ``truth``),
        ``coverage`` (the fraction of them within the 95 % predictive interval
        ``prediction +- 1.96 sqrt(uncertainty**2 + noise_variance)``, the
        interval a new measurement falls in) and ``coverage_latent`` (within
        ``prediction +- 1.96 uncertainty``, the latent function's); the last three
        NaN for a run without maps or with every candidate measured, ``coverage``
        also for a model that reports no noise variance.
    """
    recall, best = discovery(ds, truth)
    nan = float("nan")
    out = {"recall": float(recall[-1]), "best": float(best[-1]), "rmse": nan, "coverage": nan, "coverage_latent": nan}
    if "prediction" in ds:
        pred, std = ds["prediction"].values, ds["uncertainty"].values
        rest = (ds["order"].values < 0) & np.isfinite(pred) & np.isfinite(truth)
        if rest.any():
            err = np.abs(pred[rest] - truth[rest])
            noise = float(ds.attrs.get("noise_variance", nan))
            out["rmse"] = float(np.sqrt(np.mean(err**2)))
            out["coverage_latent"] = float(np.mean(err <= 1.96 * std[rest]))
            if np.isfinite(noise):
                out["coverage"] = float(np.mean(err <= 1.96 * np.sqrt(std[rest] ** 2 + noise)))
    return out


# ---- the record ----


def check_target(out: str | Path, *, overwrite: bool = False) -> Path:
    """Check, before any work, that ``out`` may take the record ``explore.zarr``.

    Parameters
    ----------
    out : path
        The record to write (``.../explore.zarr``).
    overwrite : bool
        Whether an existing record of ours may be replaced.

    Returns
    -------
    Path
        ``out``, as :func:`xsi_dask.io.store.check_output` returns it.

    Raises
    ------
    StoreExistsError
        ``out`` is a record of ours and ``overwrite`` is false.
    NotOurOutputError
        ``out`` is anything else (a file, a folder of other files, another kind of store).
    OutputWriteError
        Its folder cannot be written.
    """
    return check_output(out, "explore", overwrite=overwrite)


def open_explore(path: str | Path) -> tuple[xr.Dataset, dict[str, dict[int, xr.Dataset]], dict[str, Any]]:
    """Open a record written by :func:`explore`.

    Parameters
    ----------
    path : path
        ``explore.zarr``.

    Returns
    -------
    truth : xarray.Dataset
        ``true_value (y, x)`` and ``image (y, x)``.
    runs : dict
        ``runs[method][seed]`` -> the run's Dataset (``dkl``, ``random``, and ``gp`` when run).
    params : dict
        The root attribute ``explore`` (parameters, inputs, methods, seeds).

    Raises
    ------
    StoreFormatError
        ``path`` is not a record of ``xsi-dask explore``.
    """
    import zarr

    p = Path(path)
    if output_kind(p) != "explore":
        raise StoreFormatError(f"{p} is not the record of xsi-dask explore (no {EXPLORE_FORMAT!r} marker)")
    params = dict(zarr.open_group(str(p), mode="r").attrs["explore"])
    truth = xr.open_zarr(str(p), group="truth", consolidated=False).load()
    runs = {m: {s: xr.open_zarr(str(p), group=f"{m}/seed{s}", consolidated=False).load() for s in params["seeds"]} for m in params["methods"]}
    return truth, runs, params


def _write(out: Path, truth: xr.Dataset, runs: dict[str, dict[int, xr.Dataset]], params: dict[str, Any],
           overwrite: bool) -> Path:
    import zarr

    from .._version import __version__

    with atomic_output(out, overwrite=overwrite, kind="explore") as stage:
        marker = {"format": EXPLORE_FORMAT, "version": EXPLORE_VERSION, "uuid": uuid.uuid4().hex,
                  "package_version": __version__}
        zarr.open_group(str(stage), mode="w", zarr_format=3, attributes={"xsi_dask": marker, "explore": params})
        truth.to_zarr(str(stage), group="truth", mode="w", zarr_format=3, consolidated=False)
        for method, per_seed in runs.items():
            for seed, ds in per_seed.items():
                ds = ds.copy()
                if "fit_worker" in ds:  # text arrays have no stable Zarr v3 type: an index into a list of addresses
                    names = sorted({str(w) for w in ds["fit_worker"].values})
                    ds["fit_worker"] = ("step", np.array([names.index(str(w)) for w in ds["fit_worker"].values]),
                                        {"description": "index into the attribute fit_workers ('': in-process or initial)"})
                    ds.attrs["fit_workers"] = names
                ds.to_zarr(str(stage), group=f"{method}/seed{seed}", mode="w", zarr_format=3, consolidated=False)
    return out


def explore(
    inputs: Sequence[str | Path],
    *,
    out: str | Path,
    scalarizer: str,
    acquisition: str,
    budget: int,
    structure: str | None = None,
    features: str | Path | None = None,
    feature_group: str | None = None,
    n_init: int | None = None,
    window: int | None = None,
    seeds: int = 1,
    steps: int | None = None,
    baseline_gp: bool = False,
    overwrite: bool = False,
    resources: dict[str, float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Run the DKL automated experiment on pre-acquired data, with its baselines, into ``out`` (``explore.zarr``).

    Every parameter is checked before anything is read, what depends on the
    data (the budget against the pixels, the scalarizer's bands against the
    energy axis) before any run; ``out`` is checked first of all.

    Parameters
    ----------
    inputs : sequence of path
        Files read by RosettaSciIO (a structural image and the spectrum image
        on its grid, in one file or several), or one montage store (:func:`load_inputs`).
    out : path
        The record to write, ``.../explore.zarr`` (a temporary sibling renamed when complete).
    scalarizer : str
        The spec of :func:`~xsi_dask.active.scalarizers.parse_scalarizer`,
        on the spectra's energy axis (in its units, eV or keV, unless the spec's
        ``units=`` says otherwise), e.g. ``"ratio:1020-1100/924-1004:bg=820-916:units=eV"``.
    acquisition : {"ei", "ucb", "max-std", "thompson"}
        The DKL model's acquisition (:func:`~xsi_dask.active.acquisition.make_acquisition`
        with its defaults); the baselines use the same.
    budget : int
        Measurements per run, ``n_init < budget <= `` the candidate pixels.
    structure : str, optional
        The structural image whose patches are the features (see :func:`load_inputs`).
    features : path, optional
        A results store whose SVD scores / NMF abundances are the features (store input).
    feature_group : {"svd", "nmf"}, optional
        See :func:`load_inputs`.
    n_init : int, optional
        The random start; default :func:`default_n_init` (0.5 % of the pixels, at least 5).
    window : int, optional
        Odd side of the structural patches, pixels (default 5); only with ``structure``.
    seeds : int
        Runs ``0 .. seeds-1`` of every method (default 1).
    steps : int, optional
        Adam steps per fit of the DKL model (and the plain GP); default ``dkl_factory``'s.
    baseline_gp : bool
        Also run the plain GP on pixel coordinates with the same acquisition.
    overwrite : bool
        Replace an existing record of ours at ``out``.
    resources : dict, optional
        Passed to :func:`~xsi_dask.active.loop.run_experiment`.
    progress : callable, optional
        Called with one line per run started.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ParameterError
        A true map whose every candidate is at or above the top-1 % threshold
        (a constant map: every pixel ties). A parameter out of range (budget < 2 or above the candidate pixels,
        n_init >= budget, an even or non-positive window or one without
        ``structure``, seeds < 1, steps < 1),
        an unknown acquisition, a bad scalarizer spec or band, and the input
        errors of :func:`load_inputs`.
    StoreExistsError, NotOurOutputError, OutputWriteError
        ``out`` exists (ours, without ``overwrite``; not ours, always) or cannot be written.
    NoSpectrumImageError, InputFileNotFoundError, UnsupportedFormatError, CorruptFileError
        See :func:`load_inputs`.

    References
    ----------
    Roccapriore, K. M., Kalinin, S. V. & Ziatdinov, M. (2022). Physics
    discovery in nanoplasmonic systems via autonomous experiments in scanning
    transmission electron microscopy. Adv. Sci. 9, 2203422,
    https://doi.org/10.1002/advs.202203422.
    """
    out = Path(out)
    check_target(out, overwrite=overwrite)
    resources = _check_resources(resources)
    p = _check_parameters(structure=structure, features=features, feature_group=feature_group, scalarizer=scalarizer,
                          acquisition=acquisition, budget=budget, n_init=n_init, window=window, seeds=seeds, steps=steps)
    from .acquisition import make_acquisition
    from .features import coordinate_features
    from .loop import run_experiment
    from .model import dkl_factory, feature_bounds, plain_gp_factory

    data = load_inputs(inputs, structure=structure, features=features, feature_group=feature_group, window=p["window"])
    n = data.features.n_pixels
    n_init_ = p["n_init"] if p["n_init"] is not None else default_n_init(n)
    if p["budget"] > n:
        raise ParameterError(f"budget ({p['budget']}) exceeds the {n} candidate pixels ({data.features.shape[0]} x "
                             f"{data.features.shape[1]})")
    if n_init_ >= p["budget"]:
        raise ParameterError(f"the random start of {n_init_} pixels (n_init{'' if p['n_init'] else ': 0.5 % of the pixels, at least 5'}) "
                             f"must be below the budget ({p['budget']})")
    scal = parse_scalarizer(scalarizer, energy=data.energy, units=data.units)
    if scal.kind != "spectrum":
        raise ParameterError(f"scalarizer {scalarizer!r} takes {scal.kind}s; the inputs give spectra (band, integral, "
                             "ratio, max, maxpos, ...)")
    fit_kw = {} if p["steps"] is None else {"steps": p["steps"]}
    model = dkl_factory(feature_bounds(data.features.values), **fit_kw)
    coords = coordinate_features(data.features)
    gp = plain_gp_factory(feature_bounds(coords.values), **fit_kw) if baseline_gp else None

    t0 = time.perf_counter()
    truth = _on_candidates(data.true_map(scal), data.features)
    truth_seconds = time.perf_counter() - t0
    bad = data.features.yx[~np.isfinite(truth[data.features.yx[:, 0], data.features.yx[:, 1]])]
    if len(bad):
        raise ParameterError(f"scalarizer {scalarizer!r} gives a non-finite value at {len(bad)} pixel(s), first (y, x) = "
                             f"{tuple(int(v) for v in bad[0])}: the experiment could not measure it (choose bands with counts)")
    top, threshold = _top_mask(truth)
    if top.sum() == n:
        lo = float(np.nanmin(truth))
        raise ParameterError(f"scalarizer {scalarizer!r}: every one of the {n} candidate pixels is at or above the top "
                             f"{TOP_FRACTION:.0%} threshold ({threshold:.6g}; the smallest value is {lo:.6g}"
                             + (", the map is constant" if lo == float(np.nanmax(truth)) else "")
                             + "): any measurement is a discovery and the scores would be meaningless; choose bands "
                             "whose value varies over the pixels")

    kw = dict(scalarizer=scal, acquisition=make_acquisition(acquisition), n_init=n_init_, budget=p["budget"],
              resources=resources)
    runs: dict[str, dict[int, xr.Dataset]] = {"dkl": {}, "random": {}}
    if gp is not None:
        runs["gp"] = {}
    for seed in range(p["seeds"]):
        for method in runs:
            if progress is not None:
                progress(f"{method} seed {seed}: {p['budget']} measurements")
            t0 = time.perf_counter()
            if method == "dkl":
                ds = run_experiment(data.features, data.measure, model_factory=model, seed=seed, **kw)
            elif method == "gp":
                ds = run_experiment(coords, data.measure, model_factory=gp, seed=seed, **kw)
            else:
                ds = random_baseline(data.features, truth, runs["dkl"][seed], seed=seed)
            recall, best = discovery(ds, truth)
            ds = ds.assign(recall=("step", recall), best_true=("step", best))
            ds.attrs.update({f"final_{k}": v for k, v in scores(ds, truth).items()})
            ds.attrs["method"] = method
            ds.attrs["run_seconds"] = time.perf_counter() - t0
            runs[method][seed] = ds

    truth_ds = xr.Dataset(
        {"true_value": (("y", "x"), truth, {"description": f"the scalarizer {scalarizer!r} on every pixel"}),
         "top": (("y", "x"), top, {"description": f"true value in the top {TOP_FRACTION:.0%}"}),
         "image": (("y", "x"), data.image, {"description": f"structural image {data.image_name!r}"})},
        coords={"y": np.arange(truth.shape[0]), "x": np.arange(truth.shape[1])},
        attrs={"top_fraction": TOP_FRACTION, "top_threshold": threshold, "n_top": _n_top(truth), "n_at_or_above": int(top.sum()),
               "seconds": truth_seconds},
    )
    params = {
        "inputs": data.sources, "structure": structure, "features": None if features is None else str(features),
        "feature_group": feature_group, "feature_columns": len(data.features.names), "image": data.image_name,
        "spectra": data.spectra_name, "energy_units": data.units, "scalarizer": scalarizer, "acquisition": acquisition,
        "budget": p["budget"], "n_init": n_init_, "n_init_given": p["n_init"] is not None, "window": p["window"],
        "seeds": list(range(p["seeds"])), "steps": p["steps"], "baseline_gp": bool(baseline_gp),
        "methods": list(runs), "n_candidates": n, "shape": list(data.features.shape),
        "model": repr(model), "baseline_model": repr(gp) if gp is not None else None,
    }
    return _write(out, truth_ds, runs, params, overwrite)
