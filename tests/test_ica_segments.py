"""ICA (HyperSpy's blind source separation convention) and k-means segmentation of the stored maps.

References: scikit-learn's FastICA on the same whitened sample (whitening and
the draw re-implemented here in NumPy), HyperSpy's ``blind_source_separation``
on the same SVD factors of a real map, the truth of the simulator (dominant
phase), and the dense per-cluster mean of the counts.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

import xsi_dask
from xsi_dask.decomposition import ica, segment
from xsi_dask.decomposition._segment import assign, pixel_features
from xsi_dask.errors import DecompositionError, MissingDependencyError, StoreFormatError
from xsi_dask.io.results import open_results, write_results
from xsi_dask.montage.prepare import analysis_view
from xsi_dask.testing.simulate import open_truth, simulate

from .conftest import EDS

pytest.importorskip("sklearn")
pytest.importorskip("dask_ml")

DOMINANT = 0.9  # a pixel "has" a phase when its true area fraction is >= 0.9 (mixed pixels have no right label)


def dense_counts(view):
    return np.asarray(view.data.map_blocks(lambda b: b.todense(), dtype=view.dtype).compute(), dtype=np.float64)


def dominant(path):
    a = open_truth(path)["abundances"].values
    return a.argmax(-1).ravel(), (a.max(-1) >= DOMINANT).ravel()


@pytest.fixture(scope="module")
def grade91(tmp_path_factory):
    """2 x 2 tiles of 32 x 32 px, 512 channels, 50 counts/px: SVD (k = 6 phases) and a short NMF in one store."""
    d = tmp_path_factory.mktemp("ica_seg")
    simulate(d / "m.zarr", preset="grade91_replica", tiles=(2, 2), tile_shape=(32, 32), channels=512,
             counts_per_pixel=50, seed=0, progress=False)
    k = open_truth(d / "m.zarr").sizes["phase"]
    view = analysis_view(xsi_dask.open_montage(d / "m.zarr"))
    write_results(d / "r.zarr", {"svd": xsi_dask.decompose(view, k, solver="gram")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short NMF stops at max_iter on purpose
        xsi_dask.nmf(view, k, max_iter=30, out=d / "r.zarr")
    return d, view, k


@pytest.fixture(scope="module")
def aluminum(tmp_path_factory):
    """2 x 2 tiles of 64 x 64 px, 1024 channels, 50 counts/px: SVD with k = 4 phases."""
    d = tmp_path_factory.mktemp("seg_al")
    simulate(d / "m.zarr", preset="am_aluminum", tiles=(2, 2), tile_shape=(64, 64), channels=1024,
             counts_per_pixel=50, seed=0, progress=False)
    k = open_truth(d / "m.zarr").sizes["phase"]
    write_results(d / "r.zarr", {"svd": xsi_dask.decompose(analysis_view(xsi_dask.open_montage(d / "m.zarr")), k,
                                                           solver="gram")})
    return d, k


# ---- ICA ----

def reference_unmixing(X, seed, max_iter=1000, tol=1e-10):
    """HyperSpy's whitening (centre, R = Xc'Xc/n, W = U'/sqrt(s + 1e-10)) then scikit-learn's FastICA; w = comp @ W."""
    from sklearn.decomposition import FastICA

    Xc = X - X.mean(0)
    U, s, _ = np.linalg.svd(Xc.T @ Xc / Xc.shape[0])
    U = U * np.sign(U[np.abs(U).argmax(0), np.arange(U.shape[1])])
    W = U.T / np.sqrt(s + 1e-10)[:, None]
    est = FastICA(whiten=False, random_state=seed, max_iter=max_iter, tol=tol).fit(Xc @ W.T)
    return est.components_ @ W, est, Xc @ W.T


def match(ours, ref):
    """Permutation and signs taking the rows of ref to those of ours (each row matched once)."""
    c = np.corrcoef(np.vstack([ours, ref]))[: len(ours), len(ours):]
    perm = np.abs(c).argmax(1)
    assert sorted(perm) == list(range(len(ours)))
    return perm, np.sign(c[np.arange(len(ours)), perm])


def test_ica_on_maps_is_scikit_learns_fastica_on_the_seeded_sample(grade91):
    d, _, k = grade91
    svd = open_results(d / "r.zarr", "svd")
    got = ica(d / "r.zarr", on="maps", sample=1500, seed=3)
    scores = svd["scores"].values.reshape(-1, k)
    idx = np.sort(np.random.default_rng(3).choice(scores.shape[0], size=1500, replace=False))
    w, est, Y = reference_unmixing(scores[idx], seed=3)
    perm, sign = match(got["unmixing"].values, w)
    np.testing.assert_allclose(got["unmixing"].values, sign[:, None] * w[perm], rtol=0, atol=1e-10 * np.abs(w).max())
    # the maps at the sampled pixels are FastICA's sources (up to the mean the whitening removed)
    maps = got["scores"].values.reshape(-1, k)[idx]
    src = est.transform(Y)[:, perm] * sign
    np.testing.assert_allclose(maps - maps.mean(0), src, atol=1e-10 * np.abs(src).max())
    assert got.attrs["sample_size"] == 1500 and got.attrs["seed"] == 3 and got.attrs["passes"] == 0
    assert got.attrs["converged"] == 1 and got.attrs["n_iter"] == est.n_iter_
    # the same rank-k model: scores @ loadings unchanged
    np.testing.assert_allclose(np.einsum("pc,ce->pe", got["scores"].values.reshape(-1, k), got["loadings"].values),
                               scores @ svd["loadings"].values, atol=1e-10 * np.abs(scores @ svd["loadings"].values).max())
    np.testing.assert_allclose(got["mixing"].values @ got["unmixing"].values, np.eye(k), atol=1e-10)


def test_ica_on_spectra_and_its_lazy_maps(grade91):
    d, _, k = grade91
    svd = open_results(d / "r.zarr", "svd")
    got = ica(d / "r.zarr", on="spectra", seed=0)
    assert got["scores"].chunks[0] == (1,) * svd.sizes["tile"]  # lazy, one chunk per tile
    L = np.gradient(svd["loadings"].values, svd["energy"].values, axis=1)  # HyperSpy's diff_order=1
    w, _, _ = reference_unmixing(L.T, seed=0)
    perm, sign = match(got["unmixing"].values, w)
    np.testing.assert_allclose(got["unmixing"].values, sign[:, None] * w[perm], atol=1e-10 * np.abs(w).max())
    np.testing.assert_allclose(got["loadings"].values, got["unmixing"].values @ svd["loadings"].values, rtol=1e-12)
    np.testing.assert_allclose(got["scores"].values, svd["scores"].values @ got["mixing"].values, rtol=1e-10,
                               atol=1e-12 * np.abs(svd["scores"].values).max())
    # in-memory SVD result and the store give the same components
    again = ica(svd.load(), on="spectra", seed=0)
    np.testing.assert_array_equal(again["unmixing"].values, got["unmixing"].values)
    assert got.attrs["store_uuid"] == svd.attrs["store_uuid"] and got.attrs["diff_order"] == 1


def test_ica_equals_hyperspys_blind_source_separation_on_a_real_map(tmp_path, needs_data):
    hs = pytest.importorskip("hyperspy.api")
    m = xsi_dask.open_montage(xsi_dask.ingest(EDS / "bcf_v2_50x50px.bcf", tmp_path / "m.zarr", progress=False))
    view = m.sel(energy=slice(0.2, 10.0))  # the lines of this map; fewer channels, a faster gram
    k = 4
    svd = xsi_dask.decompose(view, k, solver="gram")
    e = svd["energy"].values
    for on, on_loadings, diff_order in (("spectra", False, 1), ("maps", True, 0)):
        got = ica(svd, on=on, sample=None, seed=1)
        s = hs.signals.Signal1D(np.zeros((svd.sizes["y"], svd.sizes["x"], e.size)))
        s.axes_manager[-1].offset, s.axes_manager[-1].scale = e[0], e[1] - e[0]
        lr = s.learning_results
        lr.factors = svd["loadings"].values.T.copy()  # HyperSpy's factors: the spectra; its loadings: the maps
        lr.loadings = svd["scores"].values[0].reshape(-1, k).copy()
        lr.explained_variance, lr.output_dimension = svd["singular_values"].values ** 2, k
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s.blind_source_separation(k, algorithm="sklearn_fastica", on_loadings=on_loadings, diff_order=diff_order,
                                      random_state=1, max_iter=1000, print_info=False)
        # same order and signs as HyperSpy (its sort by explained variance, its sign rule), to round-off
        np.testing.assert_allclose(got["loadings"].values, lr.bss_factors.T, rtol=0,
                                   atol=1e-10 * np.abs(lr.bss_factors).max())
        np.testing.assert_allclose(got["scores"].values[0].reshape(-1, k), lr.bss_loadings, rtol=0,
                                   atol=1e-10 * np.abs(lr.bss_loadings).max())


def test_ica_that_stops_at_max_iter_warns_and_says_so(grade91):
    from xsi_dask.errors import ConvergenceWarning

    d, _, _ = grade91
    with pytest.warns(ConvergenceWarning, match="max_iter = 2"):
        got = ica(d / "r.zarr", max_iter=2)
    assert got.attrs["converged"] == 0 and got.attrs["n_iter"] == 2


def test_ica_refuses_bad_arguments(grade91, tmp_path):
    d, _, k = grade91
    with pytest.raises(DecompositionError, match="n_components.*got 1"):
        ica(d / "r.zarr", 1)
    with pytest.raises(DecompositionError, match=f"n_components.*{k}.*got {k + 1}"):
        ica(d / "r.zarr", k + 1)
    with pytest.raises(DecompositionError, match="on must be.*'factors'"):
        ica(d / "r.zarr", on="factors")
    with pytest.raises(DecompositionError, match="diff_order.*got 1"):
        ica(d / "r.zarr", on="maps", diff_order=1)
    with pytest.raises(DecompositionError, match="sample.*got 2"):
        ica(d / "r.zarr", on="maps", sample=2)
    write_results(tmp_path / "r.zarr", {"nmf": open_results(d / "r.zarr", "nmf").load()})
    with pytest.raises(StoreFormatError, match="no 'svd' group"):
        ica(tmp_path / "r.zarr")


# ---- segmentation ----

@pytest.mark.parametrize("fixture", ["aluminum", "grade91"])
def test_segment_labels_match_the_true_dominant_phase(fixture, request):
    from sklearn.metrics import adjusted_rand_score

    d, k = request.getfixturevalue(fixture)[::2] if fixture == "grade91" else request.getfixturevalue(fixture)
    true, dom = dominant(d / "m.zarr")
    seg = segment(d / "r.zarr", k, group="svd", seed=0, n_init=2)  # 2 runs (default 5) to keep the file fast
    labels = seg["labels"].values.ravel()
    assert adjusted_rand_score(true[dom], labels[dom]) >= 0.9
    assert seg["labels"].dtype == np.int32 and seg["labels"].chunks[0] == (1,) * 4
    # NMF abundance fractions are not asserted: their noise grows as 1/counts, and k-means splits the low-count
    # phase (ARI 0.41-0.96 on larger montages, docs/design.md)


@pytest.mark.parametrize("group", ["svd", "nmf"])
def test_segment_mean_spectra_equal_the_dense_mean_per_label(grade91, group):
    d, view, k = grade91
    seg = segment(d / "r.zarr", k, group=group, seed=1, n_init=1)
    labels = seg["labels"].values.ravel()
    D = dense_counts(view).reshape(labels.size, -1)
    want = np.stack([D[labels == c].mean(0) for c in range(k)])
    np.testing.assert_allclose(seg["mean_spectra"].values, want, rtol=1e-12)
    np.testing.assert_array_equal(seg["pixels"].values, np.bincount(labels, minlength=k))
    assert list(seg["pixels"].values) == sorted(seg["pixels"].values, reverse=True)  # numbered by size
    assert seg.attrs["passes"] == 1 and seg["mean_spectra"].dims == ("cluster", "energy")
    # the label map is the nearest centroid of the features
    src = open_results(d / "r.zarr", group)
    vals = src["scores" if group == "svd" else "abundances"].values.reshape(labels.size, k)
    X, keep = pixel_features(vals, src["pixel_counts"].values.ravel() if group == "svd" else None, group)
    np.testing.assert_array_equal(labels, assign(X, keep, seg["centroids"].values))
    d2 = ((X - seg["centroids"].values[labels]) ** 2).sum(1)
    np.testing.assert_allclose(seg["inertia"].values, np.bincount(labels, weights=d2, minlength=k), rtol=1e-10)


def test_segment_is_seeded_and_the_same_for_any_tiling_into_units(grade91, monkeypatch):
    import xsi_dask.engine.plan as plan_mod

    d, _, k = grade91
    one = segment(d / "r.zarr", k, group="nmf", seed=2, n_init=2)
    split = plan_mod.split_units
    monkeypatch.setattr(plan_mod, "split_units", lambda tiles, pixels, workers: split(tiles, pixels, 3 * len(tiles)))
    three = segment(d / "r.zarr", k, group="nmf", seed=2, n_init=2)  # 3 uneven row blocks per tile (1024 px / 3)
    np.testing.assert_array_equal(one["labels"].values, three["labels"].values)
    np.testing.assert_array_equal(one["pixels"].values, three["pixels"].values)
    np.testing.assert_allclose(one["mean_spectra"].values, three["mean_spectra"].values, rtol=1e-15)


def test_features_and_labels_of_pixels_without_counts():
    scores = np.array([[2.0, 4.0], [0.0, 0.0], [3.0, -3.0]])
    X, keep = pixel_features(scores, np.array([4.0, 0.0, 9.0]), "svd")
    np.testing.assert_array_equal(X, [[1.0, 2.0], [0.0, 0.0], [1.0, -1.0]])
    assert list(keep) == [True, False, True]
    X, keep = pixel_features(np.array([[1.0, 3.0], [0.0, 0.0]]), None, "nmf")
    np.testing.assert_array_equal(X, [[0.25, 0.75], [0.0, 0.0]])
    assert list(assign(X, keep, np.array([[1.0, 0.0], [0.0, 1.0]]))) == [1, -1]


def test_segment_refuses_bad_arguments(grade91, monkeypatch):
    d, _, _ = grade91
    with pytest.raises(DecompositionError, match="n_clusters.*got 1"):
        segment(d / "r.zarr", 1)
    with pytest.raises(DecompositionError, match="n_clusters.*4096 pixels with counts; got 5000"):
        segment(d / "r.zarr", 5000)
    with pytest.raises(StoreFormatError, match="no group 'ica'"):
        segment(d / "r.zarr", 3, group="ica")
    with pytest.raises(StoreFormatError, match="no 'maps'"):
        segment(d / "r.zarr", 3, group="nmf", variable="maps")
    with pytest.raises(StoreFormatError, match="not a per-tile map"):
        segment(d / "r.zarr", 3, group="nmf", variable="spectra")
    with pytest.raises(DecompositionError, match="n_init.*got 0"):
        segment(d / "r.zarr", 3, n_init=0)
    with pytest.raises(DecompositionError, match="init must be"):
        segment(d / "r.zarr", 3, init="kmeans")
    monkeypatch.setitem(sys.modules, "dask_ml.cluster", None)  # dask-ml not installed
    with pytest.raises(MissingDependencyError, match=r"pip install xsi-dask\[segment\]"):
        segment(d / "r.zarr", 3)


def test_results_are_written_as_groups_of_the_results_store(grade91, tmp_path):
    d, _, k = grade91
    got = ica(d / "r.zarr", on="maps", sample=500, out=tmp_path / "r.zarr")
    seg = segment(d / "r.zarr", k, n_init=1, out=d / "r.zarr")  # into the store it reads its maps from
    back = open_results(tmp_path / "r.zarr", "ica")
    np.testing.assert_array_equal(back["scores"].values, got["scores"].values)
    stored = open_results(d / "r.zarr", "segments")
    np.testing.assert_array_equal(stored["labels"].values, seg["labels"].values)
    assert stored["labels"].chunks[0] == (1,) * 4 and stored.attrs["group"] == "svd"
    assert {"svd", "nmf", "segments"} <= {p.name for p in (d / "r.zarr").iterdir()}
    with pytest.raises(DecompositionError, match="path of a results store"):
        segment(open_results(d / "r.zarr", "svd"), k)
