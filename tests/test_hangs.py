"""No hangs: workers killed mid-pass, a nanny memory restart, a stalled cluster, bad cluster arguments, too little memory.

Every test here runs on a 2-worker LocalCluster (or none) with small simulated
stores and ends well within 60 s: the same results as an undisturbed run, or
the package's error.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import dask
import numpy as np
import pytest

import xsi_dask
from xsi_dask.cli.main import main
from xsi_dask.cluster.local import check_memory_limit, check_scheduler_address, dask_client
from xsi_dask.engine import Plan, make_plan
from xsi_dask.errors import (
    ClusterStalledError,
    ClusterUnavailableError,
    InsufficientMemoryError,
    ParameterError,
    WorkerLostError,
)
from xsi_dask.pipeline import ClusterParams
from xsi_dask.testing.simulate import simulate

# a worker killed mid-pass comes back within seconds; a stall is declared after this (the default is 300 s).
# LocalCluster closes a nanny for good when, lost-worker-timeout (15 s) after its worker was removed, no worker of
# that name is registered: with kills in consecutive tests that moment can fall into the next restart
STALL = {"xsi-dask.stall-timeout": "20s", "xsi-dask.connect-timeout": "2s", "distributed.deploy.lost-worker-timeout": "600s"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("hangs") / "s.zarr"
    return simulate(path, tiles="2x2", tile_shape="64x64", channels=512, counts_per_pixel=20, seed=1, progress=False)


@pytest.fixture(scope="module")
def cluster():
    with dask.config.set(STALL), dask_client(workers=2, quiet=True) as client:
        yield client


def _svd(m):
    ds = xsi_dask.decompose(m, 4, power_iters=4)
    return {"s": ds.singular_values.values, "loadings": ds.loadings.values, "scores": ds.scores.values}


def _nmf(m):
    ds = xsi_dask.nmf(m, 3, max_iter=12, tol=0, init="random")
    return {"spectra": ds.spectra.values, "abundances": ds.abundances.values, "loss": ds.loss.values}


def _assert_same(got: dict, want: dict):
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12 * np.abs(want[name]).max(), err_msg=name)


def _kill_at_pass(monkeypatch, client, n: int, which: str, delay: float = 0.02):
    """SIGKILL worker process(es) ``delay`` s after the ``n``-th reduction pass was submitted; the nannies restart them."""
    original = Plan.reduce
    calls = {"n": 0, "killed": []}

    def reduce(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            pids = client.run(os.getpid)
            targets = sorted(pids) if which == "both" else sorted(pids)[:1]

            def kill():
                time.sleep(delay)
                for addr in targets:
                    os.kill(pids[addr], signal.SIGKILL)
                    calls["killed"].append(addr)

            threading.Thread(target=kill, daemon=True).start()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Plan, "reduce", reduce)
    return calls


@pytest.mark.parametrize("which", ["one", "both"])
@pytest.mark.parametrize("algorithm", ["svd", "nmf"])
def test_workers_killed_mid_pass_give_the_undisturbed_result(store, cluster, monkeypatch, which, algorithm):
    """One or both workers SIGKILLed mid-SVD or mid-NMF: the run completes, within bounded time, with the same numbers.

    With both gone the pass's pinned tasks went to ``no-worker``; distributed
    never hands those to the replacement workers by itself (the hang of issue 9),
    the pass's watchdog does.
    """
    m = xsi_dask.open_montage(store)
    run = _svd if algorithm == "svd" else _nmf
    want = run(m)
    before = set(cluster.nthreads())
    calls = _kill_at_pass(monkeypatch, cluster, 3 if algorithm == "svd" else 6, which)
    t0 = time.perf_counter()
    got = run(m)
    seconds = time.perf_counter() - t0
    assert len(calls["killed"]) == (2 if which == "both" else 1)
    assert seconds < 45, seconds
    _assert_same(got, want)
    deadline = time.monotonic() + 30  # the nannies' replacements are there (the next test needs two workers)
    while len(cluster.nthreads()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    after = set(cluster.nthreads())
    assert len(after) == 2 and not set(calls["killed"]) & after and before - after == set(calls["killed"])


@pytest.mark.parametrize("which", ["one", "both"])
def test_workers_killed_while_scores_are_written_give_the_undisturbed_store(store, cluster, monkeypatch, tmp_path, which):
    """The results writing (the scores' map pass, tile by tile into results.zarr) survives its workers dying too."""
    import xarray as xr

    import xsi_dask.io.results as results

    m = xsi_dask.open_montage(store)
    ds = xsi_dask.decompose(m, 4, power_iters=2)
    want = ds.scores.values
    pids = cluster.run(os.getpid)
    targets = sorted(pids) if which == "both" else sorted(pids)[:1]
    original = results._write_group

    def write_group(*args, **kwargs):
        def kill():
            time.sleep(0.01)
            for addr in targets:
                os.kill(pids[addr], signal.SIGKILL)

        threading.Thread(target=kill, daemon=True).start()
        return original(*args, **kwargs)

    monkeypatch.setattr(results, "_write_group", write_group)
    t0 = time.perf_counter()
    results.write_results(tmp_path / "r.zarr", {"svd": ds})
    assert time.perf_counter() - t0 < 45
    got = xr.open_zarr(tmp_path / "r.zarr", group="svd").scores.values
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    deadline = time.monotonic() + 30
    while (len(cluster.nthreads()) < 2 or set(targets) & set(cluster.nthreads())) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(cluster.nthreads()) == 2 and not set(targets) & set(cluster.nthreads())


def test_replacement_worker_takes_the_dead_workers_share(store, cluster, monkeypatch):
    """After a worker is replaced, each pass pins the dead worker's units to its replacement, the survivor keeps its own."""
    m = xsi_dask.open_montage(store)
    plan = make_plan(m)
    first = plan.pass_workers()
    assert sorted(set(first)) == sorted(cluster.nthreads())
    pids = cluster.run(os.getpid)
    os.kill(pids[first[0]], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (first[0] in cluster.nthreads() or len(cluster.nthreads()) < 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    second = plan.pass_workers()
    assert second[1] == first[1]  # the survivor keeps its slot (and its cached tiles)
    assert second[0] not in first and second[0] in cluster.nthreads()  # the replacement takes the dead one's slot


def test_a_stalled_cluster_ends_the_pass_with_the_package_error(store):
    """No worker left and none coming back (scaled to 0): the pass ends after xsi-dask.stall-timeout, not never."""
    m = xsi_dask.open_montage(store)
    with dask.config.set({"xsi-dask.stall-timeout": "3s"}), dask_client(workers=1, quiet=True) as client:
        plan = make_plan(m)
        client.cluster.scale(0)
        deadline = time.monotonic() + 30
        while client.nthreads() and time.monotonic() < deadline:
            time.sleep(0.1)
        t0 = time.perf_counter()
        with pytest.raises(ClusterStalledError, match="no task finished for 3 s and the cluster has no workers"):
            plan.reduce(lambda b: 1.0, label="count")
        assert time.perf_counter() - t0 < 10


def _ballast(fraction: float, dask_worker=None) -> None:
    """Hold memory on the worker up to ``fraction`` of its limit (None: let it go)."""
    import psutil

    dask_worker.xsi_ballast = None
    if fraction:
        rss = psutil.Process().memory_info().rss
        dask_worker.xsi_ballast = np.ones(max(0, int(fraction * dask_worker.memory_manager.memory_limit) - rss) // 8)


def test_paused_workers_end_the_pass_with_the_package_error_and_it_runs_once_they_resume(store):
    """Every worker paused at 80 % of its memory limit: ClusterStalledError naming it, in bounded time; resumed: it runs."""
    from xsi_dask._dask import cluster_state

    m = xsi_dask.open_montage(store)
    with dask.config.set({"xsi-dask.stall-timeout": "3s"}), dask_client(workers=1, memory_limit="800MiB", quiet=True) as client:
        plan = make_plan(m)
        assert plan.reduce(lambda b: 1.0, label="count") == 4.0
        client.run(_ballast, 0.87)  # between distributed's pause (80 %) and terminate (95 %) thresholds
        deadline = time.monotonic() + 10
        while cluster_state(client)["paused"] != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        t0 = time.perf_counter()
        with pytest.raises(ClusterStalledError, match="all 1 workers are paused at their memory limit"):
            plan.reduce(lambda b: 2.0, label="count")
        assert time.perf_counter() - t0 < 10
        client.run(_ballast, None)
        assert plan.reduce(lambda b: 3.0, label="count") == 12.0


def _hog(pid: int, nbytes: int) -> int:
    """On the worker process ``pid`` only: hold ``nbytes`` until the nanny kills the process for it."""
    if os.getpid() == pid:
        block = np.ones(nbytes // 8)
        time.sleep(10)
        return int(block[0])
    return 0


def test_nanny_memory_restart_mid_nmf_gives_the_undisturbed_result(store, monkeypatch):
    """A worker that exceeds its memory limit mid-NMF is killed and restarted by its nanny; NMF completes the same.

    Deterministic: a task on one worker allocates beyond the worker's limit
    (distributed's nanny terminates the process at 95 % of it, checked every
    100 ms), so exactly that worker is restarted while NMF's tasks run.
    """
    m = xsi_dask.open_montage(store)
    limit = 600 * 2**20
    with dask.config.set(STALL), dask_client(workers=2, memory_limit=limit, quiet=True) as client:
        want = _nmf(m)
        pids = client.run(os.getpid)
        victim = sorted(pids)[0]
        original = Plan.reduce
        calls = {"n": 0}

        def reduce(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 5:
                calls["hog"] = client.submit(_hog, pids[victim], limit, workers=[victim], pure=False)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Plan, "reduce", reduce)
        t0 = time.perf_counter()
        got = _nmf(m)
        assert time.perf_counter() - t0 < 45
        deadline = time.monotonic() + 30
        while victim in client.nthreads() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert victim not in client.nthreads()  # restarted by its nanny (a new address)
        calls["hog"].cancel()
    _assert_same(got, want)


def test_memory_limit_below_one_task_is_refused_at_start_and_just_above_completes(store):
    m = xsi_dask.open_montage(store)
    with dask.config.set(STALL), dask_client(workers=2, memory_limit="200MiB", quiet=True):
        t0 = time.perf_counter()
        with pytest.raises(InsufficientMemoryError, match=r"memory limit of 200 MiB, below the \d+ MiB") as err:
            xsi_dask.decompose(m, 4)
        with pytest.raises(InsufficientMemoryError, match="--memory-limit"):
            xsi_dask.nmf(m, 3, max_iter=2)
        assert time.perf_counter() - t0 < 5  # refused before any pass
        plan = make_plan(m)
        need = plan.worker_memory(4)["limit"]
        assert plan.passes == 0
    assert f"at least {-(-need // 2**20)} MiB" in str(err.value)
    with dask.config.set(STALL), dask_client(workers=2, memory_limit=int(need * 1.02), quiet=True):
        svd = xsi_dask.decompose(m, 4, power_iters=2)
        nmf = xsi_dask.nmf(m, 3, max_iter=5, init=svd)
    assert np.all(np.isfinite(svd.singular_values.values)) and np.isfinite(nmf.loss.values[-1])


def _crash(b):
    os._exit(1)


def test_a_task_that_keeps_killing_its_worker_ends_with_the_package_error(store):
    """distributed gives up on a task whose workers die (allowed-failures): WorkerLostError, not KilledWorker."""
    m = xsi_dask.open_montage(store)
    with dask.config.set({**STALL, "distributed.scheduler.allowed-failures": 0}), dask_client(workers=1, quiet=True):
        plan = make_plan(m)
        with pytest.raises(WorkerLostError, match=r"died 1 time\(s\)"):
            plan.reduce(_crash, label="crash", pure=False)


def test_cli_refuses_too_little_memory_at_start(store, tmp_path, capsys):
    t0 = time.perf_counter()
    code = main(["decompose", str(store.path), "--out", str(tmp_path / "r.zarr"), "--workers", "1", "--memory-limit",
                 "200MiB", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.perf_counter() - t0 < 30
    assert len(err) == 1 and err[0].startswith("xsi-dask decompose: error: the worker tcp://127.0.0.1:"), err
    assert "memory limit of 200 MiB, below the" in err[0] and "--memory-limit" in err[0]
    assert not (tmp_path / "r.zarr").exists()


def test_the_memory_estimate_covers_the_parts_of_a_task(store):
    m = xsi_dask.open_montage(store)
    plan = make_plan(m)
    st = plan.open_store()
    part = plan.task_memory(4)
    assert part["tile"] >= max(st.tile_nbytes(t) for t in plan.tiles)
    assert part["weights"] >= 8 * plan.pixels_per_tile
    assert part["work"] >= 2 * 8 * plan.pixels_per_tile * 4  # W loaded and updated
    assert plan.task_memory(4, solver="gram")["total"] >= 8 * plan.n_channels**2  # the dense channels^2 block
    assert plan.task_memory(40)["total"] > part["total"]
    w1, w2 = plan.worker_memory(4), plan.worker_memory(4, threads=2)
    assert w2["need"] - w1["need"] == part["total"]
    assert w1["limit"] == pytest.approx(w1["need"] / 0.8, rel=1e-6)  # distributed pauses a worker at 80 %


# ---- cluster arguments: refused before anything starts ----

@pytest.mark.parametrize("value", ["auto", "4GiB", "500 MB", 0.5, "0.5", 2**30, "1073741824"])
def test_memory_limit_forms_accepted(value):
    assert check_memory_limit(value) is not None


@pytest.mark.parametrize("value", ["lots", "-1", -1, 0, "0", "", "4 GiBs", True, float("nan")])
def test_memory_limit_nonsense_refused(value):
    with pytest.raises(ParameterError, match="memory limit"):
        check_memory_limit(value)
    with pytest.raises(ParameterError, match="ClusterParams.memory_limit"):
        ClusterParams(memory_limit=value)


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "localhost:8786", "tls://sched.example:8786"])
def test_scheduler_addresses_accepted(address):
    assert check_scheduler_address(address) == address
    assert ClusterParams(scheduler=address).scheduler == address


@pytest.mark.parametrize("address", ["nonsense", "tcp://host", "tcp://host:99999", "http://host:8786", "tcp://:8786",
                                     "tcp://a b:1", ""])
def test_malformed_scheduler_addresses_refused(address):
    with pytest.raises(ParameterError, match="scheduler address"):
        check_scheduler_address(address)
    with pytest.raises(ParameterError, match="ClusterParams.scheduler"):
        ClusterParams(scheduler=address)


@pytest.mark.parametrize("kw", [{"workers": -1}, {"workers": 0}, {"threads_per_worker": -1}, {"memory_limit": "lots"}])
def test_dask_client_refuses_bad_sizes_before_starting(kw):
    t0 = time.perf_counter()
    with pytest.raises(ParameterError), dask_client(quiet=True, **kw):
        pass
    assert time.perf_counter() - t0 < 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_gives_up_after_the_connect_timeout():
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with dask.config.set({"xsi-dask.connect-timeout": "1s"}):
        with pytest.raises(ClusterUnavailableError, match=f"cannot reach the Dask scheduler at {address} within 1 s"):
            with dask_client(address, quiet=True):
                pass
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("flags, says", [
    (["--workers", "-1"], "workers must be >= 1; got -1"),
    (["--workers", "0"], "workers must be >= 1; got 0"),
    (["--threads-per-worker", "-1"], "threads_per_worker must be >= 1; got -1"),
    (["--memory-limit", "lots"], "memory_limit must be a size such as 4GiB"),
    (["--scheduler", "nonsense"], "scheduler address must look like tcp://HOST:PORT"),
    (["--scheduler", "UNREACHABLE"], "cannot reach the Dask scheduler at tcp://127.0.0.1:"),
])
@pytest.mark.parametrize("command", ["decompose", "nmf"])
def test_cli_cluster_argument_errors_exit_2_with_one_line(store, tmp_path, capsys, flags, says, command):
    flags = [f"tcp://127.0.0.1:{_free_port()}" if f == "UNREACHABLE" else f for f in flags]
    t0 = time.perf_counter()
    with dask.config.set({"xsi-dask.connect-timeout": "1s"}):
        code = main([command, str(store.path), "--out", str(tmp_path / "r.zarr"), *flags, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert time.perf_counter() - t0 < 10
    assert len(err) == 1 and err[0].startswith(f"xsi-dask {command}: error: ") and says in err[0], err
    assert not (tmp_path / "r.zarr").exists()
