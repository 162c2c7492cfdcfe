"""Physics-based XSI montage simulator with ground truth, written straight into the sparse store.

Particles are generated once for the whole montage (seeded, in global pixel
coordinates, so they continue across tile borders and overlaps); each tile is
then simulated by one task: its phase abundance maps are rasterised (area
fractions, anti-aliased disks), and a numba kernel draws, pixel by pixel, a
Poisson number of counts and for each count a phase (by abundance x X-ray
yield) and a channel (by that phase's spectrum). A Poisson total split
multinomially is the same as independent Poisson counts per channel, so every
voxel is Poisson with mean dose x sum_p a_p y_p s_p(channel). The kernel emits
CSR directly: no dense tile is ever formed, and memory per task is one tile's
counts.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numba
import numpy as np
import xarray as xr
import zarr
from dask.system import CPU_COUNT

from ..errors import LayoutError, XSIError
from ..io._csr import grow
from ..io.layout import parse_grid
from ..io.readers import EnergyAxis
from ..io.store import CHECKED_ZSTD, MontageStore, atomic_output, check_output, write_montage_attrs, write_tile
from .physics import Detector, mean_z, phase_spectrum, zero_peak_spectrum
from .presets import PRESETS, Preset

__all__ = ["SimulationPlan", "open_truth", "simulate"]


@numba.njit(nogil=True, cache=True)
def _sample_counts(seed, lam, cum_phase, cdfs, cap):  # pragma: no cover - compiled
    """CSR (pixels x channels) of Poisson counts; see the module docstring."""
    np.random.seed(seed)
    npix = lam.size
    n_phase = cdfs.shape[0]
    n_chan = cdfs.shape[1]
    indptr = np.zeros(npix + 1, np.int64)
    indices = np.empty(cap, np.int32)
    values = np.empty(cap, np.uint32)
    buf = np.empty(256, np.int64)
    nnz = 0
    total = 0
    for i in range(npix):
        n = np.random.poisson(lam[i])
        if n > buf.size:
            buf = np.empty(2 * n, np.int64)
        for c in range(n):
            u = np.random.random()
            p = 0
            while p < n_phase - 1 and u > cum_phase[i, p]:
                p += 1
            v = np.random.random()
            lo = 0
            hi = n_chan - 1
            while lo < hi:
                mid = (lo + hi) >> 1
                if cdfs[p, mid] < v:
                    lo = mid + 1
                else:
                    hi = mid
            buf[c] = lo
        chans = np.sort(buf[:n])
        k = 0
        while k < n:
            ch = chans[k]
            m = 1
            while k + m < n and chans[k + m] == ch:
                m += 1
            if nnz == indices.size:
                indices, values = grow(indices, values, nnz)
            indices[nnz] = ch
            values[nnz] = m
            nnz += 1
            k += m
        total += n
        indptr[i + 1] = nnz
    return indptr, indices[:nnz].copy(), values[:nnz].copy(), total


@dataclass
class SimulationPlan:
    """Everything a tile task needs: particles, phase spectra, yields, doses, layout."""

    preset: Preset
    rows: int
    cols: int
    height: int
    width: int
    overlap: int
    energy: EnergyAxis
    spectra: np.ndarray  # (phase, channel), each summing to 1
    yields: np.ndarray  # (phase,) relative detected X-ray yield
    dose_scale: float  # counts per unit yield at dose 1
    doses: np.ndarray  # (tile,)
    particles: np.ndarray  # (n, 4): phase index, y, x (global px), radius (px)
    seed: int
    zero_peak_rate: float = 0.0  # mean counts per pixel in the detector's zero peak (every pixel, every tile)
    zero_peak: np.ndarray | None = None  # (channel,) its spectrum, summing to 1

    @property
    def n_tiles(self) -> int:
        return self.rows * self.cols

    def origin(self, t: int) -> tuple[int, int]:
        r, c = divmod(t, self.cols)
        return r * (self.height - self.overlap), c * (self.width - self.overlap)

    def abundances(self, t: int) -> np.ndarray:
        """Area fraction of each phase per pixel of tile ``t``, shape (y, x, phase), summing to 1."""
        y0, x0 = self.origin(t)
        h, w = self.height, self.width
        n_phase = len(self.preset.phases)
        cover = np.zeros((h, w, n_phase))
        P = self.particles
        if P.size:
            near = (P[:, 1] + P[:, 3] + 1 > y0) & (P[:, 1] - P[:, 3] - 1 < y0 + h) & (P[:, 2] + P[:, 3] + 1 > x0) & (P[:, 2] - P[:, 3] - 1 < x0 + w)
            for ph, py, px, rad in P[near]:
                ya, yb = max(int(py - rad - 1) - y0, 0), min(int(py + rad + 2) - y0, h)
                xa, xb = max(int(px - rad - 1) - x0, 0), min(int(px + rad + 2) - x0, w)
                yy, xx = np.mgrid[ya:yb, xa:xb]
                d = np.hypot(yy + y0 + 0.5 - py, xx + x0 + 0.5 - px)
                frac = np.clip(rad + 0.5 - d, 0.0, 1.0)  # anti-aliased disk
                np.maximum(cover[ya:yb, xa:xb, int(ph)], frac, out=cover[ya:yb, xa:xb, int(ph)])
        particles = cover[:, :, 1:]
        s = particles.sum(axis=2)
        over = s > 1.0
        particles[over] /= s[over][:, None]  # overlapping particles share the pixel
        cover[:, :, 0] = 1.0 - particles.sum(axis=2)
        return cover

    def haadf(self, ab: np.ndarray, t: int) -> np.ndarray:
        """HAADF-like Z-contrast image: sum_p a_p Zbar_p^1.7, with 2 % noise, uint16."""
        z = np.array([mean_z(p.composition) for p in self.preset.phases]) ** 1.7
        img = ab @ z
        rng = np.random.default_rng([self.seed, t, 7])
        img = img * (1 + 0.02 * rng.standard_normal(img.shape))
        return np.clip(img / z.max() * 40000, 0, 65535).astype(np.uint16)


def _plan(preset: Preset, tiles: tuple[int, int], tile_shape: tuple[int, int], channels: int, counts_per_pixel: float,
          seed: int, overlap: int, low_count_tile: int | None, dose_variation: float, pixel_size_nm: float,
          detector: Detector, energy_scale_kev: float, particle_density: float = 1.0) -> SimulationPlan:
    rows, cols = tiles
    h, w = tile_shape
    if not 0 <= overlap < min(h, w):
        raise LayoutError(f"overlap {overlap} px must be smaller than the tile ({h}x{w} px)")
    n_tiles = rows * cols
    if low_count_tile is not None and not 0 <= low_count_tile < n_tiles:
        raise LayoutError(f"low-count tile {low_count_tile} is not one of the {n_tiles} tiles")
    energy = EnergyAxis(size=channels, offset=0.0, scale=energy_scale_kev)
    spectra, yields = zip(*(phase_spectrum(p.composition, energy.values, beam_kev=preset.beam_kev, detector=detector) for p in preset.phases))
    spectra = np.asarray(spectra)
    yields = np.asarray(yields) / max(yields)
    rng = np.random.default_rng(seed)
    full_h = rows * (h - overlap) + overlap
    full_w = cols * (w - overlap) + overlap
    parts = []
    for k, ph in enumerate(preset.particles, start=1):
        r_px = ph.radius_nm / pixel_size_nm
        mean_area = math.pi * (r_px**2) * math.exp(2 * ph.radius_sigma**2)
        n = max(ph.min_count, int(rng.poisson(particle_density * ph.area_fraction * full_h * full_w / mean_area)))
        radii = np.maximum(r_px * rng.lognormal(0.0, ph.radius_sigma, n), 1.0)
        ys = rng.uniform(0, full_h, n)
        xs = rng.uniform(0, full_w, n)
        parts.append(np.column_stack([np.full(n, k), ys, xs, radii]))
    particles = np.concatenate(parts) if parts else np.zeros((0, 4))
    doses = 1.0 + dose_variation * rng.uniform(-1, 1, n_tiles)
    if low_count_tile is not None:
        doses[low_count_tile] *= 0.1  # an acquisition fault: the beam current dropped
    # dose_scale is calibrated on the rasterised abundances by simulate(): particles
    # overlap, so their area fractions do not simply add up
    return SimulationPlan(preset, rows, cols, h, w, overlap, energy, spectra, yields, float("nan"),
                          doses, particles, seed)


def _mean_rate(plan: SimulationPlan, t: int) -> float:
    """Mean detected yield per pixel of tile ``t`` at unit dose (abundances x phase yields)."""
    return float((plan.abundances(t) @ plan.yields).mean())


def _simulate_tile(plan: SimulationPlan, t: int, tiles_g: zarr.Group, stage_scale: float) -> dict[str, Any]:
    ab = plan.abundances(t)
    h, w, n_phase = ab.shape
    weighted = ab.reshape(-1, n_phase) * plan.yields[None, :]
    spectra = plan.spectra
    if plan.zero_peak_rate > 0:  # the zero peak as one more source of counts, the same mean in every pixel
        weighted = np.column_stack([weighted * (plan.dose_scale * plan.doses[t]), np.full(h * w, plan.zero_peak_rate)])
        spectra = np.vstack([spectra, plan.zero_peak])
        rate = weighted.sum(1)
        lam = rate
    else:
        rate = weighted.sum(1)
        lam = plan.dose_scale * plan.doses[t] * rate
    cum = np.cumsum(weighted / np.where(rate > 0, rate, 1.0)[:, None], axis=1)
    cdfs = np.cumsum(spectra, axis=1)
    cdfs /= cdfs[:, -1:]
    cap = int(lam.sum() * 1.05) + 1024
    indptr, indices, values, total = _sample_counts(np.uint32(hash((plan.seed, t)) & 0x7FFFFFFF), lam, cum, cdfs, cap)
    y0, x0 = plan.origin(t)
    r, c = divmod(t, plan.cols)
    attrs = {
        "row": r, "col": c, "source": f"simulated:{plan.preset.name}",
        "stage_y": y0 * stage_scale, "stage_x": x0 * stage_scale, "window": [y0, y0 + h, x0, x0 + w],
        "dose": float(plan.doses[t]),
    }
    summary = write_tile(tiles_g, str(t), indptr, indices, values, (h, w), plan.energy.size, {"HAADF": plan.haadf(ab, t)}, attrs)
    tiles_g[str(t)].create_array("truth_abundances", data=ab.astype(np.float32), chunks=(h, w, n_phase), compressors=CHECKED_ZSTD)
    return {**attrs, **summary, "generated_counts": int(total)}


def simulate(
    out: str | Path,
    *,
    preset: str = "grade91_replica",
    tiles: str | tuple[int, int] = "2x2",
    tile_shape: str | tuple[int, int] = "128x128",
    channels: int = 4096,
    counts_per_pixel: float = 50.0,
    seed: int = 0,
    overlap: int = 0,
    low_count_tile: int | None = None,
    dose_variation: float = 0.05,
    particle_density: float = 1.0,
    pixel_size_nm: float | None = None,
    energy_scale_kev: float = 0.01,
    detector: Detector = Detector(),  # noqa: B008 (frozen dataclass, never mutated)
    zero_peak: float = 0.0,
    overwrite: bool = False,
    threads: int | None = None,
    progress: bool = True,
) -> MontageStore:
    """Simulate an EDS spectrum-image montage with ground truth into a sparse store.

    Parameters
    ----------
    out : path
        The store to write (refused if it exists, unless ``overwrite``).
    preset : {"grade91_replica", "am_aluminum"}
        Sample (see :mod:`xsi_dask.testing.presets`).
    tiles, tile_shape : "RxC", "HxW"
        Montage grid and pixels per tile.
    channels : int
        Energy channels of ``energy_scale_kev`` (default 10 eV) from 0 keV.
    counts_per_pixel : float
        Mean counts per pixel over the montage at dose 1.
    seed : int
        Everything (particles, doses, counts) is deterministic for a seed.
    overlap : int
        Pixels shared by neighbouring tiles; stage positions follow.
    low_count_tile : int, optional
        This tile gets a tenth of the dose (a beam-current fault).
    dose_variation : float
        Per-tile dose drawn uniformly in 1 +- this.
    particle_density : float
        Multiplies the number of particles of every phase (default 1: the
        preset's area fractions; replicas vary in particle density). Particles
        may overlap, so the covered area grows more slowly than this.
    pixel_size_nm : float, optional
        Default: the preset's (2 nm).
    zero_peak : float
        Fraction of all counts in the detector's zero (strobe) peak, in [0, 1)
        (default 0: none; the Bruker 50x50 test map holds 0.17): a Gaussian at
        0 keV of FWHM(0) from the detector's resolution
        (:func:`~xsi_dask.testing.physics.zero_peak_spectrum`), the same mean
        in every pixel of every tile (it comes with the live time, not the
        beam). It is added to the X-rays (``counts_per_pixel`` and the truth
        count X-rays only), so the mean counts per pixel become
        ``counts_per_pixel / (1 - zero_peak)``.

    Returns
    -------
    MontageStore
        A store like :func:`xsi_dask.ingest` writes, plus per tile
        ``truth_abundances (y, x, phase)`` and a ``HAADF`` image, and the group
        ``truth`` with the phase spectra; see :func:`open_truth`.

    Raises
    ------
    XSIError
        Unknown preset, particle density < 0, counts per pixel <= 0, a zero
        peak fraction outside [0, 1);
        LayoutError for bad tiles/overlap; StoreExistsError.
    """
    started = time.perf_counter()
    if preset not in PRESETS:
        raise XSIError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    pre = PRESETS[preset]
    check_output(out, "montage", overwrite=overwrite)  # before any work: never replaces what is not ours
    grid = parse_grid(tiles, "tiles")
    shape = parse_grid(tile_shape, "tile shape")
    px_nm = float(pixel_size_nm or pre.pixel_size_nm)
    if not (math.isfinite(particle_density) and particle_density >= 0):
        raise XSIError(f"particle_density must be a finite number >= 0; got {particle_density!r}")
    if not (math.isfinite(counts_per_pixel) and counts_per_pixel > 0):
        raise XSIError(f"counts_per_pixel must be a positive number; got {counts_per_pixel!r}")
    if isinstance(zero_peak, bool) or not isinstance(zero_peak, (int, float)) or not 0 <= zero_peak < 1:
        raise XSIError(f"zero_peak must be the fraction of the counts in the zero peak, 0 <= f < 1 (e.g. 0.15); got {zero_peak!r}")
    plan = _plan(pre, grid, shape, int(channels), float(counts_per_pixel), int(seed), int(overlap), low_count_tile,
                 float(dose_variation), px_nm, detector, float(energy_scale_kev), float(particle_density))
    n_threads = threads or CPU_COUNT
    # the dose that gives counts_per_pixel on average at dose 1, from the abundances as rasterised
    plan_d = dask.delayed(plan, traverse=False)
    (rates,) = dask.compute([dask.delayed(_mean_rate, pure=True)(plan_d, t) for t in range(plan.n_tiles)],
                            scheduler="threads", num_workers=n_threads)
    plan = dataclasses.replace(plan, dose_scale=float(counts_per_pixel) / float(np.mean(rates)))
    if zero_peak > 0:  # f of all counts: f / (1 - f) times the mean X-ray counts per pixel over the montage
        xray = plan.dose_scale * float(np.mean(plan.doses * np.asarray(rates)))
        plan = dataclasses.replace(plan, zero_peak_rate=float(zero_peak) / (1.0 - float(zero_peak)) * xray,
                                   zero_peak=zero_peak_spectrum(plan.energy.values, detector.fwhm_mnka_ev))
    stage_scale = px_nm / 1000.0  # um per pixel
    with atomic_output(out, overwrite=overwrite) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        tiles_g = root.create_group("tiles")
        truth = root.create_group("truth", attributes={"phases": [p.name for p in pre.phases],
                                                        "compositions": [p.composition for p in pre.phases],
                                                        "yields": plan.yields.tolist()})
        truth.create_array("spectra", data=plan.spectra)
        truth.create_array("particles", data=plan.particles)
        tasks = [dask.delayed(_simulate_tile, pure=False)(dask.delayed(plan, traverse=False), t, tiles_g, stage_scale) for t in range(plan.n_tiles)]
        if progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar(minimum=1.0):
                (results,) = dask.compute(tasks, scheduler="threads", num_workers=n_threads)
        else:
            (results,) = dask.compute(tasks, scheduler="threads", num_workers=n_threads)
        write_montage_attrs(
            root,
            tiles=results,
            grid=list(grid),
            split=None,
            tile_shape=list(shape),
            energy=plan.energy.to_dict(),
            pixels={"scale_y": stage_scale, "scale_x": stage_scale, "offset_y": 0.0, "offset_x": 0.0, "units": "µm"},
            stage_units="µm",
            image_names=["HAADF"],
            sources=[{"path": f"simulated:{preset}", "shape": None, "signal_type": "EDS_TEM", "dtype": "uint32",
                      "metadata": {"Acquisition_instrument": {"TEM": {"beam_energy": pre.beam_kev,
                                   "Detector": {"EDS": {"energy_resolution_MnKa": detector.fwhm_mnka_ev}}}},
                                   "General": {"title": pre.description}}}],
            generated_counts=sum(r["generated_counts"] for r in results),
            simulation={"preset": preset, "tiles": list(grid), "tile_shape": list(shape), "channels": channels,
                        "counts_per_pixel": counts_per_pixel, "seed": seed, "overlap": overlap,
                        "low_count_tile": low_count_tile, "dose_variation": dose_variation, "particle_density": particle_density,
                        "pixel_size_nm": px_nm, "zero_peak": float(zero_peak),
                        "zero_peak_counts_per_pixel": plan.zero_peak_rate,
                        "detector": detector.__dict__, "dose_scale": plan.dose_scale,
                        "elements": sorted({el for ph in pre.phases for el in ph.composition})},
            ingest_seconds=time.perf_counter() - started,
        )
    return MontageStore(out)


def open_truth(store: str | Path | MontageStore) -> xr.Dataset:
    """Ground truth of a simulated store: ``spectra (phase, energy)`` and ``abundances (tile, y, x, phase)``.

    Abundances are area fractions (summing to 1 per pixel); ``expected_counts``
    gives each phase's expected counts per pixel (area x yield x dose).
    """
    import dask.array as da

    st = store if isinstance(store, MontageStore) else MontageStore(store)
    if "truth" not in st.root:
        raise XSIError(f"{st.path} is not a simulated store (no 'truth' group)")
    tg = st.root["truth"]
    phases = list(tg.attrs["phases"])
    ab = da.stack([da.from_zarr(st.root[f"tiles/{t}/truth_abundances"]) for t in range(st.n_tiles)])
    yields = np.asarray(tg.attrs["yields"])
    doses = np.array([t["dose"] for t in st.tiles])
    scale = float(st.attrs["simulation"]["dose_scale"])
    expected = ab * (yields * scale)[None, None, None, :] * doses[:, None, None, None]
    return xr.Dataset(
        {
            "spectra": (("phase", "energy"), np.asarray(tg["spectra"][:])),
            "abundances": (("tile", "y", "x", "phase"), ab),
            "expected_counts": (("tile", "y", "x", "phase"), expected),
        },
        coords={"phase": phases, "energy": st.energy, "tile": np.arange(st.n_tiles)},
        attrs={"preset": st.attrs["simulation"]["preset"]},
    )
