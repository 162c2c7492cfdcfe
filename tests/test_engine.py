"""The pass engine: views honoured or refused, absolute paths, resources, backends, NMF's pure steps.

These tests run on simulated stores, so they need no ../shared/data; the
backend comparison on real maps is at the end and skips without the data.
"""

from __future__ import annotations

import os
import time

import dask
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import xsi_dask
from xsi_dask.cluster.local import dask_client
from xsi_dask.engine import make_plan, run_on_resource
from xsi_dask.errors import DecompositionError, ResourceUnavailableError, ViewError
from xsi_dask.io.store import MontageStore, write_montage_attrs, write_tile
from xsi_dask.testing.simulate import simulate

from .conftest import EDS


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A 2 x 2 simulated montage of 32 x 32 pixels x 256 channels, 30 counts per pixel."""
    path = tmp_path_factory.mktemp("engine") / "sim.zarr"
    return simulate(path, tiles="2x2", tile_shape="32x32", channels=256, counts_per_pixel=30, seed=3, progress=False)


def _subset_store(st: MontageStore, tiles: list[int], out) -> MontageStore:
    """A new store holding only ``tiles`` of ``st`` (their CSR arrays copied), in that order."""
    root = zarr.open_group(str(out), mode="w", zarr_format=3)
    g = root.create_group("tiles")
    infos = []
    for i, t in enumerate(tiles):
        csr = st.tile_csr(t, cache=False)
        summary = write_tile(g, str(i), csr.indptr, csr.indices, csr.data, st.tile_shape, st.channels,
                             attrs={k: st.tiles[t][k] for k in ("row", "col", "source", "stage_x", "stage_y", "window")})
        infos.append({**st.tiles[t], **summary})
    keep = {k: v for k, v in st.attrs.items() if k not in ("xsi_dask", "tiles", "nnz", "total_counts", "max_count")}
    write_montage_attrs(root, tiles=infos, **keep)
    return MontageStore(out)


# ---- the view: honoured or refused ----

@pytest.mark.parametrize("edit", [
    lambda m: m * 2,
    lambda m: m.where(m.energy > 0.2, 0),
    lambda m: m.isel(energy=slice(None, None, -1)),
    lambda m: m.coarsen(x=2, y=2).mean(),
    lambda m: m.coarsen(x=2, y=4).sum(),
    lambda m: m.coarsen(x=5, y=5, boundary="trim").sum(),
    lambda m: m.coarsen(energy=2).sum(),
    lambda m: m.sel(energy=slice(1, 9)).sel(energy=slice(2, 8)),
    lambda m: m.coarsen(x=2, y=2).sum().coarsen(x=2, y=2).sum(),
    lambda m: m.isel(x=slice(0, 16)),
    lambda m: m.astype("float32"),
    lambda m: m.isel(tile=[0, 1, 3]).isel(tile=[0, 2]),
    lambda m: m.isel(tile=1),
    lambda m: m.isel(tile=[1, 1]),
    lambda m: m.chunk({"tile": 2}),
    lambda m: m.isel(tile=[0]).compute(),
    lambda m: m.transpose("tile", "x", "y", "energy"),
    lambda m: m.assign_coords(energy=m.energy + 0.01),
], ids=["mul", "where", "reversed-energy", "coarsen-mean", "coarsen-uneven", "coarsen-trim", "coarsen-energy",
        "chained-energy", "chained-coarsen", "pixel-slice", "astype", "chained-isel",
        "scalar-tile", "repeated-tile", "rechunk", "computed", "transpose", "shifted-energy"])
def test_views_the_engine_cannot_honour_are_refused(sim, edit):
    m = xsi_dask.open_montage(sim)
    view = edit(m)
    with pytest.raises(ViewError):
        xsi_dask.decompose(view, 3)
    with pytest.raises(ViewError):
        xsi_dask.nmf(view, 2, max_iter=2)
    assert issubclass(ViewError, DecompositionError)


def test_refusal_says_what_and_what_to_do(sim):
    m = xsi_dask.open_montage(sim)
    with pytest.raises(ViewError, match=r"'mul'.*isel\(tile="):
        make_plan(m * 2)
    with pytest.raises(ViewError, match="energy axis is not an increasing selection"):
        make_plan(m.isel(energy=[5, 3, 4]))
    with pytest.raises(ViewError, match=r"coarsen\(y=b, x=b\)\.sum\(\), b dividing"):
        make_plan(m.coarsen(x=5, y=5, boundary="trim").sum())
    with pytest.raises(ViewError, match="chained selections"):
        make_plan(m.sel(energy=slice(1, 9)).sel(energy=slice(2, 8)))
    with pytest.raises(ViewError, match=r"isel\(tile=\[t\]\)"):
        make_plan(m.isel(tile=0))


@pytest.mark.parametrize("select", [
    lambda m: m.isel(tile=[0, 3]),
    lambda m: m.sel(tile=[0, 3]),
    lambda m: m.isel(tile=np.array([0, 3])),
    lambda m: m.isel(tile=slice(0, 4, 3)),
    lambda m: m.isel(tile=(m.row == m.col).values),
], ids=["isel-list", "sel", "isel-array", "isel-slice", "isel-mask"])
def test_tile_selection_equals_a_store_of_those_tiles(sim, tmp_path, select):
    """A tile selection is honoured: the same SVD and NMF as a store holding only those tiles."""
    m = xsi_dask.open_montage(sim)
    view = select(m)
    assert make_plan(view).tiles == (0, 3)
    ref = xsi_dask.open_montage(_subset_store(sim, [0, 3], tmp_path / "sub.zarr"))
    with dask.config.set(scheduler="sync"):
        a, b = xsi_dask.decompose(view, 4), xsi_dask.decompose(ref, 4)
        np.testing.assert_array_equal(a.singular_values.values, b.singular_values.values)
        np.testing.assert_array_equal(a.loadings.values, b.loadings.values)
        np.testing.assert_array_equal(a.scores.values, b.scores.values)
        np.testing.assert_array_equal(a.tile.values, [0, 3])
        na, nb = xsi_dask.nmf(view, 3, max_iter=8, tol=0), xsi_dask.nmf(ref, 3, max_iter=8, tol=0)
        np.testing.assert_array_equal(na.spectra.values, nb.spectra.values)
        np.testing.assert_array_equal(na.abundances.values, nb.abundances.values)


def test_whole_view_and_copy_are_honoured(sim):
    m = xsi_dask.open_montage(sim)
    assert make_plan(m).tiles == make_plan(m.copy()).tiles == (0, 1, 2, 3)
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(xsi_dask.decompose(m.copy(), 3).singular_values.values,
                                      xsi_dask.decompose(m, 3).singular_values.values)


def test_plan_is_frozen_with_absolute_store_path(sim, tmp_path, monkeypatch):
    monkeypatch.chdir(sim.path.parent)
    m = xsi_dask.open_montage(sim.path.name)  # a relative path
    plan = make_plan(m)
    assert os.path.isabs(plan.store) and os.path.isabs(m.attrs["store"])
    with pytest.raises(AttributeError):
        plan.tiles = (0,)  # type: ignore[misc]


def test_workers_in_another_directory_read_a_store_opened_by_a_relative_path(sim, tmp_path, monkeypatch):
    """Worker processes whose working directory is elsewhere still find the store (absolute paths)."""
    monkeypatch.chdir(sim.path.parent)
    m = xsi_dask.open_montage(sim.path.name)
    with dask.config.set(scheduler="sync"):
        ref = xsi_dask.decompose(m, 3)
        ref_scores = ref.scores.values
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with dask_client(workers=2, quiet=True) as client:
        client.run(os.chdir, str(elsewhere))
        assert set(client.run(os.getcwd).values()) == {str(elsewhere)}
        got = xsi_dask.decompose(m, 3)
        np.testing.assert_allclose(got.singular_values.values, ref.singular_values.values, rtol=1e-13)
        np.testing.assert_allclose(got.scores.values, ref_scores, rtol=1e-12, atol=1e-14)


# ---- the pass log ----

def test_pass_log_counts_the_passes_over_the_counts(sim):
    m = xsi_dask.open_montage(sim)
    with dask.config.set(scheduler="sync"):
        svd = xsi_dask.decompose(m, 4, power_iters=3)
        assert svd.attrs["passes"] == 4
        assert xsi_dask.decompose(m, 4, solver="gram").attrs["passes"] == 1
        # NMF from the given SVD: one NNDSVD pass, the iterations, the initial and final loss
        n = xsi_dask.nmf(m, 3, max_iter=5, tol=0, init=svd)
        assert n.attrs["passes"] == 1 + 5 + 2 and n.attrs["init"].startswith("poisson-nndsvda (from the given SVD)")
        # NMF computing its own SVD: the range finder's 11 passes more
        assert xsi_dask.nmf(m, 3, max_iter=5, tol=0).attrs["passes"] == 11 + 1 + 5 + 2


def test_plan_log_records_label_seconds_and_nonzeros(sim):
    from xsi_dask.linalg.operator import PoissonOperator

    plan = make_plan(xsi_dask.open_montage(sim))
    op = PoissonOperator(plan)
    with dask.config.set(scheduler="sync"):
        op.apply(np.eye(plan.n_channels, 3), label="test pass")
    (rec,) = plan.log
    assert rec.label == "test pass" and rec.seconds > 0 and rec.units == 4
    assert rec.nnz == sum(int(t["nnz"]) for t in sim.tiles) and plan.passes == 1


# ---- NMF from an existing SVD ----

def test_nmf_from_an_svd_dataset_equals_nmf_from_the_same_svd_reopened(sim, tmp_path):
    """The pipeline hands decompose's result to nmf; the SVD written and read back gives the same NMF."""
    from xsi_dask.io.results import open_results, write_results

    m = xsi_dask.open_montage(sim)
    with dask.config.set(scheduler="sync"):
        svd = xsi_dask.decompose(m, 6, seed=4)
        write_results(tmp_path / "r.zarr", {"svd": svd})
        a = xsi_dask.nmf(m, 3, max_iter=10, tol=0, init=svd)
        b = xsi_dask.nmf(m, 3, max_iter=10, tol=0, init=open_results(tmp_path / "r.zarr", "svd"))
    np.testing.assert_array_equal(a.spectra.values, b.spectra.values)
    np.testing.assert_array_equal(a.abundances.values, b.abundances.values)
    np.testing.assert_array_equal(a.loss.values, b.loss.values)


