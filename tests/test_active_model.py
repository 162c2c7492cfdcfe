"""xsi_dask.active.model (DKL and the plain GP) and xsi_dask.active.acquisition (issue #12, items 3 and 4).

References: BoTorch's analytic acquisitions on the same posterior (to 1e-10 in float64: the same
formulas in float64, the difference is rounding, ~1e-16 relative), held-out RMSE on a seeded toy
problem, exact equality of seeded fits on CPU.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gpytorch = pytest.importorskip("gpytorch")
pytest.importorskip("botorch")

from botorch.acquisition.analytic import (  # noqa: E402
    ExpectedImprovement,
    PosteriorStandardDeviation,
    UpperConfidenceBound,
)
from botorch.models.model import Model  # noqa: E402
from botorch.posteriors.gpytorch import GPyTorchPosterior  # noqa: E402
from gpytorch.distributions import MultivariateNormal  # noqa: E402
from linear_operator.operators import DiagLinearOperator  # noqa: E402

from xsi_dask.active.acquisition import (  # noqa: E402
    expected_improvement,
    max_uncertainty,
    next_candidate,
    penalize,
    thompson,
    upper_confidence_bound,
)
from xsi_dask.active.model import DKLModel, PlainGP, feature_bounds  # noqa: E402
from xsi_dask.errors import ParameterError  # noqa: E402


def _toy(n_side=40, n_features=10, seed=0):
    """A (n_side, n_side) scan whose pixels carry spatially white 10-D features; y a nonlinear function of them.

    Returns features (n, 10), pixel coordinates (n, 2) and y (n,). The coordinates say nothing
    about y, the features everything: the DKL must win against the GP on coordinates.
    """
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(n_side * n_side, n_features))
    a, b = rng.normal(size=(2, n_features))
    a /= np.linalg.norm(a)
    b /= np.linalg.norm(b)
    y = np.sin(2 * F @ a) + 0.5 * (F @ b) ** 2
    yy, xx = np.mgrid[:n_side, :n_side]
    return F, np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float64), y


@pytest.fixture(scope="module")
def fitted():
    F, _, y = _toy()
    m = DKLModel(feature_bounds(F), seed=3)
    m.fit(F[:40], y[:40], steps=60)
    return m, F, y


# ---- the model ----

def test_five_point_fit_predicts_finite(fitted):
    F, _, y = _toy()
    X5, y5 = F[:5].copy(), y[:5].copy()
    X5[4] = X5[3]  # a repeated pixel: a singular kernel matrix without the noise bound
    for model in (DKLModel(feature_bounds(F), seed=0), DKLModel(feature_bounds(F), kernel="matern52", seed=0),
                  PlainGP(feature_bounds(F))):
        state = model.fit(X5, y5, steps=60, lr=0.05)
        mean, std = model.predict(F[:500])
        assert mean.shape == std.shape == (500,)
        assert np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()
        assert np.isfinite(state.loss).all() and state.n_train == 5
        noise = model._model.likelihood.noise.item()
        assert noise >= 1e-4


def test_seeded_fit_reproducible_without_global_torch_state():
    F, _, y = _toy()
    rng_state = torch.random.get_rng_state()
    default_dtype = torch.get_default_dtype()
    preds = []
    for seed in (7, 7, 8):
        m = DKLModel(feature_bounds(F), seed=seed)
        m.fit(F[:60], y[:60], steps=80)
        preds.append(m.predict(F[60:400]))
    assert np.array_equal(preds[0][0], preds[1][0]) and np.array_equal(preds[0][1], preds[1][1])
    assert not np.allclose(preds[0][0], preds[2][0])  # the seed does set the initial weights
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global generator was not drawn from
    assert torch.get_default_dtype() == default_dtype
    assert m._model.covar_module.outputscale.dtype == torch.float64


def test_dkl_beats_plain_gp_on_coordinates():
    F, C, y = _toy()
    idx = np.random.default_rng(1).permutation(y.size)
    train, test = idx[:150], idx[150:]
    dkl = DKLModel(feature_bounds(F), seed=1)
    dkl.fit(F[train], y[train], steps=250)
    gp = PlainGP(feature_bounds(C))
    gp.fit(C[train], y[train], steps=150, lr=0.05)
    rmse_dkl = np.sqrt(np.mean((dkl.predict(F[test])[0] - y[test]) ** 2))
    rmse_gp = np.sqrt(np.mean((gp.predict(C[test])[0] - y[test]) ** 2))
    print(f"held-out RMSE: DKL {rmse_dkl:.3f}, plain GP on (y, x) {rmse_gp:.3f}, std(y) {y.std():.3f}")
    # the coordinates carry no information: the GP can do no better than the mean (RMSE ~ std(y))
    assert rmse_gp > 0.9 * y[test].std()
    assert rmse_dkl < 0.4 * rmse_gp
    # the predictive interval of a new measurement is calibrated (the 85-98 % band for the 95 % interval)
    mean, std = dkl.predict(F[test], observation_noise=True)
    coverage = np.mean(np.abs(y[test] - mean) < 1.959964 * std)
    print(f"95 % interval coverage on the held-out pixels: {coverage:.3f}")
    assert 0.85 <= coverage <= 0.98


def test_warm_start_carries_parameters_and_checks_architecture():
    F, _, y = _toy()
    m = DKLModel(feature_bounds(F), seed=0)
    cold = m.fit(F[:80], y[:80], steps=150)
    cold = pickle.loads(pickle.dumps(cold))  # the state travels between the client and a worker
    warm = m.fit(F[:81], y[:81], steps=5, warm_start=cold)
    fresh = DKLModel(feature_bounds(F), seed=0).fit(F[:81], y[:81], steps=5)
    # starting from the trained parameters, the first loss is that of a trained model
    assert warm.loss[0] < fresh.loss[0] - 0.3
    assert abs(warm.loss[0] - cold.loss[-1]) < 0.2
    with pytest.raises(ParameterError, match="warm_start"):
        DKLModel(feature_bounds(F), hidden=(16,)).fit(F[:81], y[:81], steps=1, warm_start=cold)


def test_sample_matches_marginal_posterior(fitted):
    m, F, _ = fitted
    Xc = F[100:130]
    mean, std = m.predict(Xc)
    draws = m.sample(Xc, seed=0, n_samples=4000)
    assert draws.shape == (4000, 30)
    # sample mean within 5 standard errors; sample std within 10 % (4000 draws: ~1.1 % relative SE)
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * std / np.sqrt(4000))
    np.testing.assert_allclose(draws.std(0), std, rtol=0.1)
    assert np.array_equal(draws, m.sample(Xc, seed=0, n_samples=4000))


def test_model_errors():
    F, _, y = _toy(n_side=5)
    with pytest.raises(ParameterError, match="bounds"):
        DKLModel(np.zeros((3, 10)))
    with pytest.raises(ParameterError, match="kernel"):
        DKLModel(feature_bounds(F), kernel="periodic")
    m = DKLModel(feature_bounds(F))
    with pytest.raises(ParameterError, match="fit"):
        m.predict(F)
    with pytest.raises(ParameterError, match="has 9 features"):
        m.fit(F[:, :9], y)
    y_nan = y.copy()
    y_nan[2] = np.nan
    with pytest.raises(ParameterError, match="non-finite"):
        m.fit(F, y_nan)


# ---- acquisition against BoTorch ----

class _Lookup(Model):
    """A BoTorch model whose posterior at X = candidate index is the given marginal (mean, variance)."""

    def __init__(self, mean, var):
        super().__init__()
        self._mean = torch.as_tensor(mean, dtype=torch.float64)
        self._var = torch.as_tensor(var, dtype=torch.float64)

    @property
    def num_outputs(self):
        return 1

    def posterior(self, X, output_indices=None, observation_noise=False, posterior_transform=None, **kwargs):
        i = X[..., 0].long()  # (b, q=1)
        return GPyTorchPosterior(MultivariateNormal(self._mean[i], DiagLinearOperator(self._var[i])))


def test_acquisitions_equal_botorch(fitted):
    m, F, y = fitted
    mean, std = m.predict(F[200:700])
    std[:3] = 0.0, 1e-7, 2e-6  # BoTorch clamps the variance at 1e-12: so must we
    botorch_model = _Lookup(mean, std**2)
    X = torch.arange(mean.size, dtype=torch.float64).reshape(-1, 1, 1)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # a Python float becomes a float32 buffer in BoTorch
    # GPyTorch's MultivariateNormal.variance rounds float64 variances up to 1e-10; BoTorch's own clamp is 1e-12
    with torch.no_grad(), gpytorch.settings.min_variance(double_value=1e-300):
        for maximize in (True, False):
            ref_f = float(y[:40].max()) if maximize else float(y[:40].min())
            ei = ExpectedImprovement(botorch_model, best_f=f64(ref_f), maximize=maximize)(X).numpy()
            np.testing.assert_allclose(expected_improvement(mean, std, ref_f, maximize=maximize), ei, rtol=0, atol=1e-10)
            assert ei.dtype == np.float64
            ucb = UpperConfidenceBound(botorch_model, beta=f64(2.5), maximize=maximize)(X).numpy()
            np.testing.assert_allclose(upper_confidence_bound(mean, std, 2.5, maximize=maximize), ucb, rtol=0, atol=1e-10)
        sd = PosteriorStandardDeviation(botorch_model)(X).numpy()
        np.testing.assert_allclose(max_uncertainty(std), sd, rtol=0, atol=1e-10)
    assert ei.max() > 1e-3 and np.ptp(ucb) > 1e-3  # a comparison of non-trivial values


def test_acquisition_errors():
    with pytest.raises(ParameterError, match="negative"):
        expected_improvement(np.zeros(3), np.array([1.0, -1.0, 1.0]), 0.0)
    with pytest.raises(ParameterError, match="beta"):
        upper_confidence_bound(np.zeros(3), np.ones(3), -1.0)
    with pytest.raises(ParameterError, match="one length"):
        expected_improvement(np.zeros(3), np.ones(4), 0.0)


def test_thompson_draw(fitted):
    m, F, _ = fitted
    Xc = F[:600]
    measured = np.arange(40)
    a = thompson(m, Xc, seed=5, measured=measured, max_joint=300)
    assert np.isneginf(a[measured]).all()
    assert np.isfinite(a).sum() == 300  # a joint draw over a random subset of max_joint unmeasured candidates
    assert np.array_equal(a, thompson(m, Xc, seed=5, measured=measured, max_joint=300))
    assert not np.array_equal(a, thompson(m, Xc, seed=6, measured=measured, max_joint=300))
    full = thompson(m, Xc[:200], seed=5, measured=measured)
    assert np.isfinite(full[40:]).all()
    # the draw on the subset is the model's joint draw at those points
    keep = np.flatnonzero(np.isfinite(a))
    np.testing.assert_array_equal(a[keep], m.sample(Xc[keep], seed=5)[0])
    assert 40 <= next_candidate(a, measured) < 600


def test_penalize_hand_computed():
    values = np.array([1.0, 3.0, -1.0, 2.0, -np.inf])
    coords = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0], [3.0, 4.0], [9.0, 9.0]])
    measured = np.array([[0.0, 0.0], [0.0, 4.0]])
    d = np.array([0.0, 1.0, 2.0, 3.0])  # nearest measured point of each finite candidate
    expected = values[:4] - 0.5 * 4.0 * np.exp(-d**2 / (2 * 1.5**2))  # span max - min = 3 - (-1) = 4
    out = penalize(values, coords, measured, radius=1.5, weight=0.5)
    np.testing.assert_allclose(out[:4], expected, rtol=1e-15)
    assert np.isneginf(out[4])
    with pytest.raises(ParameterError, match="radius"):
        penalize(values, coords, measured, radius=0.0)


def test_next_candidate_excludes_measured():
    a = np.array([0.1, 5.0, 3.0, 5.0])
    assert next_candidate(a) == 1
    assert next_candidate(a, measured=[1]) == 3
    assert next_candidate(a, measured=np.array([1, 3])) == 2
    with pytest.raises(ParameterError, match="all 4 candidates"):
        next_candidate(a, measured=[0, 1, 2, 3])
    with pytest.raises(ParameterError, match=r"\[0, 4\)"):
        next_candidate(a, measured=[4])
    with pytest.raises(ParameterError, match="NaN"):
        next_candidate(np.array([0.0, np.nan]))


# ---- priors, the fitted noise, the factories (the 1 s step target is the benchmark's, make bench-dkl) ----

def test_priors_add_their_log_density_to_the_training_loss():
    """priors=True adds log p(length scales) + log p(noise) (the documented log-normals) to the marginal likelihood.

    Reference: GPyTorch's own LogNormalPrior densities at the initial parameters (softplus(0) = log 2 for the
    length scales, log 2 + noise_min for the noise), divided by n as ExactMarginalLogLikelihood divides.
    """
    import math

    F, _, y = _toy()
    n = 30
    with_p = DKLModel(feature_bounds(F), seed=3).fit(F[:n], y[:n], steps=1)
    without = DKLModel(feature_bounds(F), seed=3, priors=False).fit(F[:n], y[:n], steps=1)
    ls0 = torch.full((2,), math.log(2.0), dtype=torch.float64)
    log_p = (gpytorch.priors.LogNormalPrior(math.sqrt(2) + math.log(2) / 2, math.sqrt(3)).log_prob(ls0).sum()
             + gpytorch.priors.LogNormalPrior(-4.0, 1.0).log_prob(torch.tensor(math.log(2.0) + 1e-4, dtype=torch.float64)))
    np.testing.assert_allclose(without.loss[0] - with_p.loss[0], float(log_p) / n, rtol=1e-9)
    with pytest.raises(ParameterError, match="priors"):
        DKLModel(feature_bounds(F), priors="yes")


def test_noise_variance_is_the_fitted_noise_in_the_units_of_y():
    """ModelState.noise_variance: predict(observation_noise=True)'s variance minus the latent one; it scales as y**2."""
    F, _, y = _toy()
    m = DKLModel(feature_bounds(F), seed=1)
    state = m.fit(F[:60], y[:60], steps=40)
    _, sd = m.predict(F[60:200])
    _, sd_obs = m.predict(F[60:200], observation_noise=True)
    np.testing.assert_allclose(sd_obs**2 - sd**2, state.noise_variance, rtol=1e-9)
    scaled = DKLModel(feature_bounds(F), seed=1).fit(F[:60], 10.0 * y[:60], steps=40)
    np.testing.assert_allclose(scaled.noise_variance, 100.0 * state.noise_variance, rtol=1e-9)


