"""Active learning without the DKL model: candidate features and the experiment loop, with stand-in model and acquisition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

import xsi_dask
from xsi_dask.active.features import (
    Features,
    combine_features,
    montage_patches,
    mosaic_image,
    mosaic_to_tile,
    reduced_features,
    structure_patches,
)
from xsi_dask.active.loop import run_experiment
from xsi_dask.errors import LayoutError, ParameterError, ResourceUnavailableError
from xsi_dask.io.results import open_results, write_results
from xsi_dask.testing.simulate import simulate

# ---- patches of a structural image ----

IMG = 10.0 * np.arange(5)[:, None] + np.arange(5)[None, :]  # img[y, x] = 10 y + x: 0 ... 44


def test_patches_of_a_5x5_image_match_a_hand_computation_with_reflected_edges():
    f = structure_patches(IMG, 3)
    assert f.values.shape == (25, 9) and f.values.dtype == np.float64 and f.shape == (5, 5)
    np.testing.assert_array_equal(f.yx, [(y, x) for y in range(5) for x in range(5)])
    # min-max over the whole image: (v - 0) / 44; the edge pixel is not repeated (d c b | a b c d ...)
    hand = {
        (0, 0): [[11, 10, 11], [1, 0, 1], [11, 10, 11]],
        (0, 2): [[11, 12, 13], [1, 2, 3], [11, 12, 13]],
        (2, 0): [[11, 10, 11], [21, 20, 21], [31, 30, 31]],
        (2, 2): [[11, 12, 13], [21, 22, 23], [31, 32, 33]],
        (4, 4): [[33, 34, 33], [43, 44, 43], [33, 34, 33]],
        (4, 1): [[30, 31, 32], [40, 41, 42], [30, 31, 32]],
    }
    for (y, x), patch in hand.items():
        np.testing.assert_allclose(f.values[y * 5 + x], np.ravel(patch) / 44.0, rtol=0, atol=1e-15, err_msg=f"({y}, {x})")
    assert f.names[0] == "patch[-1,-1]" and f.names[4] == "patch[0,0]" and f.names[5] == "patch[0,1]"


def test_zscore_patches_are_standardised_one_by_one_and_a_flat_patch_is_zero():
    f = structure_patches(IMG, 3, normalize="zscore")
    p = np.array([[11, 12, 13], [21, 22, 23], [31, 32, 33]], dtype=float).ravel()
    np.testing.assert_allclose(f.values[12], (p - p.mean()) / p.std(), rtol=1e-13)
    img = IMG.copy()
    img[:3, :3] = 7.0
    assert not structure_patches(img, 3, normalize="zscore").values[6].any()  # (1, 1): its 3 x 3 window is flat


@pytest.mark.parametrize("window, match", [(2, "odd"), (0, "odd"), (3.0, "odd"), (11, "too large")])
def test_bad_windows_are_refused(window, match):
    with pytest.raises(ParameterError, match=match):
        structure_patches(IMG, window)


def test_a_constant_image_and_an_unknown_normalisation_are_refused():
    with pytest.raises(ParameterError, match="constant"):
        structure_patches(np.ones((5, 5)), 3)
    with pytest.raises(ParameterError, match="normalize"):
        structure_patches(IMG, 3, normalize="max")
    with pytest.raises(ParameterError, match="2-D"):
        structure_patches(np.ones((2, 5, 5)), 3)


# ---- a montage: patches across tile borders, reduced features from a results store ----

@pytest.fixture(scope="module")
def montage(tmp_path_factory):
    root = tmp_path_factory.mktemp("active")
    st = simulate(root / "m.zarr", tiles="1x2", tile_shape="16x16", channels=128, counts_per_pixel=20, progress=False)
    m = xsi_dask.open_montage(st)
    write_results(root / "results.zarr", {"svd": xsi_dask.decompose(m, 3), "nmf": xsi_dask.nmf(m, 2, max_iter=20)})
    return st, root / "results.zarr"


def test_montage_patches_take_the_neighbouring_tile_across_the_border(montage):
    st, _ = montage
    left, right = (st.image(t, "HAADF").astype(float) for t in (0, 1))
    assert [(t["row"], t["col"]) for t in st.tiles] == [(0, 0), (0, 1)]
    f = montage_patches(st, "HAADF", 3)
    assert f.shape == (16, 32) and f.values.shape == (512, 9)
    lo, hi = min(left.min(), right.min()), max(left.max(), right.max())
    # pixel (5, 15) of tile 0: its window's right column is column 0 of tile 1
    hand = np.concatenate([left[4:7, 14:16], right[4:7, 0:1]], axis=1)
    np.testing.assert_allclose(f.values[5 * 32 + 15], (hand.ravel() - lo) / (hi - lo), rtol=1e-13)
    # pixel (0, 16) = (0, 0) of tile 1: reflected at the montage's top edge, tile 0 on its left
    hand = np.concatenate([left[[1, 0, 1], 15:16], right[[1, 0, 1], 0:2]], axis=1)
    np.testing.assert_allclose(f.values[16], (hand.ravel() - lo) / (hi - lo), rtol=1e-13)
    image, tiles = mosaic_image(st, "HAADF")
    np.testing.assert_array_equal(tiles, [[0, 1]])
    np.testing.assert_array_equal(mosaic_to_tile([(5, 15), (0, 16), (15, 31)], tiles, (16, 16)),
                                  [(0, 5, 15), (1, 0, 0), (1, 15, 15)])
    with pytest.raises(ParameterError, match="no structural image 'ADF'"):
        montage_patches(st, "ADF", 3)


@pytest.mark.parametrize("group, var", [("svd", "scores"), ("nmf", "abundances")])
def test_reduced_features_place_each_tiles_maps_on_the_mosaic(montage, group, var):
    _, results = montage
    maps = open_results(results, group)[var].values  # (tile, y, x, component)
    f = reduced_features(results, group)
    k = maps.shape[-1]
    assert f.values.shape == (512, k) and f.shape == (16, 32)
    assert f.names == tuple(f"{group}:{c}" for c in range(k))
    for t, y, x in [(0, 0, 0), (0, 7, 15), (1, 0, 0), (1, 15, 15), (1, 3, 9)]:
        row = (y * 32) + 16 * t + x  # tile 1 sits at column 1 of the grid
        assert tuple(f.yx[row]) == (y, 16 * t + x)
        np.testing.assert_array_equal(f.values[row], maps[t, y, x])
    right = reduced_features(open_results(results, group).isel(tile=[1]), group)  # tile 1 alone: its pixels only
    assert right.shape == (16, 32) and right.n_pixels == 256 and (right.yx[:, 1] >= 16).all()
    np.testing.assert_array_equal(right.values, f.values[f.yx[:, 1] >= 16])
    one = reduced_features(results, group, components=[1])
    np.testing.assert_array_equal(one.values[:, 0], f.values[:, 1])
    with pytest.raises(ParameterError, match="components"):
        reduced_features(results, group, components=[7])


def test_reduced_features_of_tiles_without_a_layout_are_refused(montage):
    _, results = montage
    ds = open_results(results, "nmf").drop_vars(["row", "col"])
    with pytest.raises(LayoutError, match="no row/col"):
        reduced_features(ds, "nmf")
    with pytest.raises(ParameterError, match="'svd' or 'nmf'"):
        reduced_features(results, "pca")


def test_combined_features_are_standardised_per_column(montage):
    st, results = montage
    p, r = montage_patches(st, "HAADF", 3), reduced_features(results, "nmf")
    c = combine_features(p, r)
    assert c.values.shape == (512, 11) and c.names == p.names + r.names
    np.testing.assert_allclose(c.values.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(c.values.std(0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(c.values[:, 9], (r.values[:, 0] - r.values[:, 0].mean()) / r.values[:, 0].std(), rtol=1e-10)
    with pytest.raises(ParameterError, match="different shapes"):
        combine_features(p, structure_patches(IMG, 3))


# ---- the experiment loop, with a scikit-learn GP and max-std as stand-ins ----

SHAPE = (20, 20)
YY, XX = np.mgrid[0:20, 0:20]
TRUTH = np.exp(-((YY - 6.0) ** 2 + (XX - 13.0) ** 2) / 18.0) + 0.5 * np.exp(-((YY - 15.0) ** 2 + (XX - 4.0) ** 2) / 8.0)
CHANNELS = np.linspace(0.5, 1.5, 8)  # each "spectrum" is the truth times a fixed shape of mean 1
SEEN: list[str | None] = []  # where each fit ran, recorded from inside the fit
CANDIDATES: list[int] = []  # the identity of the candidate array each prediction received


def _features() -> Features:
    yx = np.stack([YY.ravel(), XX.ravel()], 1)
    return Features(yx / 19.0, yx, SHAPE, ("y", "x"))


class Measure:
    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def __call__(self, y, x):
        self.calls.append((y, x))
        return TRUTH[y, x] * CHANNELS


def mean_scalarizer(spectra):
    return np.asarray(spectra).mean(axis=-1)


def max_std(mean, std, measured, rng):
    values = np.where(measured, -np.inf, std)
    return int(np.argmax(values)), values


def random_pick(mean, std, measured, rng):
    return int(rng.choice(np.flatnonzero(~measured))), np.where(measured, np.nan, 0.0)


class GPStandIn:
    """A scikit-learn GP as the model; the fitted kernel is the warm start."""

    def __init__(self, *, seed):
        self.seed = seed

    def fit(self, X, y, *, warm_start=None):
        try:
            from distributed import get_worker

            SEEN.append(get_worker().address)
        except ValueError:  # not in a dask worker
            SEEN.append(None)
        kernel = warm_start if warm_start is not None else ConstantKernel(1.0) * RBF(0.2) + WhiteKernel(1e-5, "fixed")
        self.gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=self.seed).fit(X, y)
        return self.gp.kernel_

    def predict(self, Xc):
        CANDIDATES.append(id(Xc))
        return self.gp.predict(Xc, return_std=True)


def _run(seed=0, acquisition=max_std, measure=None, **kw):
    args = {"n_init": 5, "budget": 25, **kw}
    return run_experiment(_features(), measure or Measure(), scalarizer=mean_scalarizer, acquisition=acquisition,
                          model_factory=GPStandIn, seed=seed, **args)


def test_a_seeded_run_is_reproducible_and_the_seed_matters():
    a, b, c = _run(seed=3, acquisition=random_pick), _run(seed=3, acquisition=random_pick), _run(seed=4, acquisition=random_pick)
    for name in ("visited_y", "visited_x", "value", "prediction", "uncertainty", "order"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert not np.array_equal(a["order"].values, c["order"].values)
    assert np.isnan(a.attrs["noise_variance"])  # this test's model state reports no noise
    d, e = _run(seed=3), _run(seed=3)
    np.testing.assert_array_equal(d["order"].values, e["order"].values)
    np.testing.assert_array_equal(d["prediction"].values, e["prediction"].values)


def test_the_loop_measures_budget_distinct_pixels_each_chosen_by_the_acquisition():
    SEEN.clear()
    measure = Measure()
    ds = _run(seed=1, measure=measure, record_every=1)
    visited = list(zip(ds["visited_y"].values.tolist(), ds["visited_x"].values.tolist(), strict=True))
    assert measure.calls == visited and len(visited) == 25 and len(set(visited)) == 25
    np.testing.assert_allclose(ds["value"].values, [TRUTH[p] for p in visited], rtol=1e-14)
    assert ds["initial"].values.tolist() == [True] * 5 + [False] * 20
    assert np.isnan(ds["fit_seconds"].values[:5]).all() and (ds["fit_seconds"].values[5:] > 0).all()
    t = ds[["fit_seconds", "predict_seconds", "train_wall_seconds", "acquire_seconds"]].isel(step=slice(5, None))
    assert (t["acquire_seconds"] >= 0).all() and (t["train_wall_seconds"] >= t["fit_seconds"] + t["predict_seconds"]).all()
    assert ds[["fit_seconds", "train_wall_seconds", "acquire_seconds"]].isel(step=slice(0, 5)).isnull().all().to_array().all()
    assert set(ds["fit_worker"].values.tolist()) == {""}
    assert SEEN == [None] * 21  # 20 choices and the final fit, all in this process (no cluster)
    # every fit was kept: the pixel measured after fit k is the maximum of that fit's acquisition map (max std)
    assert ds.sizes["fit"] == 21 and ds["n_measured"].values.tolist() == list(range(5, 26))
    order = ds["order"].values
    for k in range(20):
        acq = ds["acquisition_at"].values[k]
        np.testing.assert_array_equal(np.isinf(acq), (order >= 0) & (order < 5 + k))  # measured before fit k: -inf
        assert np.unravel_index(np.nanargmax(np.where(np.isinf(acq), np.nan, acq)), SHAPE) == visited[5 + k]
    # the final maps: the fit on all 25 points, which reproduces its data within the GP's noise
    np.testing.assert_array_equal(ds["prediction"].values, ds["prediction_at"].values[-1])
    assert sorted(order[order >= 0].tolist()) == list(range(25)) and (order >= 0).sum() == 25
    pred = ds["prediction"].values[tuple(np.array(visited).T)]
    np.testing.assert_allclose(pred, ds["value"].values, atol=0.05)
    assert (ds["uncertainty"].values > 0).all() and np.isinf(ds["acquisition"].values[order >= 0]).all()


def test_maps_every_k_fits():
    ds = _run(seed=2, n_init=5, budget=16, record_every=4)
    assert ds["n_measured"].values.tolist() == [5, 9, 13]  # fits 0, 4, 8 of 12 (the 12th, on 16 points, is the final)
    assert ds["prediction_at"].shape == (3, 20, 20) and ds["prediction"].shape == SHAPE


@pytest.mark.parametrize("kw, match", [
    ({"n_init": 0}, "n_init must be >= 1"),
    ({"n_init": 5, "budget": 5}, r"budget \(5\) must exceed n_init \(5\)"),
    ({"budget": 401}, r"budget \(401\) exceeds the 400 candidate"),
    ({"record_every": 0}, "record_every"),
    ({"resources": {}}, "resources"),
    ({"resources": {"GPU": -1}}, "positive"),
])
def test_bad_parameters_are_refused_before_any_measurement(kw, match):
    measure = Measure()
    with pytest.raises(ParameterError, match=match):
        _run(measure=measure, **kw)
    assert measure.calls == []


def test_protocol_breaches_are_named():
    with pytest.raises(ParameterError, match="already measured"):
        _run(acquisition=lambda m, s, measured, rng: (int(np.flatnonzero(measured)[0]), s))
    with pytest.raises(ParameterError, match="Features"):
        run_experiment(np.zeros((400, 2)), Measure(), scalarizer=mean_scalarizer, acquisition=max_std,
                       model_factory=GPStandIn, n_init=5, budget=25, seed=0)


def test_training_runs_on_the_gpu_worker_of_the_cluster():
    from distributed import Client, LocalCluster

    SEEN.clear()
    CANDIDATES.clear()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, resources={"GPU": 1}, dashboard_address=None) as cl, \
            Client(cl) as client:
        (worker,) = client.scheduler_info()["workers"]
        ds = _run(seed=1, budget=12)
        assert ds.attrs["training"].startswith(f"worker {worker}")
    assert SEEN == [worker] * 8  # 7 choices and the final fit, each seen from inside the task
    assert set(ds["fit_worker"].values[5:].tolist()) == {worker}
    assert len(CANDIDATES) == 8 and len(set(CANDIDATES)) == 1  # one copy of the features on the worker, sent once
    # the same run in-process chooses the same pixels
    np.testing.assert_array_equal(_run(seed=1, budget=12)["order"].values, ds["order"].values)


def test_a_required_resource_that_no_worker_offers_fails_before_measuring():
    from distributed import Client, LocalCluster

    measure = Measure()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cl, Client(cl):
        with pytest.raises(ResourceUnavailableError, match="GPU"):
            _run(measure=measure, resources={"GPU": 1})
    assert measure.calls == []


def test_a_labelled_signal_reaches_the_scalarizer_with_its_energy_axis():
    energy = np.linspace(0.0, 7.0, 8)

    def measure(y, x):
        return xr.DataArray(TRUTH[y, x] * CHANNELS, dims="energy", coords={"energy": energy})

    def band(spectra):  # mean over 2-4 keV (channels 2, 3, 4)
        assert spectra.dims == ("pixel", "energy")
        return spectra.sel(energy=slice(2.0, 4.0)).mean("energy").values

    ds = run_experiment(_features(), measure, scalarizer=band, acquisition=max_std, model_factory=GPStandIn,
                        n_init=3, budget=6, seed=0)
    expect = [TRUTH[y, x] * CHANNELS[2:5].mean() for y, x in zip(ds["visited_y"].values, ds["visited_x"].values, strict=True)]
    np.testing.assert_allclose(ds["value"].values, expect, rtol=1e-14)
    with pytest.raises(ParameterError, match="returned 8 values"):
        run_experiment(_features(), measure, scalarizer=lambda s: s.values, acquisition=max_std, model_factory=GPStandIn,
                       n_init=3, budget=6, seed=0)


@pytest.mark.parametrize("yx, match", [
    ([(0, 0), (0, 0)], "given twice"),
    ([(0, 0), (2, 0)], "outside the image"),
    ([(0, 0), (-1, 0)], "outside the image"),
])
def test_features_refuse_bad_pixels(yx, match):
    with pytest.raises(ParameterError, match=match):
        Features(np.zeros((2, 1)), np.array(yx), (2, 2))


def test_a_budget_of_every_candidate_measures_each_once_and_leaves_no_acquisition():
    yx = np.stack(np.divmod(np.arange(25), 5), 1)
    feats = Features(yx / 4.0, yx, (5, 5))
    measure = Measure()
    ds = run_experiment(feats, measure, scalarizer=mean_scalarizer, acquisition=max_std, model_factory=GPStandIn,
                        n_init=3, budget=25, seed=0)
    assert sorted(measure.calls) == [tuple(p) for p in yx.tolist()]
    assert np.isnan(ds["acquisition"].values).all() and sorted(ds["order"].values.ravel().tolist()) == list(range(25))


def test_montage_measure_reads_the_spectrum_of_a_mosaic_pixel(montage):
    from xsi_dask.active.measure import MontageMeasure

    st, _ = montage
    counts = xsi_dask.open_montage(st)
    measure = MontageMeasure(st)
    for y, x, t, ty, tx in [(5, 15, 0, 5, 15), (0, 16, 1, 0, 0), (15, 31, 1, 15, 15), (9, 20, 1, 9, 4)]:
        s = measure(y, x)
        ref = counts.isel(tile=t, y=ty, x=tx).data.compute().todense()
        assert ref.sum() > 0
        np.testing.assert_array_equal(s.values, ref)
        np.testing.assert_array_equal(s["energy"].values, st.energy)
        assert (s.attrs["tile"], s.attrs["y"], s.attrs["x"]) == (t, ty, tx)
    assert measure.calls_[1] == (0, 16)
    with pytest.raises(ParameterError, match="outside the mosaic"):
        measure(16, 0)


def test_an_experiment_on_the_montage_from_patches_and_stored_spectra(montage):
    from xsi_dask.active.measure import MontageMeasure

    st, results = montage
    feats = combine_features(montage_patches(st, "HAADF", 3), reduced_features(results, "nmf"))
    measure = MontageMeasure(st)

    def band(spectra):  # counts in 0.2-0.6 keV
        return spectra.sel(energy=slice(0.2, 0.6)).sum("energy").values

    ds = run_experiment(feats, measure, scalarizer=band, acquisition=max_std, model_factory=GPStandIn,
                        n_init=5, budget=12, seed=0)
    assert ds["prediction"].shape == (16, 32) and not np.isnan(ds["prediction"].values).any()
    counts = xsi_dask.open_montage(st).sel(energy=slice(0.2, 0.6)).sum("energy").data.compute().todense()  # (tile, y, x)
    for y, x, v in zip(ds["visited_y"].values, ds["visited_x"].values, ds["value"].values, strict=True):
        assert v == counts[x // 16, y, x % 16]
    assert np.unique(ds["value"].values).size > 3  # the band holds counts that vary over the montage
    assert measure.calls_ == list(zip(ds["visited_y"].values.tolist(), ds["visited_x"].values.tolist(), strict=True))


def test_a_subset_of_candidates_keeps_its_pixels_and_the_loop_stays_inside_it():
    f = _features()
    sub = f.take((f.yx % 2 == 0).all(1))  # every other pixel in y and x: 100 candidates
    assert sub.n_pixels == 100 and (sub.yx % 2 == 0).all() and sub.shape == SHAPE
    np.testing.assert_array_equal(sub.values, sub.yx / 19.0)
    ds = run_experiment(sub, Measure(), scalarizer=mean_scalarizer, acquisition=max_std, model_factory=GPStandIn,
                        n_init=5, budget=15, seed=0)
    assert (ds["visited_y"] % 2 == 0).all() and (ds["visited_x"] % 2 == 0).all()
    assert np.isnan(ds["prediction"].values[1::2]).all() and not np.isnan(ds["prediction"].values[::2, ::2]).any()
    with pytest.raises(ParameterError, match="given twice"):
        f.take([0, 0])
    with pytest.raises(ParameterError, match="outside"):
        f.take([400])


# ---- the real pieces wired together: DKLModel, the named acquisitions, a parsed scalarizer ----

def _spots_task():
    """A 20 x 20 image of six Gaussian spots on a weak noise floor; the scalar is the mean of each pixel's 3 x 3 patch.

    The scalar is a fixed function of the patch (the DKL's input), so a model of the patches can
    find the brightest patches; the top 5 % (20 pixels) are the spots' cores.
    """
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(12)
    img = 0.1 * rng.random(SHAPE)
    for cy, cx in rng.uniform(2, 17, size=(6, 2)):
        img += np.exp(-((YY - cy) ** 2 + (XX - cx) ** 2) / 2.0)
    truth = uniform_filter(img, 3, mode="reflect")  # the reflected edge of structure_patches: 'reflect' is d c b a | a b c d
    return img, truth


@pytest.mark.slow
def test_a_dkl_experiment_with_expected_improvement_end_to_end():
    pytest.importorskip("gpytorch")
    from xsi_dask.active.acquisition import make_acquisition
    from xsi_dask.active.model import dkl_factory, feature_bounds

    img, truth = _spots_task()
    feats = structure_patches(img, 3)
    top = truth >= np.quantile(truth, 0.95)
    assert top.sum() == 20

    def measure(y, x):
        return np.array([truth[y, x]])

    factory = dkl_factory(feature_bounds(feats.values), steps=20, lr=0.01)

    def run(name, seed):
        return run_experiment(feats, measure, scalarizer=lambda s: np.asarray(s)[..., 0], acquisition=make_acquisition(name),
                              model_factory=factory, n_init=5, budget=30, seed=seed)

    found = {"ei": [], "random": []}
    for seed in range(2):
        for name in found:
            ds = run(name, seed)
            visited = list(zip(ds["visited_y"].values.tolist(), ds["visited_x"].values.tolist(), strict=True))
            assert len(set(visited)) == 30 and ds["initial"].values.sum() == 5
            np.testing.assert_allclose(ds["value"].values, [truth[p] for p in visited], rtol=0, atol=0)
            found[name].append(int(top[ds["visited_y"].values, ds["visited_x"].values].sum()))
            if seed == 0 and name == "ei":
                again = run(name, seed)
                for var in ("visited_y", "visited_x", "value", "prediction", "uncertainty", "acquisition"):
                    np.testing.assert_array_equal(again[var].values, ds[var].values, err_msg=var)
                # the acquisition map is EI over the best measured value, -inf where measured
                acq = ds["acquisition"].values
                assert np.isinf(acq[ds["order"].values >= 0]).all() and (acq[ds["order"].values < 0] >= 0).all()
                assert "acquisition ei" in ds.attrs["acquisition_function"]
                # the final fit's noise, in the scalar's units squared (ModelState.noise_variance), kept in the attrs
                assert 0 < ds.attrs["noise_variance"] == again.attrs["noise_variance"] < np.var(ds["value"].values)
    # seen: ei 19, 19 and random 2, 0 of the 20 top pixels (random's expectation: 30/400 * 20 = 1.5)
    assert np.mean(found["ei"]) >= 2 * max(np.mean(found["random"]), 1.5), found


def test_named_acquisitions_follow_the_loop_protocol():
    from xsi_dask.active.acquisition import expected_improvement, make_acquisition, upper_confidence_bound

    mean = np.array([0.0, 1.0, 2.0, 0.5])
    std = np.array([1.0, 0.5, 0.1, 2.0])
    measured = np.array([False, False, True, False])
    observed = np.array([np.nan, np.nan, 1.5, np.nan])
    i, v = make_acquisition("ei")(mean, std, measured, None, observed=observed)
    ref = expected_improvement(mean, std, 1.5)
    np.testing.assert_array_equal(v[~measured], ref[~measured])
    assert v[2] == -np.inf and i == int(np.argmax(np.where(measured, -np.inf, ref)))
    i, v = make_acquisition("ei", maximize=False)(mean, std, measured, None, observed=observed)
    np.testing.assert_array_equal(v[~measured], expected_improvement(mean, std, 1.5, maximize=False)[~measured])
    i, v = make_acquisition("ucb", beta=1.0)(mean, std, measured, None)
    np.testing.assert_array_equal(v[~measured], upper_confidence_bound(mean, std, 1.0)[~measured])
    assert i == 3  # 0.5 + 2.0 beats 1.0 + 0.5 (row 2, 2.1, is measured)
    assert make_acquisition("max-std")(mean, std, measured, None)[0] == 3
    picks = {make_acquisition("random")(mean, std, measured, np.random.default_rng(s))[0] for s in range(30)}
    assert picks == {0, 1, 3}
    with pytest.raises(ParameterError, match="unknown"):
        make_acquisition("pi")
    with pytest.raises(ParameterError, match=r"\['beta'\] do not apply"):
        make_acquisition("ei", beta=2.0)
    with pytest.raises(ParameterError, match="beta"):
        make_acquisition("ucb", beta=-1.0)
    with pytest.raises(ParameterError, match="max_joint"):
        make_acquisition("thompson", max_joint=0)
    with pytest.raises(ParameterError, match="observed"):
        make_acquisition("ei")(mean, std, measured, None)
    with pytest.raises(ParameterError, match="model_values"):
        make_acquisition("thompson")(mean, std, measured, None)


def test_thompson_and_the_plain_gp_on_coordinates_run_in_the_loop():
    pytest.importorskip("gpytorch")
    from xsi_dask.active.acquisition import make_acquisition
    from xsi_dask.active.features import coordinate_features
    from xsi_dask.active.model import feature_bounds, plain_gp_factory

    feats = coordinate_features(_features())
    np.testing.assert_array_equal(feats.values, feats.yx)
    factory = plain_gp_factory(feature_bounds(feats.values), steps=30)
    kw = dict(scalarizer=mean_scalarizer, acquisition=make_acquisition("thompson"), model_factory=factory,
              n_init=5, budget=15, seed=4)
    a, b = run_experiment(feats, Measure(), **kw), run_experiment(feats, Measure(), **kw)
    np.testing.assert_array_equal(a["order"].values, b["order"].values)  # the draw's seed comes from the run's seed
    assert (a["order"].values >= 0).sum() == 15
    acq = a["acquisition"].values
    assert np.isinf(acq[a["order"].values >= 0]).all() and np.isfinite(acq[a["order"].values < 0]).all()
    with pytest.raises(ParameterError, match="seed"):
        plain_gp_factory(feature_bounds(feats.values), seed=1)
    with pytest.raises(ParameterError, match="kernel"):
        plain_gp_factory(feature_bounds(feats.values), kernel="cosine")


EELS = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eels").resolve()
# Zn L3 (1020 eV) over Cu L3,2 (931, 951 eV), both integrated over 80 eV above the onset, after one power law
# fitted before the Cu edge (820-916 eV: the mean spectrum falls smoothly there, the Cu step starts at 924-932 eV)
CUZN_SPEC = "ratio:1020-1100/924-1004:bg=820-916:units=eV"


def cuzn_experiment(seed: int):
    """The CuZn pair: HAADF patches (window 5) as features, the EELS SI as the instrument, EI on the Zn/Cu ratio."""
    from rsciio.hspy import file_reader
    from scipy.stats import spearmanr

    from xsi_dask.active.acquisition import make_acquisition
    from xsi_dask.active.model import dkl_factory, feature_bounds
    from xsi_dask.active.scalarizers import parse_scalarizer

    haadf = np.asarray(file_reader(str(EELS / "CuZn_HAADF.hspy"))[0]["data"], dtype=np.float64)
    eels = file_reader(str(EELS / "CuZn_EELS_mapping_tutorial.hspy"))[0]
    si = np.asarray(eels["data"], dtype=np.float64)
    ax = eels["axes"][-1]
    assert ax["units"] == "eV"
    energy = ax["offset"] + ax["scale"] * np.arange(si.shape[-1])
    scalarizer = parse_scalarizer(CUZN_SPEC, energy=energy, units="eV")
    truth = scalarizer(si)  # (50, 40): the true map, for the check only
    feats = structure_patches(haadf, 5)
    calls = []

    def measure(y, x):
        calls.append((y, x))
        return si[y, x]

    ds = run_experiment(feats, measure, scalarizer=scalarizer, acquisition=make_acquisition("ei"),
                        model_factory=dkl_factory(feature_bounds(feats.values), steps=20), n_init=5, budget=30, seed=seed)
    unmeasured = ds["order"].values < 0
    rho = spearmanr(ds["prediction"].values[unmeasured], truth[unmeasured]).statistic
    return ds, truth, calls, float(rho)


@pytest.mark.skipif(not EELS.is_dir(), reason=f"real EELS data not found at {EELS}")
@pytest.mark.slow  # ~30 s: make test-all (make test under 20 min)
def test_cuzn_haadf_patches_steer_the_eels_measurements():
    pytest.importorskip("gpytorch")
    ds, truth, calls, rho = cuzn_experiment(0)
    assert ds["prediction"].shape == (50, 40) and truth.shape == (50, 40)
    visited = list(zip(ds["visited_y"].values.tolist(), ds["visited_x"].values.tolist(), strict=True))
    assert calls == visited and len(set(visited)) == 30
    # the power-law fit of one spectrum and of the batch differ in rounding (1.6e-12 seen)
    np.testing.assert_allclose(ds["value"].values, [truth[p] for p in visited], rtol=1e-9)
    assert np.isfinite(ds["prediction"].values).all() and (ds["uncertainty"].values > 0).all()
    # seen (seed 0, 20 Adam steps per fit): Spearman rho of the prediction and the true ratio over the 1,970
    # unmeasured pixels 0.191; with other settings 0.256, -0.002, 0.039 for seeds 0-2: not reliably positive (the
    # HAADF hardly predicts this noisy ratio; rank correlation of HAADF and ratio 0.03), so no bound is asserted;
    # the value is a finite number
    assert np.isfinite(rho)
    print(f"CuZn seed 0: Spearman rho(prediction, true ratio) over the unmeasured pixels = {rho:.3f}")


def test_an_acquisition_asking_for_an_extra_the_loop_lacks_is_refused_before_measuring():
    class Odd:
        requires = ("labels",)

        def __call__(self, mean, std, measured, rng, **extra):
            return max_std(mean, std, measured, rng)

    class NoMethod(Odd):
        requires = ("model_values",)

    for acq, match in ((Odd(), r"\['labels'\]"), (NoMethod(), "no method model_values")):
        measure = Measure()
        with pytest.raises(ParameterError, match=match):
            _run(acquisition=acq, measure=measure)
        assert measure.calls == []


def test_a_thompson_draw_is_made_on_the_gpu_worker_and_matches_the_in_process_run():
    pytest.importorskip("gpytorch")
    from distributed import Client, LocalCluster

    from xsi_dask.active.acquisition import make_acquisition
    from xsi_dask.active.features import coordinate_features
    from xsi_dask.active.model import feature_bounds, plain_gp_factory

    feats = coordinate_features(_features())
    kw = dict(scalarizer=mean_scalarizer, acquisition=make_acquisition("thompson"),
              model_factory=plain_gp_factory(feature_bounds(feats.values), steps=20), n_init=5, budget=9, seed=2)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, resources={"GPU": 1}, dashboard_address=None) as cl, \
            Client(cl) as client:
        (worker,) = client.scheduler_info()["workers"]
        ds = run_experiment(feats, Measure(), **kw)
    assert set(ds["fit_worker"].values[5:].tolist()) == {worker}
    local = run_experiment(feats, Measure(), **kw)
    np.testing.assert_array_equal(local["order"].values, ds["order"].values)
    np.testing.assert_array_equal(local["acquisition"].values, ds["acquisition"].values)