def test_nmf_from_an_svd_matches_its_own_poisson_nndsvda(sim):
    """Starting from decompose's SVD of the same k and seed gives the NMF of the built-in start, up to rounding."""
    m = xsi_dask.open_montage(sim)
    with dask.config.set(scheduler="sync"):
        svd = xsi_dask.decompose(m, 3, seed=0, oversampling=10)
        a = xsi_dask.nmf(m, 3, max_iter=20, tol=0, init=svd)
        b = xsi_dask.nmf(m, 3, max_iter=20, tol=0, init="poisson-nndsvda", seed=0)
    np.testing.assert_allclose(a.spectra.values, b.spectra.values, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(a.loss.values, b.loss.values, rtol=1e-10)


def test_nmf_refuses_an_svd_it_cannot_start_from(sim):
    m = xsi_dask.open_montage(sim)
    with dask.config.set(scheduler="sync"):
        small = xsi_dask.decompose(m, 2)
        centred = xsi_dask.decompose(m, 4, center=True)
        other_tiles = xsi_dask.decompose(m.isel(tile=[0, 1]), 4)
    with pytest.raises(DecompositionError, match="needs >= 3 components"):
        xsi_dask.nmf(m, 3, init=small)
    with pytest.raises(DecompositionError, match="uncentred"):
        xsi_dask.nmf(m, 3, init=centred)
    with pytest.raises(DecompositionError, match="other tiles"):
        xsi_dask.nmf(m, 3, init=other_tiles)


def test_nmf_checks_out_before_any_pass(sim, tmp_path):
    from xsi_dask.errors import StoreExistsError

    m = xsi_dask.open_montage(sim)
    out = tmp_path / "r.zarr"
    with dask.config.set(scheduler="sync"):
        xsi_dask.nmf(m, 2, max_iter=2, out=out)
        t0 = time.perf_counter()
        with pytest.raises(StoreExistsError, match="nmf"):
            xsi_dask.nmf(m, 2, max_iter=10_000, tol=0, out=out)
        assert time.perf_counter() - t0 < 5
        with dask.config.set({"xsi-dask.in-memory-limit": 1000}):
            with pytest.raises(DecompositionError, match="in-memory-limit"):
                xsi_dask.nmf(m, 2, max_iter=2)
    assert not list(sim.path.parent.glob(".xsi-dask-nmf-*"))


# ---- NMF's pure steps against dense NumPy ----

def _dense_problem(seed=0, n=40, m=30, k=3):
    rng = np.random.default_rng(seed)
    X = sp.random(n, m, density=0.3, random_state=seed, data_rvs=lambda s: rng.integers(1, 9, s)).toarray()
    W = np.abs(rng.standard_normal((n, k))) + 0.1
    H = np.abs(rng.standard_normal((k, m))) + 0.1
    return X, W, H


def test_update_h_kl_equals_dense(sim):
    from xsi_dask.decomposition._nmf import update_h_kl

    X, W, H = _dense_problem()
    eps = np.finfo(np.float32).eps
    nz = X > 0
    R = np.where(nz, X / np.maximum(W @ H, eps), 0.0)
    ref = H * (W.T @ R) / W.sum(0)[:, None]
    got = update_h_kl(H, (W.T @ R).T, W.sum(0))
    np.testing.assert_allclose(got, ref, rtol=1e-14)
    lam = 2.0
    s = H.sum(1)
    ref = H * (W.T @ R) / (W.sum(0) + 0.5 * lam * np.sqrt(W).sum(0) / np.sqrt(s))[:, None]
    np.testing.assert_allclose(update_h_kl(H, (W.T @ R).T, W.sum(0), np.sqrt(W).sum(0), lam), ref, rtol=1e-14)


def test_update_h_fro_equals_dense():
    from xsi_dask.decomposition._nmf import update_h_fro

    X, W, H = _dense_problem(1)
    ref = H * (W.T @ X) / (W.T @ W @ H)
    np.testing.assert_allclose(update_h_fro(H, (W.T @ X).T, W.T @ W), ref, rtol=1e-13)


def test_objective_equals_dense():
    from xsi_dask.decomposition._nmf import objective

    X, W, H = _dense_problem(2)
    WH = W @ H
    nz = X > 0
    eps = np.finfo(np.float32).eps
    data = float((X[nz] * np.log(X[nz] / np.maximum(WH[nz], eps))).sum())
    kl = data + WH.sum() - X.sum()
    common = dict(total=float(X.sum()), sum_sq=float((X**2).sum()))
    assert objective("kl", data, W.sum(0), W.T @ W, np.sqrt(W).sum(0), H, **common) == pytest.approx(kl, rel=1e-13)
    lam = 1.5
    pen = lam * float(np.sqrt(W * H.sum(1)[None, :]).sum())
    assert objective("kl", data, W.sum(0), W.T @ W, np.sqrt(W).sum(0), H, lam=lam, **common) == pytest.approx(kl + pen, rel=1e-13)
    fro = 0.5 * float(((X - WH) ** 2).sum())
    cross = float((X * WH).sum())
    assert objective("frobenius", cross, W.sum(0), W.T @ W, np.sqrt(W).sum(0), H, **common) == pytest.approx(fro, rel=1e-10)


def test_w_step_of_a_unit_equals_dense(sim):
    """The W update of one unit (the backend's KL step on a row block) against dense NumPy."""
    from xsi_dask.engine import Block

    plan = make_plan(xsi_dask.open_montage(sim))
    b = Block(plan.source, plan.units[1]._replace(start=100, stop=400))
    X = sim.tile_csr(1).to_scipy(np.float64)[100:400].toarray()
    rng = np.random.default_rng(5)
    W = np.abs(rng.standard_normal((300, 3))) + 0.1
    H = np.abs(rng.standard_normal((3, plan.n_channels))) + 0.1
    eps = np.finfo(np.float32).eps
    R = np.where(X > 0, X / np.maximum(W @ H, eps), 0.0)
    W_ref = W * (R @ H.T) / H.sum(1)[None, :]
    W_new, num_ht, w_sum, _, _ = b.kernels.kl_mu_step(*b.csr, W.copy(), np.ascontiguousarray(H.T), H.sum(1))
    np.testing.assert_allclose(W_new, W_ref, rtol=1e-12)
    R = np.where(X > 0, X / np.maximum(W_ref @ H, eps), 0.0)
    np.testing.assert_allclose(num_ht, (W_ref.T @ R).T, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(w_sum, W_ref.sum(0), rtol=1e-13)


# ---- a task on a worker offering a resource ----

def _where_am_i():
    from distributed import get_worker

    return get_worker().address


def test_resource_task_without_such_a_worker_fails_fast():
    with pytest.raises(ResourceUnavailableError, match="no dask.distributed cluster"):
        run_on_resource(_where_am_i, resources={"GPU": 1})
    with dask_client(workers=1, quiet=True):
        t0 = time.perf_counter()
        with pytest.raises(ResourceUnavailableError, match="GPU"):
            run_on_resource(_where_am_i, resources={"GPU": 1})
        assert time.perf_counter() - t0 < 10


def test_resource_task_runs_on_the_worker_that_offers_it():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                      processes=True, silence_logs=40) as plain, \
            Client(plain) as client:
        # a second worker that offers a GPU, joined to the same scheduler
        from distributed import Nanny

        async def start():
            return await Nanny(client.scheduler.address, nthreads=1, resources={"GPU": 1}, silence_logs=40)

        nanny = client.sync(start)
        try:
            client.wait_for_workers(2)
            gpu_worker = [a for a, w in client.scheduler_info()["workers"].items() if w.get("resources", {}).get("GPU")]
            assert len(gpu_worker) == 1
            assert run_on_resource(_where_am_i, resources={"GPU": 1}) == gpu_worker[0]
        finally:
            client.sync(nanny.close)


# ---- backends: the numba kernels against the plain SciPy reference ----

def _both_backends(m, fn):
    out = {}
    for name in ("numba", "scipy"):
        with dask.config.set({"xsi-dask.backend": name, "scheduler": "sync"}):
            out[name] = fn(m)
    return out["numba"], out["scipy"]


def _compare_backends(m):
    a, b = _both_backends(m, lambda v: xsi_dask.decompose(v, 5))
    assert a.attrs["backend"] == "numba" and b.attrs["backend"] == "scipy"
    np.testing.assert_allclose(a.singular_values.values, b.singular_values.values, rtol=1e-10)
    g_a, g_b = _both_backends(m, lambda v: xsi_dask.decompose(v, 5, solver="gram"))
    np.testing.assert_allclose(g_a.singular_values.values, g_b.singular_values.values, rtol=1e-10)
    # the NMF kernels from one seeded start (NNDSVDa's thresholds at 1e-6 could turn the SVD's 1e-12 differences
    # into a different start)
    n_a, n_b = _both_backends(m, lambda v: xsi_dask.nmf(v, 3, max_iter=20, tol=0, loss_every=1, init="random"))
    np.testing.assert_allclose(n_a.loss.values, n_b.loss.values, rtol=1e-10)
    # the factors norm-wise: after 20 multiplicative updates single entries near the WH clipping floor
    # (1e-6 of a spectrum's peak) differ by a few 1e-14 absolute between summation orders
    for var in ("spectra", "abundances"):
        x, y = n_a[var].values, n_b[var].values
        assert np.linalg.norm(x - y) <= 1e-10 * np.linalg.norm(y), var


def test_backends_agree_on_a_simulated_montage(sim):
    _compare_backends(xsi_dask.open_montage(sim))


@pytest.mark.parametrize("name,split", [("P45_the_default_job.bcf", "3x4"), ("test_TEM.bcf", "2x2"),
                                        ("bcf_v2_50x50px.bcf", None)])
def test_backends_agree_on_real_maps(needs_data, name, split, tmp_path):
    """The numba and SciPy backends: the same SVD (rel 1e-10) and 20 NMF iterates (rel 1e-10) on three real maps."""
    _compare_backends(xsi_dask.open_montage(xsi_dask.ingest(EDS / name, tmp_path / "s.zarr", split=split, progress=False)))


def test_unknown_backend_is_refused(sim):
    from xsi_dask.errors import BackendError

    with dask.config.set({"xsi-dask.backend": "cuda-magic"}):
        with pytest.raises(BackendError, match="cuda-magic"):
            xsi_dask.decompose(xsi_dask.open_montage(sim), 2)


# ---- hygiene ----

def test_public_functions_are_the_functions():
    from xsi_dask.decomposition import decompose, nmf

    assert callable(nmf) and nmf is xsi_dask.nmf and decompose is xsi_dask.decompose


def test_one_progress_display_per_run(sim, capsys):
    m = xsi_dask.open_montage(sim)
    with dask.config.set(scheduler="sync"):
        xsi_dask.decompose(m, 3, progress=True)
        xsi_dask.nmf(m, 2, max_iter=4, tol=0, progress=True)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err, "no progress shown"
    assert all(line.startswith(("Poisson SVD (randomized, k=3)", "NMF (KL, k=2)")) for line in err), err
    assert err[-1].startswith("NMF (KL, k=2): ") and "loss" in err[-1]


def test_run_on_jeol_computes_the_svd_once(needs_data, tmp_path):
    """`xsi-dask run` on the JEOL map split 4x4: NMF starts from the run's SVD (11 passes fewer than its own
    Poisson NNDSVDa) and equals NMF started from a separately computed SVD with the same seed."""
    from xsi_dask.io.results import open_results
    from xsi_dask.pipeline import ClusterParams, LayoutParams, NMFParams, SVDParams, ViewParams, run

    # binned 4 x 4 (tiles of 32 x 32): the passes and the equality do not depend on it, the test's time does
    res = run([EDS / "jeol_View000_0000006.pts"], tmp_path / "run", layout=LayoutParams(split="4x4"), view=ViewParams(bin=4),
              svd=SVDParams(components=10, seed=0), nmf=NMFParams(components=4, max_iter=20, tol=0),
              cluster=ClusterParams(workers=2), progress=False)
    from xsi_dask.montage.prepare import analysis_view

    got = open_results(res.results, "nmf")
    m = analysis_view(xsi_dask.open_montage(res.store), bin=4)  # what run analysed
    with dask.config.set(scheduler="sync"):
        svd = xsi_dask.decompose(m, 10, seed=0)
        ref = xsi_dask.nmf(m, 4, max_iter=20, tol=0, init=svd)
        own = xsi_dask.nmf(m, 4, max_iter=20, tol=0)  # NNDSVDa from its own Poisson SVD
    assert res.passes["svd"] == 11 and got.attrs["passes"] == 1 + 20 + 2
    assert own.attrs["passes"] - got.attrs["passes"] == 11
    np.testing.assert_allclose(got.spectra.values, ref.spectra.values, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(got.abundances.values, ref.abundances.values, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.loss.values, ref.loss.values, rtol=1e-13)
    assert "passes: NMF" in res.report.read_text()


_KILLED_NMF = """
import sys, xsi_dask, dask
dask.config.set(scheduler="sync")
m = xsi_dask.open_montage(sys.argv[1])
xsi_dask.nmf(m, 3, max_iter=100000, tol=0)
"""


def _nmf_killed_mid_run(store: MontageStore) -> list:
    """Start an NMF in a child process, SIGKILL it once its scratch folder holds W, return the folders left."""
    import signal
    import subprocess
    import sys

    parent = store.path.parent
    before = set(parent.glob(".xsi-dask-nmf-*"))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_NMF, str(store.path)])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            new = [p for p in set(parent.glob(".xsi-dask-nmf-*")) - before if list(p.glob("W*.1.npy"))]
            if new:
                break
            assert proc.poll() is None, "the NMF child ended before it could be killed"
            time.sleep(0.2)
        else:
            raise AssertionError("no NMF scratch folder appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert all(p.is_dir() for p in new)
    return new


def test_scratch_of_a_killed_nmf_is_swept_by_the_next_run_and_by_clean(tmp_path, capsys):
    from xsi_dask.cli.main import main

    st = simulate(tmp_path / "k.zarr", tiles="1x2", tile_shape="48x48", channels=512, counts_per_pixel=30, seed=1,
                  progress=False)
    left = _nmf_killed_mid_run(st)
    # the next NMF on the same store removes it, and leaves none of its own
    with dask.config.set(scheduler="sync"):
        xsi_dask.nmf(xsi_dask.open_montage(st), 2, max_iter=2)
    assert not any(p.exists() for p in left)
    assert not list(st.path.parent.glob(".xsi-dask-nmf-*"))
    # xsi-dask clean STORE does the same
    left = _nmf_killed_mid_run(st)
    assert main(["clean", str(st.path)]) == 0
    assert not any(p.exists() for p in left)
    assert left[0].name in capsys.readouterr().out


def test_counts_are_integers_never_truncated(sim):
    m = xsi_dask.open_montage(sim)
    for bad in (2.7, True, -1, "3"):
        with pytest.raises(DecompositionError, match="n_components must be an integer"):
            xsi_dask.decompose(m, bad)
        with pytest.raises(DecompositionError, match="n_components must be an integer"):
            xsi_dask.nmf(m, bad)
    with pytest.raises(DecompositionError, match="power_iters"):
        xsi_dask.decompose(m, 3, power_iters=-1)
    with pytest.raises(DecompositionError, match="max_iter"):
        xsi_dask.nmf(m, 2, max_iter=0)
    with pytest.raises(DecompositionError, match="tol"):
        xsi_dask.nmf(m, 2, tol=float("nan"))
    with pytest.raises(DecompositionError, match="loss_every"):
        xsi_dask.nmf(m, 2, loss_every=0)


def test_components_above_the_numerical_rank(tmp_path):
    """A montage of rank 2 (two spectra mixed): the randomized solver returns 2 components with a warning."""
    from xsi_dask.errors import XSIWarning

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 64), rng.integers(0, 5, 64)
    dense = np.array([[a, b, a + b, 2 * a]] * 4, dtype=np.uint16).reshape(4, 4, 64)  # rank 2, 16 pixels
    root = zarr.open_group(str(tmp_path / "r2.zarr"), mode="w", zarr_format=3)
    csr = sp.csr_array(dense.reshape(16, 64))
    summary = write_tile(root.create_group("tiles"), "0", csr.indptr, csr.indices, csr.data, (4, 4), 64,
                         attrs={"row": 0, "col": 0, "source": "synthetic", "stage_x": None, "stage_y": None,
                                "window": [0, 4, 0, 4]})
    write_montage_attrs(root, tiles=[{"row": 0, "col": 0, "source": "synthetic", "stage_x": None, "stage_y": None,
                                      "window": [0, 4, 0, 4], **summary}],
                        grid=[1, 1], split=None, tile_shape=[4, 4], energy={"size": 64, "offset": 0.0, "scale": 0.01},
                        pixels={"scale_y": 1.0, "scale_x": 1.0, "offset_y": 0.0, "offset_x": 0.0, "units": "nm"},
                        stage_units="nm", image_names=[], sources=[{"path": "synthetic"}])
    m = xsi_dask.open_montage(tmp_path / "r2.zarr")
    with dask.config.set(scheduler="sync"):
        with pytest.warns(XSIWarning, match="numerical rank 2"):
            ds = xsi_dask.decompose(m, 5)
        assert ds.sizes["component"] == 2 and ds.scores.shape == (1, 4, 4, 2)
        gram = xsi_dask.decompose(m, 5, solver="gram")
    np.testing.assert_allclose(gram.singular_values.values[:2], ds.singular_values.values, rtol=1e-10)
    assert np.all(gram.singular_values.values[2:] < 1e-6)


def test_options_that_would_be_ignored_are_refused(sim):
    """power_iters/oversampling with the gram solver, power_iters with an NMF start that computes no SVD: refused."""
    m = xsi_dask.open_montage(sim)
    with dask.config.set(scheduler="sync"):
        for kw in ({"power_iters": 3}, {"oversampling": 5}):
            with pytest.raises(DecompositionError, match="randomized solver"):
                xsi_dask.decompose(m, 3, solver="gram", **kw)
        svd = xsi_dask.decompose(m, 3)
        for init in ("random", svd):
            with pytest.raises(DecompositionError, match="power_iters"):
                xsi_dask.nmf(m, 2, max_iter=2, init=init, power_iters=4)
        assert xsi_dask.nmf(m, 2, max_iter=2, power_iters=4).attrs["init"] == "poisson-nndsvda"