def test_factories_refit_from_the_seeded_start_unless_warm_steps_are_given():
    from xsi_dask.active.model import dkl_factory

    F, _, y = _toy()
    b = feature_bounds(F)
    first = dkl_factory(b, steps=20)(seed=4).fit(F[:40], y[:40])
    fresh = dkl_factory(b, steps=20)(seed=5).fit(F[:41], y[:41])
    again = dkl_factory(b, steps=20)(seed=5).fit(F[:41], y[:41], warm_start=first)  # the loop passes the state: not used
    assert again.loss.shape == (20,)
    for k, v in fresh.params.items():
        assert torch.equal(v, again.params[k]), k
    warm = dkl_factory(b, steps=20, warm_steps=3)(seed=5).fit(F[:41], y[:41], warm_start=first)
    assert warm.loss.shape == (3,) and abs(warm.loss[0] - first.loss[-1]) < 0.2 < abs(fresh.loss[0] - first.loss[-1])
    for bad in (0, 1.5, True):
        with pytest.raises(ParameterError, match="warm_steps"):
            dkl_factory(b, warm_steps=bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)")
def test_a_fit_on_the_gpu_equals_the_cpu_fit():
    """device="cuda" (a GPU worker's model): the same seeded fit and prediction as on the CPU, float64, to 1e-6."""
    F, _, y = _toy()
    cpu = DKLModel(feature_bounds(F), seed=2)
    gpu = DKLModel(feature_bounds(F), seed=2, device="cuda")
    a, b = cpu.fit(F[:50], y[:50], steps=30), gpu.fit(F[:50], y[:50], steps=30)
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-6)
    for got, want in zip(gpu.predict(F[50:300]), cpu.predict(F[50:300]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
