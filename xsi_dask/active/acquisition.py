"""Acquisition functions on a finite candidate set (the unmeasured pixels) and the choice of the next one.

The analytic functions take the marginal posterior (mean and standard deviation per candidate,
as :meth:`xsi_dask.active.model.DKLModel.predict` returns them, in the units of the scalar) and
follow BoTorch's analytic acquisitions exactly (``ExpectedImprovement``,
``UpperConfidenceBound``): the same formulas, maximization by default, and the posterior
variance clamped below at 1e-12 (BoTorch's ``min_var``), so that they give BoTorch's values on
the same posterior. :func:`thompson` draws one joint posterior sample from the model.
:func:`penalize` lowers the values near measured points; :func:`next_candidate` picks the best
unmeasured candidate.

References
----------
Jones, D. R., Schonlau, M. & Welch, W. J. (1998). Efficient global optimization of expensive
black-box functions. J. Global Optim. 13, 455-492. doi:10.1023/A:1008306431147 (EI).
Srinivas, N., Krause, A., Kakade, S. & Seeger, M. (2010). Gaussian process optimization in the
bandit setting: no regret and experimental design. ICML. arXiv:0912.3995 (UCB).
Thompson, W. R. (1933). On the likelihood that one unknown probability exceeds another in view
of the evidence of two samples. Biometrika 25, 285-294. doi:10.2307/2332286.
Eriksson, D. et al. (2019). Scalable global optimization via local Bayesian optimization.
NeurIPS 32. arXiv:1910.01739 (Thompson sampling on a random subset of candidates).
Balandat, M. et al. (2020). BoTorch: a framework for efficient Monte-Carlo Bayesian
optimization. NeurIPS 33. arXiv:1910.06403.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import ndtr

from ..errors import ParameterError

__all__ = ["expected_improvement", "max_uncertainty", "next_candidate", "penalize", "thompson", "upper_confidence_bound"]

_MIN_VAR = 1e-12  # BoTorch's AnalyticAcquisitionFunction._mean_and_sigma(min_var=1e-12)
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def _mean_std(mean, std):
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    if mean.ndim != 1 or std.shape != mean.shape:
        raise ParameterError(f"mean and std: expected two 1-D arrays of one length (n_candidates,), got {mean.shape} and {std.shape}")
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ParameterError("mean and std: non-finite values (NaN or inf) in the posterior")
    if (std < 0).any():
        raise ParameterError(f"std: {int((std < 0).sum())} negative values (minimum {std.min()!r})")
    return mean, np.sqrt(np.maximum(std * std, _MIN_VAR))


def expected_improvement(mean, std, best_f: float, *, maximize: bool = True) -> np.ndarray:
    """Expected improvement over the best observed value, per candidate.

    EI = sigma (phi(u) + u Phi(u)),  u = (mu - best_f) / sigma  (u = (best_f - mu) / sigma when
    minimizing), with phi and Phi the standard normal density and distribution function;
    sigma^2 is clamped below at 1e-12 as in BoTorch.

    Parameters
    ----------
    mean, std : array_like of shape (n_candidates,)
        Posterior mean and standard deviation of the latent function, in the units of y.
    best_f : float
        The best value observed so far (the maximum of the measured y when maximizing).
    maximize : bool, default True

    Returns
    -------
    ndarray of shape (n_candidates,), float64, >= 0, in the units of y.

    Raises
    ------
    ParameterError
        For mean and std of different shapes, not 1-D, not finite, a negative std, or a
        non-finite ``best_f``.
    """
    mu, sigma = _mean_std(mean, std)
    if not np.isfinite(best_f):
        raise ParameterError(f"best_f: must be finite, got {best_f!r}")
    u = (mu - best_f) / sigma
    if not maximize:
        u = -u
    return sigma * (_INV_SQRT_2PI * np.exp(-0.5 * u * u) + u * ndtr(u))


def upper_confidence_bound(mean, std, beta: float, *, maximize: bool = True) -> np.ndarray:
    """Upper confidence bound in BoTorch's convention: mu + sqrt(beta) sigma (-mu + sqrt(beta) sigma when minimizing).

    Parameters
    ----------
    mean, std : array_like of shape (n_candidates,)
    beta : float
        Trade-off, >= 0 (beta = 4 gives the upper end of a 2-sigma interval).
    maximize : bool, default True

    Returns
    -------
    ndarray of shape (n_candidates,), float64, in the units of y.

    Raises
    ------
    ParameterError
        As :func:`expected_improvement`, or for a negative or non-finite ``beta``.
    """
    mu, sigma = _mean_std(mean, std)
    if not (np.isfinite(beta) and beta >= 0):
        raise ParameterError(f"beta: must be a finite number >= 0, got {beta!r}")
    return (mu if maximize else -mu) + np.sqrt(beta) * sigma


def max_uncertainty(std) -> np.ndarray:
    """Maximum uncertainty (pure exploration): the posterior standard deviation itself, shape (n_candidates,).

    Clamped below at 1e-6 (variance 1e-12) like BoTorch's ``PosteriorStandardDeviation``.

    Raises
    ------
    ParameterError
        For a std not 1-D, not finite or negative.
    """
    s = np.asarray(std, dtype=np.float64)
    return _mean_std(np.zeros(s.shape), s)[1]


def thompson(model, candidates, *, seed: int, measured=None, max_joint: int = 2048, maximize: bool = True) -> np.ndarray:
    """Thompson sampling: one joint posterior draw of the latent function over the candidates.

    Parameters
    ----------
    model : DKLModel or PlainGP
        A fitted model (:meth:`~xsi_dask.active.model.DKLModel.sample` is called).
    candidates : array_like of shape (n_candidates, n_features)
    seed : int
        Seeds both the choice of the subset (NumPy) and the normal draws (``torch.Generator``).
    measured : array_like of int, optional
        Indices of measured candidates: they are left out of the draw (value -inf).
    max_joint : int, default 2048
        Most candidates in one joint draw. The draw needs the dense posterior covariance and its
        Cholesky factor, 2 m^2 float64 values and O(m^3) time for m candidates (64 MiB and about
        0.1 s for m = 2048; 400 MiB and seconds for 5,000). With more unmeasured candidates, the
        draw is over a random subset of ``max_joint`` of them (seeded) and the others get -inf:
        the practice of TuRBO (Eriksson et al. 2019), exact on the subset, rather than an
        approximate prior (random Fourier features) over all.
    maximize : bool, default True
        When False the draw is negated, so that the largest value is still the choice.

    Returns
    -------
    ndarray of shape (n_candidates,), float64
        The draw (in the units of y) on the candidates drawn, -inf elsewhere.

    Raises
    ------
    ParameterError
        For ``max_joint`` below 1, measured indices out of range, or no unmeasured candidate.
    """
    c = np.asarray(candidates, dtype=np.float64)
    if c.ndim != 2:
        raise ParameterError(f"candidates: expected shape (n_candidates, n_features), got {c.shape}")
    if int(max_joint) < 1:
        raise ParameterError(f"max_joint: must be >= 1, got {max_joint}")
    free = np.flatnonzero(_free_mask(c.shape[0], measured))
    if free.size > max_joint:
        free = np.sort(np.random.default_rng(seed).choice(free, size=int(max_joint), replace=False))
    out = np.full(c.shape[0], -np.inf)
    draw = model.sample(c[free], seed=seed, n_samples=1)[0]
    out[free] = draw if maximize else -draw
    return out


def penalize(values, candidate_coords, measured_coords, *, radius: float, weight: float = 1.0) -> np.ndarray:
    """Lower acquisition values near already-measured points.

    a'_i = a_i - weight (max(a) - min(a)) exp(-d_i^2 / (2 radius^2)),

    with d_i the Euclidean distance from candidate i to the nearest measured point (a k-d tree,
    O(n log n)). Shift- and scale-invariant in a, so it suits UCB and Thompson values (which can
    be negative) as well as EI; with ``weight`` >= 1 a candidate on a measured point ranks no
    higher than the worst candidate far from all. Non-finite values (-inf outside a Thompson
    draw) are left as they are and ignored for max(a) - min(a).

    Parameters
    ----------
    values : array_like of shape (n_candidates,)
    candidate_coords : array_like of shape (n_candidates, n_dims)
        Where the candidates are, e.g. pixel coordinates (y, x), in the units of ``radius``.
    measured_coords : array_like of shape (n_measured, n_dims)
    radius : float
        Length scale of the penalty, > 0 (pixels for pixel coordinates).
    weight : float, default 1.0
        Depth of the penalty relative to the range of the values, >= 0.

    Returns
    -------
    ndarray of shape (n_candidates,), float64

    Raises
    ------
    ParameterError
        For mismatched shapes, a non-positive radius or a negative weight.
    """
    a = np.asarray(values, dtype=np.float64)
    cc = np.asarray(candidate_coords, dtype=np.float64)
    mc = np.asarray(measured_coords, dtype=np.float64)
    if a.ndim != 1 or cc.ndim != 2 or cc.shape[0] != a.shape[0]:
        raise ParameterError(f"values {a.shape} and candidate_coords {cc.shape}: expected (n,) and (n, n_dims)")
    if mc.ndim != 2 or mc.shape[1] != cc.shape[1]:
        raise ParameterError(f"measured_coords: expected shape (n_measured, {cc.shape[1]}), got {mc.shape}")
    if not (np.isfinite(radius) and radius > 0):
        raise ParameterError(f"radius: must be a positive number, got {radius!r}")
    if not (np.isfinite(weight) and weight >= 0):
        raise ParameterError(f"weight: must be a finite number >= 0, got {weight!r}")
    finite = np.isfinite(a)
    if mc.shape[0] == 0 or not finite.any():
        return a.copy()
    d, _ = cKDTree(mc).query(cc, k=1)
    span = a[finite].max() - a[finite].min()
    out = a.copy()
    out[finite] -= weight * span * np.exp(-0.5 * (d[finite] / radius) ** 2)
    return out


def _free_mask(n: int, measured) -> np.ndarray:
    free = np.ones(n, dtype=bool)
    if measured is not None:
        m = np.asarray(measured)
        if m.size:
            if not np.issubdtype(m.dtype, np.integer):
                raise ParameterError(f"measured: expected integer candidate indices, got dtype {m.dtype}")
            if m.min() < 0 or m.max() >= n:
                raise ParameterError(f"measured: indices must be in [0, {n}), got {int(m.min())}..{int(m.max())}")
            free[m.ravel()] = False
    if not free.any():
        raise ParameterError(f"measured: all {n} candidates are measured, none is left to choose")
    return free


def next_candidate(values, measured=None) -> int:
    """Index of the unmeasured candidate with the largest acquisition value (the first one on a tie).

    Parameters
    ----------
    values : array_like of shape (n_candidates,)
        Acquisition values; -inf marks a candidate that is not to be chosen.
    measured : array_like of int, optional
        Indices of candidates measured already; never returned.

    Returns
    -------
    int

    Raises
    ------
    ParameterError
        For values not 1-D or with NaN, measured indices out of range, or no unmeasured
        candidate with a finite value.
    """
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ParameterError(f"values: expected shape (n_candidates,), got {a.shape}")
    if np.isnan(a).any():
        raise ParameterError(f"values: {int(np.isnan(a).sum())} NaN acquisition values")
    free = _free_mask(a.shape[0], measured)
    a = np.where(free, a, -np.inf)
    i = int(np.argmax(a))
    if not np.isfinite(a[i]):
        raise ParameterError("values: no unmeasured candidate has a finite acquisition value")
    return i
