"""A small NumPy 4D-STEM simulator with a known centre-of-mass field (issue #12 item 7).

A bright-field disk of radius ``R`` detector pixels is shifted, at each scan
pixel, by a smooth field of stripe domains (the kind of data pyxem's
``simulated_stripes`` stands for: a differential-phase-contrast scan of 180°
domains separated by walls). Each diffraction pattern is drawn with Poisson
noise at a given dose; a matching HAADF-like image shows the domains and the
walls. No real 4D-STEM data set ships in an installable package, so this is
the ground truth for the centre-of-mass scalarizers and the DKL benchmark.

The field, in scan pixels ``(y, x)``, with ``u = x cos a + y sin a`` across the
stripes and ``v = -x sin a + y cos a`` along them (a = ``angle_deg``):

* domain variable ``s = tanh(P / (2 pi w) sin(2 pi u / P))`` in [-1, 1]
  (period ``P``, walls of width about ``w`` where ``s`` changes sign);
* wall indicator ``q = 1 - s^2`` (1 on a wall, 0 inside a domain);
* modulation along the walls ``m = 0.75 + 0.25 cos(2 pi v / (2 P))``;
* disk shift (detector pixels) ``d = max_shift (0.5 s t + q m n)`` with ``t``
  the unit vector along the stripes and ``n`` across them: inside a domain the
  beam is deflected along the stripes by ``±max_shift / 2`` (180° domains), on a
  wall across them by up to ``max_shift``, so the largest ``|CoM|`` is rare
  (the walls' maxima of ``m``) and structured;
* HAADF expectation ``haadf_dose (1 + 0.2 s + 0.5 q m)``, Poisson noise.

A disk pattern is ``clip(R + 1/2 - |k - c - d|, 0, 1)`` (a one-pixel linear
edge approximating each pixel's covered fraction), ``c`` the pattern centre
``((ky - 1) / 2, (kx - 1) / 2)``, scaled to ``dose`` expected electrons.

References
----------
Müller, K. et al. (2014). Atomic electric fields revealed by a quantum mechanical
approach to electron picodiffraction. Nat. Commun. 5, 5653.
https://doi.org/10.1038/ncomms6653 (centre of mass as the measured deflection).
Roccapriore, K. M. et al. (2022). Physics discovery in nanoplasmonic systems via
autonomous experiments in STEM. Adv. Sci. 9, 2203422 (the DKL experiment this feeds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ParameterError

__all__ = ["Stem4D", "simulate_4dstem"]


@dataclass(frozen=True)
class Stem4D:
    """A simulated 4D-STEM scan and its ground truth.

    Attributes
    ----------
    data : uint32 array of shape (scan_y, scan_x, ky, kx)
        Electron counts per detector pixel (Poisson).
    shift : float array of shape (scan_y, scan_x, 2)
        The true disk displacement ``(d_y, d_x)`` in detector pixels.
    com : float array of shape (scan_y, scan_x, 2)
        Centre of mass ``(c_y, c_x)`` of the noiseless expected pattern relative
        to the pattern centre, detector pixels: what an unbiased CoM estimator
        recovers (equal to ``shift`` up to the disk edge's sampling, < 0.05 px).
    haadf : uint32 array of shape (scan_y, scan_x)
        HAADF-like image, counts (Poisson).
    haadf_expected : float array of shape (scan_y, scan_x)
        Its noiseless expectation.
    domains : float array of shape (scan_y, scan_x)
        The domain variable ``s`` in [-1, 1].
    disk_radius, dose, seed
        The parameters the scan was drawn with.
    """

    data: np.ndarray
    shift: np.ndarray
    com: np.ndarray
    haadf: np.ndarray
    haadf_expected: np.ndarray
    domains: np.ndarray
    disk_radius: float
    dose: float
    seed: int | None


def _shape2(value, name: str, minimum: int) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a pair of integers; got {value!r}") from None
    if (a, b) != tuple(value) or a < minimum or b < minimum:
        raise ParameterError(f"{name}={tuple(value)!r} must be two integers >= {minimum}")
    return a, b


def _positive(value: float, name: str) -> float:
    if not np.isfinite(value) or value <= 0:
        raise ParameterError(f"{name}={value!r} must be a positive number")
    return float(value)


def simulate_4dstem(
    scan_shape: tuple[int, int] = (48, 48),
    pattern_shape: tuple[int, int] = (32, 32),
    *,
    disk_radius: float = 6.0,
    max_shift: float = 1.5,
    period: float = 16.0,
    angle_deg: float = 30.0,
    wall_width: float = 1.5,
    dose: float = 2000.0,
    haadf_dose: float = 500.0,
    seed: int | None = 0,
) -> Stem4D:
    """Simulate a 4D-STEM scan of stripe domains: shifted bright-field disks, Poisson noise, a HAADF image.

    Parameters
    ----------
    scan_shape : (scan_y, scan_x), default (48, 48)
        Probe positions.
    pattern_shape : (ky, kx), default (32, 32)
        Detector pixels.
    disk_radius : float, default 6.0
        Bright-field disk radius ``R``, detector pixels.
    max_shift : float, default 1.5
        Largest disk displacement, detector pixels (reached on the walls).
    period : float, default 16.0
        Stripe period ``P`` (two domains), scan pixels.
    angle_deg : float, default 30.0
        Direction of the stripes' normal from +x towards +y, degrees.
    wall_width : float, default 1.5
        Domain-wall width ``w``, scan pixels.
    dose : float, default 2000.0
        Expected electrons per diffraction pattern.
    haadf_dose : float, default 500.0
        Expected HAADF counts inside a domain (before its contrast).
    seed : int or None, default 0
        Seed of the :class:`numpy.random.Generator` drawing the noise; the same
        seed gives the same arrays.

    Returns
    -------
    Stem4D

    Raises
    ------
    ParameterError
        If a shape is not a pair of integers (scan >= 1, pattern >= 4), a
        length, dose or width is not positive, or the shifted disk would not fit
        on the detector (``R + max_shift + 1 > min(ky, kx) / 2``: a clipped disk
        biases the centre of mass).

    Notes
    -----
    Memory: the expected patterns are formed densely, 8 bytes x
    scan_y x scan_x x ky x kx (32 MiB at 64 x 64 x 32 x 32), plus the counts at 4 bytes.
    """
    sy, sx = _shape2(scan_shape, "scan_shape", 1)
    ky, kx = _shape2(pattern_shape, "pattern_shape", 4)
    disk_radius = _positive(disk_radius, "disk_radius")
    period = _positive(period, "period")
    wall_width = _positive(wall_width, "wall_width")
    dose = _positive(dose, "dose")
    haadf_dose = _positive(haadf_dose, "haadf_dose")
    if not np.isfinite(max_shift) or max_shift < 0:
        raise ParameterError(f"max_shift={max_shift!r} must be a non-negative number of detector pixels")
    if not np.isfinite(angle_deg):
        raise ParameterError(f"angle_deg={angle_deg!r} must be finite")
    if disk_radius + max_shift + 1 > min(ky, kx) / 2:
        raise ParameterError(
            f"a disk of radius {disk_radius:g} px shifted by up to {max_shift:g} px does not fit on a {ky} x {kx} detector: "
            f"need disk_radius + max_shift + 1 <= {min(ky, kx) / 2:g}; enlarge pattern_shape or reduce them"
        )

    a = np.deg2rad(angle_deg)
    y, x = np.mgrid[0:sy, 0:sx].astype(float)
    u = x * np.cos(a) + y * np.sin(a)
    v = -x * np.sin(a) + y * np.cos(a)
    s = np.tanh(period / (2 * np.pi * wall_width) * np.sin(2 * np.pi * u / period))
    q = 1.0 - s**2
    m = 0.75 + 0.25 * np.cos(2 * np.pi * v / (2 * period))
    n_yx = np.array([np.sin(a), np.cos(a)])  # across the stripes, (y, x)
    t_yx = np.array([np.cos(a), -np.sin(a)])  # along them, (y, x)
    shift = max_shift * (0.5 * s[..., None] * t_yx + (q * m)[..., None] * n_yx)

    cy, cx = (ky - 1) / 2.0, (kx - 1) / 2.0
    dy = np.arange(ky)[None, None, :, None] - cy - shift[..., 0, None, None]
    dx = np.arange(kx)[None, None, None, :] - cx - shift[..., 1, None, None]
    disk = np.clip(disk_radius + 0.5 - np.hypot(dy, dx), 0.0, 1.0)
    expected = disk * (dose / disk.sum(axis=(-2, -1), keepdims=True))
    com = np.stack(
        [
            np.einsum("abij,i->ab", expected, np.arange(ky) - cy) / dose,
            np.einsum("abij,j->ab", expected, np.arange(kx) - cx) / dose,
        ],
        axis=-1,
    )

    rng = np.random.default_rng(seed)
    data = rng.poisson(expected).astype(np.uint32)
    haadf_expected = haadf_dose * (1.0 + 0.2 * s + 0.5 * q * m)
    haadf = rng.poisson(haadf_expected).astype(np.uint32)
    return Stem4D(
        data=data,
        shift=shift,
        com=com,
        haadf=haadf,
        haadf_expected=haadf_expected,
        domains=s,
        disk_radius=disk_radius,
        dose=dose,
        seed=seed,
    )
