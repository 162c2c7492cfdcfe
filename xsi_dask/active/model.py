"""Deep kernel learning (DKL) regression for active learning: :class:`DKLModel` and :class:`PlainGP`.

A multilayer perceptron g maps the (min-max scaled) features x of a pixel to a low-dimensional
embedding z = g(x) (2-D by default); an exact Gaussian process with a constant mean and a scaled
RBF or Matern-5/2 kernel with one length scale per embedding dimension (ARD) models the
standardized target on z:

    y_std = f(g(x)) + eps,   f ~ GP(c, s^2 k(z, z')),   eps ~ N(0, sigma^2),  sigma^2 >= noise_min.

The network weights and the GP hyperparameters (c, s, length scales, sigma) are trained together
by Adam on the exact marginal log likelihood (Wilson et al. 2016). :class:`PlainGP` is the same
code path with the identity in place of the network (the GP acts on the scaled features
themselves, e.g. the pixel coordinates (y, x) of the benchmark's baseline).

Every tensor is created with the model's ``dtype`` (float64 by default) on its ``device`` (CPU
by default); the weights are initialised from a ``torch.Generator`` seeded with ``seed``. No
process-global torch state is read or written (no global seed, no default dtype or device), so
fits can share a Dask worker. GPyTorch's own settings (``max_cholesky_size``,
``fast_computations``) are process-global class attributes: the fit and the prediction set
them, in a context, to exact Cholesky solves (deterministic, no random probe vectors, which
GPyTorch would draw from the global generator above 800 points); another thread of the same
process that sets them differently at the same time would race with it.

References
----------
Wilson, A. G., Hu, Z., Salakhutdinov, R. & Xing, E. P. (2016). Deep kernel learning. AISTATS,
PMLR 51, 370-378. arXiv:1511.02222.
Roccapriore, K. M., Kalinin, S. V. & Ziatdinov, M. (2022). Physics discovery in nanoplasmonic
systems via autonomous experiments in scanning transmission electron microscopy. Advanced
Science 9, 2203422. doi:10.1002/advs.202203422 (PMC9798976).
Gardner, J. R. et al. (2018). GPyTorch: blackbox matrix-matrix Gaussian process inference with
GPU acceleration. NeurIPS 31. arXiv:1809.11165.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import gpytorch
import numpy as np
import torch
from linear_operator.utils.cholesky import psd_safe_cholesky

from ..errors import ParameterError

__all__ = ["DKLModel", "ModelFactory", "ModelState", "PlainGP", "dkl_factory", "feature_bounds", "plain_gp_factory"]

_KERNELS = ("rbf", "matern52")
_ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}


def _device(device: str | torch.device) -> torch.device:
    """``device``, with ``"auto"`` resolved here: CUDA where this process sees a device, else the CPU."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError(f"device: {device!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:1')") from exc


def feature_bounds(candidates: np.ndarray) -> np.ndarray:
    """Per-feature minimum and maximum of a candidate set, the bounds a model scales its inputs to.

    Parameters
    ----------
    candidates : ndarray of shape (n_candidates, n_features)
        Feature vectors of every candidate pixel (measured or not), in their own units.

    Returns
    -------
    bounds : ndarray of shape (2, n_features), float64
        Row 0 the minimum, row 1 the maximum of each feature.

    Raises
    ------
    ParameterError
        If ``candidates`` is not a non-empty 2-D array of finite numbers.
    """
    c = _as_2d("candidates", candidates)
    return np.stack([c.min(axis=0), c.max(axis=0)])


@dataclass(frozen=True)
class ModelState:
    """The trained parameters of a model, the warm start of the next fit.

    Attributes
    ----------
    params : dict of str to torch.Tensor
        The ``state_dict`` of the GP model (network weights, kernel, mean and likelihood
        parameters, in their raw, unconstrained form), detached copies on the CPU.
    config : tuple
        The architecture the parameters belong to (features, hidden sizes, embedding size,
        kernel, activation); a warm start into another architecture is refused.
    loss : ndarray of shape (steps,)
        The negative exact marginal log likelihood per Adam step (per training point, on the
        standardized targets).
    n_train : int
        Number of training points of the fit.
    noise_variance : float
        The fitted Gaussian noise variance, in the squared units of y: the measurement noise
        the model reads in the data. The 95 % interval of a new measurement at a pixel is
        ``mean +- 1.96 sqrt(std**2 + noise_variance)``.
    """

    params: dict[str, torch.Tensor]
    config: tuple
    loss: np.ndarray
    n_train: int
    noise_variance: float = float("nan")


class _ExactGP(gpytorch.models.ExactGP):
    """Exact GP on the output of a feature extractor (the identity for a plain GP)."""

    def __init__(self, x, y, likelihood, extractor, kernel, n_dims, priors):
        super().__init__(x, y, likelihood)
        self.feature_extractor = extractor
        self.mean_module = gpytorch.means.ConstantMean()
        if kernel == "rbf":
            base = gpytorch.kernels.RBFKernel(ard_num_dims=n_dims)
        else:
            base = gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=n_dims)
        if priors:
            # dimension-scaled length-scale prior (Hvarfner, Hellsten & Nardi 2024, BoTorch's default
            # since 0.12) and a noise prior favouring small noise on standardized targets, so that one
            # high value among many low ones is read as signal, not explained away as noise
            base.register_prior("lengthscale_prior", gpytorch.priors.LogNormalPrior(
                math.sqrt(2) + math.log(n_dims) / 2, math.sqrt(3)), "lengthscale")
            likelihood.register_prior("noise_prior", gpytorch.priors.LogNormalPrior(-4.0, 1.0), "noise")
        self.covar_module = gpytorch.kernels.ScaleKernel(base)

    def forward(self, x):
        z = self.feature_extractor(x)
        return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))


