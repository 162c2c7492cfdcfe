"""Selecting the cupy backend where no GPU is: clear errors, never a hang; GPU placement with a stand-in GPU worker.

These run without a GPU (CI): the placement of a plan whose backend holds a
worker resource is checked with the scipy backend given the cupy backend's
resources, on a LocalCluster whose second worker offers ``GPU`` (its
``CUDA_VISIBLE_DEVICES`` set, no device behind it). ``tests/test_gpu.py``
repeats the placement with the real backend on a GPU machine.
"""

from __future__ import annotations

import os
import time

import dask
import numpy as np
import pytest

import xsi_dask
from xsi_dask.engine import plan as plan_module
from xsi_dask.engine.backends import backend_options, backend_resources
from xsi_dask.engine.resources import local_gpu_count
from xsi_dask.errors import BackendError, ParameterError, ResourceUnavailableError, XSIError
from xsi_dask.testing.simulate import simulate


@pytest.fixture(scope="module")
def montage(tmp_path_factory):
    root = tmp_path_factory.mktemp("placement")
    return xsi_dask.open_montage(simulate(root / "sim.zarr", tiles="2x2", tile_shape="32x32", channels=512,
                                          counts_per_pixel=40, seed=2, progress=False))


def test_the_cupy_backend_holds_a_share_of_a_gpu_and_records_its_dtype():
    assert backend_resources("numba") == {} and backend_resources("scipy") == {}
    assert backend_resources("cupy") == {"GPU": 0.5}
    with dask.config.set({"xsi-dask.gpu-tasks": 4, "xsi-dask.gpu-dtype": "float32"}):
        assert backend_resources("cupy") == {"GPU": 0.25}
        assert backend_options("cupy") == (("dtype", "float32"),)
    with dask.config.set({"xsi-dask.gpu-dtype": "float16"}), pytest.raises(BackendError, match="gpu-dtype must be"):
        backend_options("cupy")
    with dask.config.set({"xsi-dask.gpu-tasks": 0}), pytest.raises(BackendError, match="gpu-tasks"):
        backend_resources("cupy")


@pytest.mark.skipif(local_gpu_count() > 0, reason="this machine has a GPU: the refusal is for machines without one")
def test_cupy_without_a_gpu_or_cluster_is_refused_before_any_pass(montage):
    with pytest.raises(XSIError, match="cupy") as err:
        plan_module.make_plan(montage, backend="cupy")
    # without CuPy: how to install it; with CuPy and no device: that there is none
    assert isinstance(err.value, BackendError | ResourceUnavailableError)
    assert "gpu extra" in str(err.value) or "no CUDA device" in str(err.value)


def test_cupy_on_a_cluster_without_a_gpu_worker_is_refused_at_once_not_left_waiting(montage):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster):
        t = time.perf_counter()
        with dask.config.set({"xsi-dask.backend": "cupy"}), pytest.raises(ResourceUnavailableError, match="offering"):
            xsi_dask.decompose(montage, 4, seed=0)
        assert time.perf_counter() - t < 30


def test_a_plan_that_holds_a_gpu_runs_its_passes_on_the_gpu_worker_only(montage, monkeypatch):
    """Two workers, the second offering GPU (a stand-in: CUDA_VISIBLE_DEVICES set, no device): every unit task of
    the plan runs on it, the result is the CPU-only one exactly, and its process sees only its device."""
    from distributed import Client, LocalCluster, get_task_stream

    from xsi_dask.cluster.local import _add_gpu_workers

    with dask.config.set({"xsi-dask.backend": "scipy"}):
        ref = xsi_dask.decompose(montage, 4, seed=1)
    monkeypatch.setattr(plan_module, "backend_resources", lambda name: {"GPU": 0.5})
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster:
        _add_gpu_workers(cluster, ["7"])
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=120)
            offered = xsi_dask.engine.worker_resources()
            gpu = [a for a, r in offered.items() if r.get("GPU") == 1]
            assert len(gpu) == 1 and len(offered) == 2
            assert client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES")) == {
                a: ("7" if a in gpu else os.environ.get("CUDA_VISIBLE_DEVICES")) for a in offered}
            with dask.config.set({"xsi-dask.backend": "scipy"}):
                p = plan_module.make_plan(montage)
                assert p.workers == tuple(gpu) and p.resources == (("GPU", 0.5),)
                with get_task_stream(client) as ts:
                    got = xsi_dask.decompose(montage, 4, seed=1)
    ran = {t["worker"] for t in ts.data if "_unit_task" in str(t["key"])}
    assert ran == set(gpu)
    np.testing.assert_allclose(got["singular_values"].values, ref["singular_values"].values, rtol=1e-12)


def test_gpu_workers_where_no_gpu_is_visible_are_refused(monkeypatch):
    from xsi_dask.cluster.local import dask_client, visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    with pytest.raises(ResourceUnavailableError, match="no GPU"), dask_client(gpu_workers=True, quiet=True):
        pass
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert visible_gpus() == ["2", "3"]
    with pytest.raises(ParameterError, match="one worker per visible GPU"), dask_client(gpu_workers=True, workers=2,
                                                                                         quiet=True):
        pass


def test_the_cli_refuses_what_the_cupy_backend_cannot_honour(tmp_path, capsys):
    from xsi_dask.cli.main import main
    from xsi_dask.pipeline import ClusterParams

    with pytest.raises(ParameterError, match="one worker per visible GPU"):
        ClusterParams(backend="cupy", workers=2)
    with pytest.raises(ParameterError, match="gpu_jobs"):
        ClusterParams(cluster="slurm", backend="cupy")
    with pytest.raises(ParameterError, match="backend must be one of"):
        ClusterParams(backend="opencl")
    assert ClusterParams(cluster="slurm", backend="cupy", gpu_jobs=1).backend == "cupy"
    assert main(["decompose", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "r.zarr"), "--backend", "cupy", "--workers", "2", "--quiet"]) == 2
    assert "one worker per visible GPU" in capsys.readouterr().err
    # rotate, ica and segment run no tile kernels: a backend for them is refused, not ignored
    assert main(["rotate", str(tmp_path / "none.zarr"), "--backend", "numba", "--quiet"]) == 2
    assert "runs no tile kernels" in capsys.readouterr().err
