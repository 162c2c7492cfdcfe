"""Acquisition functions on a finite candidate set (the unmeasured pixels) and the choice of the next one.

The analytic functions take the marginal posterior (mean and standard deviation per candidate,
as :meth:`xsi_dask.active.model.DKLModel.predict` returns them, in the units of the scalar) and
follow BoTorch's analytic acquisitions exactly (``ExpectedImprovement``,
``UpperConfidenceBound``): the same formulas, maximization by default, and the posterior
variance clamped below at 1e-12 (BoTorch's ``min_var``), so that they give BoTorch's values on
the same posterior. :func:`thompson` draws one joint posterior sample from the model.
:func:`penalize` lowers the values near measured points; :func:`next_candidate` picks the best
unmeasured candidate. :func:`make_acquisition` builds the named acquisitions the experiment loop
(:func:`xsi_dask.active.run_experiment`) calls, ``acquisition(mean, std, measured, rng, ...) ->
(index, values)``.

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

__all__ = [
    "ACQUISITIONS",
    "LoopAcquisition",
    "expected_improvement",
    "make_acquisition",
    "max_uncertainty",
    "next_candidate",
    "penalize",
    "thompson",
    "upper_confidence_bound",
]

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


# ---- named acquisitions in the experiment loop's protocol ----

ACQUISITIONS = ("ei", "ucb", "max-std", "thompson", "random")
# the options each name takes (anything else raises: nothing silently ignored)
_ACQ_OPTIONS = {
    "ei": {"maximize"},
    "ucb": {"beta", "maximize"},
    "max-std": set(),
    "thompson": {"maximize", "max_joint"},
    "random": set(),
}


class LoopAcquisition:
    """A named acquisition in the loop's protocol: ``acq(mean, std, measured, rng, **extra) -> (index, values)``.

    Built by :func:`make_acquisition`; picklable (it travels to the training worker when it
    needs the model). See :mod:`xsi_dask.active.loop` for the protocol.

    Attributes
    ----------
    name : str
        One of :data:`ACQUISITIONS`.
    options : dict
        The options it was built with (defaults filled in).
    requires : tuple of str
        The extras the loop passes: ``("observed",)`` for "ei" (the best measured value is
        ``best_f``), ``("model_values",)`` for "thompson" (a joint posterior draw made on the
        training worker by :meth:`model_values`), ``()`` otherwise.

    Notes
    -----
    The returned ``values`` (the acquisition map) hold -inf at measured candidates, and the
    index is the unmeasured candidate with the largest value (:func:`next_candidate`: the
    first one on a tie). "random" (the baseline of a model with random acquisition) draws
    uniform(0, 1) values for the unmeasured candidates from the loop's ``rng``, so its choice
    is uniform over them and reproducible for the loop's seed.
    """

    def __init__(self, name: str, options: dict):
        self.name = name
        self.options = dict(options)
        self.requires: tuple[str, ...] = {"ei": ("observed",), "thompson": ("model_values",)}.get(name, ())
        self.__qualname__ = f"acquisition {name}" + (f" {self.options}" if self.options else "")

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"make_acquisition({self.name!r}{', ' if opts else ''}{opts})"

    def model_values(self, model, X, train, seed: int) -> np.ndarray:
        """A Thompson draw on the fitted ``model`` over all candidates ``X``, -inf at the measured rows ``train``.

        Run by the loop inside the training task (only for "thompson"); see :func:`thompson`.
        """
        if self.name != "thompson":
            raise ParameterError(f"acquisition {self.name!r} takes no model values; only 'thompson' does")
        return thompson(model, X, seed=int(seed), measured=np.asarray(train, dtype=np.int64),
                        max_joint=self.options["max_joint"], maximize=self.options["maximize"])

    def __call__(self, mean, std, measured, rng, *, observed=None, model_values=None) -> tuple[int, np.ndarray]:
        m = np.asarray(measured)
        if m.dtype != bool or m.ndim != 1:
            raise ParameterError(f"measured: expected a boolean mask of shape (n_candidates,), got {m.dtype} {m.shape}")
        if m.all():
            raise ParameterError(f"measured: all {m.size} candidates are measured, none is left to choose")
        done = np.flatnonzero(m)
        if self.name == "ei":
            obs = None if observed is None else np.asarray(observed, dtype=np.float64)
            if obs is None or obs.shape != m.shape or not np.isfinite(obs[m]).all() or not m.any():
                raise ParameterError("acquisition 'ei': needs observed, the finite scalar values of the measured "
                                     f"candidates (shape {m.shape}), and at least one measured candidate")
            best_f = float(obs[m].max() if self.options["maximize"] else obs[m].min())
            values = expected_improvement(mean, std, best_f, maximize=self.options["maximize"])
        elif self.name == "ucb":
            values = upper_confidence_bound(mean, std, self.options["beta"], maximize=self.options["maximize"])
        elif self.name == "max-std":
            values = max_uncertainty(std)
        elif self.name == "thompson":
            if model_values is None:
                raise ParameterError("acquisition 'thompson': needs model_values, the posterior draw of the fitted model "
                                     "(the loop passes it; see model_values())")
            values = np.asarray(model_values, dtype=np.float64).copy()
        else:  # random
            values = np.full(m.shape, -np.inf)
            values[~m] = rng.random(int((~m).sum()))
        if values.shape != m.shape:
            raise ParameterError(f"acquisition {self.name!r}: {values.shape[0]} values for {m.size} candidates")
        values = np.asarray(values, dtype=np.float64).copy()
        values[m] = -np.inf
        return next_candidate(values, done), values


def make_acquisition(name: str, **options) -> LoopAcquisition:
    """A named acquisition for :func:`xsi_dask.active.run_experiment`.

    Parameters
    ----------
    name : {"ei", "ucb", "max-std", "thompson", "random"}
        "ei": :func:`expected_improvement` over the best measured value (``best_f`` = the
        maximum of the measured scalars; the minimum with ``maximize=False``). "ucb":
        :func:`upper_confidence_bound`. "max-std": :func:`max_uncertainty`. "thompson":
        :func:`thompson`, one joint posterior draw per step on the training worker (the model
        must have ``sample``, as :class:`~xsi_dask.active.model.DKLModel` has). "random": a
        uniform choice among the unmeasured candidates (the DKL-with-random-acquisition
        baseline; the model is still fitted, for its maps).
    **options
        ``maximize`` (bool, default True) for "ei", "ucb", "thompson"; ``beta`` (float >= 0,
        default 4.0: the upper end of a 2-sigma interval) for "ucb"; ``max_joint`` (int >= 1,
        default 2048) for "thompson".

    Returns
    -------
    LoopAcquisition
        ``acq(mean, std, measured, rng, **extra) -> (index, values)``, ``values`` of shape
        ``(n_candidates,)`` (in the units of the scalar for "ei", "ucb", "max-std", "thompson")
        with -inf at the measured candidates, ``index`` the unmeasured candidate of the largest
        value.

    Raises
    ------
    ParameterError
        An unknown name, an option the name does not take, a ``beta`` that is negative or not
        finite, a ``max_joint`` below 1, a ``maximize`` that is not a bool.

    Examples
    --------
    >>> import numpy as np
    >>> acq = make_acquisition("ucb", beta=4.0)
    >>> acq(np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.1]), np.array([False, False, True]), None)
    (1, array([  2.,   3., -inf]))
    """
    if not isinstance(name, str) or name.lower() not in _ACQ_OPTIONS:
        raise ParameterError(f"acquisition {name!r}: unknown; known: {', '.join(ACQUISITIONS)}")
    name = name.lower()
    unknown = sorted(set(options) - _ACQ_OPTIONS[name])
    if unknown:
        allowed = ", ".join(sorted(_ACQ_OPTIONS[name])) or "none"
        raise ParameterError(f"acquisition {name!r}: option(s) {unknown} do not apply (options: {allowed})")
    opts: dict = {}
    if "maximize" in _ACQ_OPTIONS[name]:
        maximize = options.get("maximize", True)
        if not isinstance(maximize, bool | np.bool_):
            raise ParameterError(f"acquisition {name!r}: maximize must be True or False, got {maximize!r}")
        opts["maximize"] = bool(maximize)
    if name == "ucb":
        beta = options.get("beta", 4.0)
        if isinstance(beta, bool) or not isinstance(beta, int | float | np.integer | np.floating) \
                or not (np.isfinite(beta) and beta >= 0):
            raise ParameterError(f"acquisition 'ucb': beta must be a finite number >= 0, got {beta!r}")
        opts["beta"] = float(beta)
    if name == "thompson":
        mj = options.get("max_joint", 2048)
        if isinstance(mj, bool) or not isinstance(mj, int | np.integer) or mj < 1:
            raise ParameterError(f"acquisition 'thompson': max_joint must be an integer >= 1, got {mj!r}")
        opts["max_joint"] = int(mj)
    return LoopAcquisition(name, opts)