def _as_2d(name, a, n_features=None):
    try:
        a = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{name}: expected a numeric array of shape (n, n_features), got {type(a).__name__}") from exc
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ParameterError(f"{name}: expected a non-empty array of shape (n, n_features), got shape {a.shape}")
    if n_features is not None and a.shape[1] != n_features:
        raise ParameterError(f"{name}: has {a.shape[1]} features, the model's bounds have {n_features}")
    if not np.isfinite(a).all():
        raise ParameterError(f"{name}: {int((~np.isfinite(a)).sum())} non-finite values (NaN or inf)")
    return a


@contextlib.contextmanager
def _exact_settings():
    # exact Cholesky solves at every size: deterministic, and no probe vectors from the global RNG
    with gpytorch.settings.max_cholesky_size(2**62), gpytorch.settings.fast_computations(False, False, False):
        yield


class DKLModel:
    """Deep kernel learning regressor: MLP feature extractor feeding an exact GP (GPyTorch).

    Parameters
    ----------
    bounds : array_like of shape (2, n_features)
        Minimum (row 0) and maximum (row 1) of each feature over the whole candidate set
        (:func:`feature_bounds`); inputs are scaled to [0, 1] with them. A feature with equal
        bounds is only shifted (its range is taken as 1).
    hidden : sequence of int, default (64, 32)
        Widths of the hidden layers of the MLP; ``()`` is a single linear map to the embedding.
    embedding_dim : int, default 2
        Dimension of the embedding the GP acts on (Roccapriore et al. 2022 use 2).
    kernel : {"rbf", "matern52"}, default "rbf"
        Base kernel, with one length scale per embedding dimension, inside a ``ScaleKernel``.
    activation : {"tanh", "relu"}, default "tanh"
        Nonlinearity after each hidden layer; tanh gives a smooth embedding, suited to
        smooth kernels.
    noise_min : float, default 1e-4
        Lower bound of the Gaussian noise variance on the standardized targets
        (``gpytorch.constraints.GreaterThan``); it keeps the kernel matrix positive definite
        when a few points (5 at the start of an experiment) are fitted by a flexible network.
    priors : bool, default True
        Put a log-normal prior on the length scales, scaled with the embedding dimension d
        (``LogNormal(sqrt(2) + log(d) / 2, sqrt(3))``; Hvarfner, Hellsten & Nardi 2024, ICML,
        arXiv:2402.02229, BoTorch's default) and on the noise variance of the standardized
        targets (``LogNormal(-4, 1)``, BoTorch's default); training then maximises the marginal
        likelihood plus the log priors (MAP). Without them, a start where one pixel of dozens
        holds the property is fitted as noise and the search does not exploit it (measured in
        ``docs/benchmarks-dkl.md``).
    seed : int, default 0
        Seed of the ``torch.Generator`` that initialises the network weights.
    device : str or torch.device, default "auto"
        Where the tensors live. ``"auto"``: ``"cuda"`` (the first device this process sees,
        which on a GPU worker is its own: ``CUDA_VISIBLE_DEVICES``) where torch sees one, else
        ``"cpu"``, decided where the model is built, i.e. in the training task on its worker, not
        for the process (no default device is set).
    dtype : torch.dtype, default torch.float64

    Attributes
    ----------
    state_ : ModelState
        The result of the last :meth:`fit`.
    y_mean_, y_scale_ : float
        Mean and standard deviation of the targets of the last fit (standardization).

    Raises
    ------
    ParameterError
        For bounds not of shape (2, n_features) or with minimum above maximum, a width or an
        embedding size below 1, an unknown kernel or activation, a non-positive noise bound.

    Notes
    -----
    The Adam optimizer's moments are not carried between fits (a warm start restores the
    parameters only). Training costs O(steps n^3) for n training points (a Cholesky factor per
    step); prediction O(n_candidates n) memory for the mean and variance.
    """

    def __init__(self, bounds, *, hidden: Sequence[int] | None = (64, 32), embedding_dim: int = 2,
                 kernel: Literal["rbf", "matern52"] = "rbf", activation: Literal["tanh", "relu"] = "tanh",
                 noise_min: float = 1e-4, priors: bool = True, seed: int = 0, device: str | torch.device = "auto",
                 dtype: torch.dtype = torch.float64):
        b = np.asarray(bounds, dtype=np.float64)
        if b.ndim != 2 or b.shape[0] != 2 or b.shape[1] == 0:
            raise ParameterError(f"bounds: expected shape (2, n_features) (minimum, maximum), got {b.shape}")
        if not np.isfinite(b).all() or (b[0] > b[1]).any():
            bad = np.flatnonzero(~np.isfinite(b).all(axis=0) | (b[0] > b[1]))
            raise ParameterError(f"bounds: feature(s) {bad.tolist()} have non-finite bounds or minimum above maximum")
        if hidden is not None:
            hidden = tuple(int(h) for h in hidden)
            if any(h < 1 for h in hidden):
                raise ParameterError(f"hidden: layer widths must be >= 1, got {hidden}")
            if int(embedding_dim) < 1:
                raise ParameterError(f"embedding_dim: must be >= 1, got {embedding_dim}")
        if kernel not in _KERNELS:
            raise ParameterError(f"kernel: {kernel!r} is not one of {_KERNELS}")
        if activation not in _ACTIVATIONS:
            raise ParameterError(f"activation: {activation!r} is not one of {tuple(_ACTIVATIONS)}")
        if not (np.isfinite(noise_min) and noise_min > 0):
            raise ParameterError(f"noise_min: must be a positive number, got {noise_min!r}")
        self.bounds = b
        self.hidden = hidden
        self.embedding_dim = int(embedding_dim) if hidden is not None else b.shape[1]
        self.kernel = kernel
        self.activation = activation
        self.noise_min = float(noise_min)
        if not isinstance(priors, bool | np.bool_):
            raise ParameterError(f"priors: must be True or False, got {priors!r}")
        self.priors = bool(priors)
        self.seed = int(seed)
        self.device = _device(device)
        self.dtype = dtype
        self._model = None

    # ---- construction ----

    @property
    def n_features(self) -> int:
        return self.bounds.shape[1]

    def _config(self) -> tuple:
        return (type(self).__name__, self.n_features, self.hidden, self.embedding_dim, self.kernel, self.activation, self.priors)

    def _extractor(self) -> torch.nn.Module:
        if self.hidden is None:
            return torch.nn.Identity()
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        sizes = (self.n_features, *self.hidden, self.embedding_dim)
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            # skip_init: no draw from the global generator; PyTorch's default init, from ours
            lin = torch.nn.utils.skip_init(torch.nn.Linear, a, b, dtype=self.dtype)
            with torch.no_grad():
                torch.nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=gen)
                bound = 1 / math.sqrt(a)
                torch.nn.init.uniform_(lin.bias, -bound, bound, generator=gen)
            layers.append(lin)
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[self.activation]())
        return torch.nn.Sequential(*layers).to(self.device)

    def _scale(self, X: np.ndarray) -> torch.Tensor:
        lo, hi = self.bounds
        span = np.where(hi > lo, hi - lo, 1.0)
        return torch.as_tensor((X - lo) / span, dtype=self.dtype, device=self.device)

    # ---- training ----

    def fit(self, X, y, *, steps: int = 200, lr: float = 0.01, warm_start: ModelState | None = None) -> ModelState:
        """Train the network and the GP hyperparameters on measured points.

        Parameters
        ----------
        X : array_like of shape (n, n_features)
            Features of the measured pixels, in the units of the bounds.
        y : array_like of shape (n,)
            Their scalar values (any unit); standardized to zero mean and unit variance for the
            fit (a constant y is only centred).
        steps : int, default 200
            Adam steps on the full batch.
        lr : float, default 0.01
            Adam learning rate.
        warm_start : ModelState, optional
            Parameters of a previous fit of the same architecture (the previous step of an
            experiment) to start from; without it, the seeded initialisation.

        Returns
        -------
        ModelState
            The trained parameters, also kept as ``state_``.

        Raises
        ------
        ParameterError
            For X or y of the wrong shape or not finite, fewer than 2 points, ``steps`` below 1,
            a non-positive ``lr``, or a ``warm_start`` of another architecture.
        """
        X = _as_2d("X", X, self.n_features)
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (X.shape[0],):
            raise ParameterError(f"y: expected shape ({X.shape[0]},) to match X, got {y.shape}")
        if not np.isfinite(y).all():
            raise ParameterError(f"y: {int((~np.isfinite(y)).sum())} non-finite values (NaN or inf)")
        if X.shape[0] < 2:
            raise ParameterError(f"X: a fit needs at least 2 points, got {X.shape[0]}")
        if int(steps) < 1:
            raise ParameterError(f"steps: must be >= 1, got {steps}")
        if not (np.isfinite(lr) and lr > 0):
            raise ParameterError(f"lr: must be a positive number, got {lr!r}")
        if warm_start is not None and warm_start.config != self._config():
            raise ParameterError(f"warm_start: parameters of {warm_start.config}, this model is {self._config()}")

        self.y_mean_ = float(y.mean())
        sd = float(y.std())
        self.y_scale_ = sd if sd > 0 else 1.0
        x_t = self._scale(X)
        y_t = torch.as_tensor((y - self.y_mean_) / self.y_scale_, dtype=self.dtype, device=self.device)

        likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=gpytorch.constraints.GreaterThan(self.noise_min))
        model = _ExactGP(x_t, y_t, likelihood, self._extractor(), self.kernel, self.embedding_dim, self.priors)
        model = model.to(device=self.device, dtype=self.dtype)
        if warm_start is not None:
            model.load_state_dict({k: v.to(device=self.device, dtype=self.dtype) for k, v in warm_start.params.items()})

        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=float(lr))
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
        losses = np.empty(int(steps))
        with _exact_settings():
            for i in range(int(steps)):
                optimizer.zero_grad()
                loss = -mll(model(x_t), y_t)
                loss.backward()
                optimizer.step()
                losses[i] = loss.item()
        model.eval()
        self._model = model
        self.state_ = ModelState(params={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                                 config=self._config(), loss=losses, n_train=X.shape[0],
                                 noise_variance=float(likelihood.noise.detach().cpu().item()) * self.y_scale_**2)
        return self.state_

    # ---- prediction ----

    def _check_fitted(self):
        if self._model is None:
            raise ParameterError(f"{type(self).__name__}: call fit() before predicting")

    def predict(self, Xc, *, observation_noise: bool = False, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at candidate points, in the units of y.

        Parameters
        ----------
        Xc : array_like of shape (n_candidates, n_features)
        observation_noise : bool, default False
            Add the fitted noise variance (the predictive distribution of a new measurement)
            instead of the latent function's (what acquisition functions use, as BoTorch does).
        batch_size : int, default 1024
            Candidates per GPyTorch call. GPyTorch (1.15) evaluates the dense test-test kernel
            matrix of a call even when only its diagonal is used, so the memory of a call is
            batch_size^2 values (8 MiB in float64 at the default), whatever n_candidates.

        Returns
        -------
        mean, std : ndarray of shape (n_candidates,), float64
            GPyTorch rounds variances below 1e-10 (float64; 1e-6 in float32) up to that value
            on the standardized scale, with a ``NumericalWarning``.

        Raises
        ------
        ParameterError
            Before :meth:`fit`, for Xc of the wrong shape or not finite, or ``batch_size`` below 1.
        """
        self._check_fitted()
        Xc = _as_2d("Xc", Xc, self.n_features)
        if int(batch_size) < 1:
            raise ParameterError(f"batch_size: must be >= 1, got {batch_size}")
        x = self._scale(Xc)
        mean = np.empty(Xc.shape[0])
        var = np.empty(Xc.shape[0])
        with torch.no_grad(), _exact_settings():
            for start in range(0, Xc.shape[0], int(batch_size)):
                sl = slice(start, start + int(batch_size))
                post = self._model(x[sl])  # the training-side solves are cached by GPyTorch after the first call
                if observation_noise:
                    post = self._model.likelihood(post)
                mean[sl] = post.mean.cpu().numpy()
                var[sl] = post.variance.clamp_min(0).cpu().numpy()
        return self.y_mean_ + self.y_scale_ * mean, self.y_scale_ * np.sqrt(var)

    def sample(self, Xc, *, seed: int, n_samples: int = 1) -> np.ndarray:
        """Joint draws of the latent function from the posterior at candidate points, in the units of y.

        Parameters
        ----------
        Xc : array_like of shape (n_candidates, n_features)
        seed : int
            Seed of the ``torch.Generator`` (CPU) of the standard normal draws.
        n_samples : int, default 1

        Returns
        -------
        ndarray of shape (n_samples, n_candidates), float64

        Raises
        ------
        ParameterError
            Before :meth:`fit`, for Xc of the wrong shape, or ``n_samples`` below 1.

        Notes
        -----
        The dense posterior covariance and its Cholesky factor (with GPyTorch's
        ``psd_safe_cholesky`` jitter) take 2 n_candidates^2 values in memory and
        O(n_candidates^3) time: 400 MB and a few seconds for 5,000 candidates in float64.
        :func:`xsi_dask.active.acquisition.thompson` bounds the number of candidates it asks for.
        """
        self._check_fitted()
        Xc = _as_2d("Xc", Xc, self.n_features)
        if int(n_samples) < 1:
            raise ParameterError(f"n_samples: must be >= 1, got {n_samples}")
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        z = torch.randn(Xc.shape[0], int(n_samples), generator=gen, dtype=self.dtype)
        with torch.no_grad(), _exact_settings():
            post = self._model(self._scale(Xc))
            L = psd_safe_cholesky(post.covariance_matrix)
            f = post.mean.unsqueeze(-1) + L @ z.to(self.device)
        return (self.y_mean_ + self.y_scale_ * f.T).cpu().numpy().astype(np.float64)

    def embed(self, Xc) -> np.ndarray:
        """The embedding g(x) the GP acts on, shape (n_candidates, embedding_dim) (the scaled features for a plain GP)."""
        self._check_fitted()
        Xc = _as_2d("Xc", Xc, self.n_features)
        with torch.no_grad():
            return self._model.feature_extractor(self._scale(Xc)).cpu().numpy().astype(np.float64)


class PlainGP(DKLModel):
    """Exact GP on the scaled features themselves (no network): the baseline, e.g. on pixel coordinates (y, x).

    Same code path as :class:`DKLModel` with the identity as feature extractor: ARD kernel on the
    ``n_features`` scaled inputs. Parameters as for :class:`DKLModel` without ``hidden``,
    ``embedding_dim`` and ``activation``.
    """

    def __init__(self, bounds, *, kernel: Literal["rbf", "matern52"] = "rbf", noise_min: float = 1e-4, priors: bool = True,
                 seed: int = 0, device: str | torch.device = "auto", dtype: torch.dtype = torch.float64):
        super().__init__(bounds, hidden=None, kernel=kernel, noise_min=noise_min, priors=priors, seed=seed, device=device,
                         dtype=dtype)


# ---- factories in the experiment loop's protocol ----

class _LoopModel:
    """A model with its training schedule fixed: ``fit(X, y, *, warm_start)`` as the loop calls it."""

    def __init__(self, model: DKLModel, steps: int, lr: float, warm_steps: int | None):
        self.model = model
        self.steps = steps
        self.lr = lr
        self.warm_steps = warm_steps

    def fit(self, X, y, *, warm_start: ModelState | None = None) -> ModelState:
        if warm_start is None or self.warm_steps is None:  # the factory's policy: refit from the seeded start
            return self.model.fit(X, y, steps=self.steps, lr=self.lr)
        return self.model.fit(X, y, steps=self.warm_steps, lr=self.lr, warm_start=warm_start)

    def predict(self, Xc) -> tuple[np.ndarray, np.ndarray]:
        return self.model.predict(Xc)

    def sample(self, Xc, *, seed: int, n_samples: int = 1) -> np.ndarray:
        return self.model.sample(Xc, seed=seed, n_samples=n_samples)


class ModelFactory:
    """``factory(seed=int)`` -> a model for :func:`xsi_dask.active.run_experiment` (picklable).

    Built by :func:`dkl_factory` or :func:`plain_gp_factory`. Each call builds a new
    :class:`DKLModel` (or :class:`PlainGP`) with the given seed and the stored keyword
    arguments, wrapped so that ``fit(X, y, *, warm_start)`` trains with the stored ``steps``
    and ``lr`` from the seeded initialisation, or, with ``warm_steps`` set and a previous
    state given, ``warm_steps`` steps from that state; ``predict`` and ``sample`` are the model's.

    Attributes
    ----------
    cls : type
        :class:`DKLModel` or :class:`PlainGP`.
    bounds : ndarray of shape (2, n_features)
    model_kwargs : dict
    steps : int
    lr : float
    warm_steps : int or None
    """

    def __init__(self, cls: type, bounds, model_kwargs: dict, steps: int, lr: float, warm_steps: int | None = None):
        for name, value in (("steps", steps), ("warm_steps", 1 if warm_steps is None else warm_steps)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ParameterError(f"{name}: must be an integer >= 1, got {value!r}")
        if isinstance(lr, bool) or not isinstance(lr, int | float | np.floating) or not (np.isfinite(lr) and lr > 0):
            raise ParameterError(f"lr: must be a positive number, got {lr!r}")
        if "seed" in model_kwargs:
            raise ParameterError("seed: the experiment loop gives each fit its own seed; do not pass one to the factory")
        self.cls = cls
        self.model_kwargs = dict(model_kwargs)
        cls(bounds, **self.model_kwargs)  # validates bounds and options now, before any measurement
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.steps = int(steps)
        self.lr = float(lr)
        self.warm_steps = None if warm_steps is None else int(warm_steps)
        warm = "refit from the seeded start" if warm_steps is None else f"warm_steps={self.warm_steps}"
        self.__qualname__ = f"{cls.__name__} factory (steps={self.steps}, {warm}, lr={self.lr})"

    def __repr__(self) -> str:
        return f"<{self.__qualname__}, {self.bounds.shape[1]} features, {self.model_kwargs}>"

    def __call__(self, *, seed: int) -> _LoopModel:
        return _LoopModel(self.cls(self.bounds, seed=int(seed), **self.model_kwargs), self.steps, self.lr, self.warm_steps)


def dkl_factory(bounds, *, steps: int = 100, lr: float = 0.01, warm_steps: int | None = None,
                **model_kwargs) -> ModelFactory:
    """The DKL model for :func:`xsi_dask.active.run_experiment`: ``dkl_factory(bounds)(seed=s)``.

    Parameters
    ----------
    bounds : array_like of shape (2, n_features)
        :func:`feature_bounds` of the candidate features the loop gets (``features.values``).
    steps : int, default 100
        Adam steps of a fit from the seeded initialisation.
    lr : float, default 0.01
        Adam learning rate.
    warm_steps : int, optional
        Given, every fit after the first starts from the previous step's parameters (the
        state the loop passes) and takes ``warm_steps`` Adam steps. Default: every fit starts
        afresh from its seeded initialisation. Measured on the benchmark's simulated 4D-STEM
        scan (64x64, 3 seeds; ``docs/benchmarks-dkl.md``), warm starts compound the network's
        over-fitting step after step: top-1 % recall at the 3 % budget 0.26-0.29 against
        0.50 refitting, 95 % interval coverage 0.39-0.52 against 0.75.
    **model_kwargs
        ``hidden``, ``embedding_dim``, ``kernel``, ``activation``, ``noise_min``, ``priors``,
        ``device``, ``dtype`` of :class:`DKLModel` (not ``seed``: the loop seeds each fit).

    Returns
    -------
    ModelFactory

    Raises
    ------
    ParameterError
        For invalid bounds or model options (checked here, by building one model), ``steps``
        below 1, a non-positive ``lr``, or a ``seed``.
    """
    return ModelFactory(DKLModel, bounds, model_kwargs, steps, lr, warm_steps)


def plain_gp_factory(bounds, *, steps: int = 100, lr: float = 0.01, warm_steps: int | None = None,
                     **model_kwargs) -> ModelFactory:
    """The plain GP (no network) for :func:`xsi_dask.active.run_experiment`.

    The GP acts on the loop's candidate features themselves. For the benchmark's baseline, the
    plain GP on pixel coordinates, give the loop the coordinates as features,
    :func:`xsi_dask.active.features.coordinate_features` (columns ``y``, ``x``, in pixels),
    and ``bounds = feature_bounds(that.values)``.

    Parameters
    ----------
    bounds : array_like of shape (2, n_features)
    steps, lr, warm_steps
        As :func:`dkl_factory`.
    **model_kwargs
        ``kernel``, ``noise_min``, ``priors``, ``device``, ``dtype`` of :class:`PlainGP`.

    Returns
    -------
    ModelFactory

    Raises
    ------
    ParameterError
        As :func:`dkl_factory`.
    """
    return ModelFactory(PlainGP, bounds, model_kwargs, steps, lr, warm_steps)
