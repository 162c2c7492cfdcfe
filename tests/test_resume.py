"""NMF checkpoints and resume: a killed or SIGTERMed NMF continues to exactly the uninterrupted result;
a full or vanished scratch folder ends in the package's error naming it."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import dask
import numpy as np
import pytest

import xsi_dask
from xsi_dask.engine.plan import Plan
from xsi_dask.engine.scratch import CHECKPOINT_PREFIX, PREFIX, Checkpoint, Scratch, ScratchError, ScratchLostError
from xsi_dask.errors import DecompositionError
from xsi_dask.testing.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
K, ITERS = 3, 60


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    return simulate(base / "s.zarr", tiles="1x2", tile_shape="48x48", channels=512, counts_per_pixel=30, seed=1,
                    progress=False)


@pytest.fixture(autouse=True)
def sync():
    with dask.config.set(scheduler="sync"):
        yield


_REFERENCE: dict = {}


def reference(store, **kw):
    """The uninterrupted run (no checkpoints), computed once per parameter set."""
    key = (str(store.path), tuple(sorted(kw.items())))
    if key not in _REFERENCE:
        _REFERENCE[key] = _nmf(store, checkpoint_every=0, **kw)
    return _REFERENCE[key]


def _nmf(store, montage=None, **kw):
    kw = {"max_iter": ITERS, "tol": 0.0, **kw}
    return xsi_dask.nmf(montage if montage is not None else xsi_dask.open_montage(store), K, **kw)


def assert_same(a, b):
    np.testing.assert_array_equal(a["spectra"].values, b["spectra"].values)
    np.testing.assert_array_equal(a["abundances"].values, b["abundances"].values)
    np.testing.assert_array_equal(a["loss"].values, b["loss"].values)
    np.testing.assert_array_equal(a["iteration"].values, b["iteration"].values)
    assert a.attrs["n_iter"] == b.attrs["n_iter"] and a.attrs["divergence"] == b.attrs["divergence"]


def checkpoints(store) -> list[Path]:
    return sorted(store.path.parent.glob(CHECKPOINT_PREFIX + "*"))


def scratches(store) -> list[Path]:
    return sorted(store.path.parent.glob(PREFIX + "*"))


def manifest(store) -> dict:
    (folder,) = checkpoints(store)
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture
def fail_at(monkeypatch):
    """fail_at(label, action): run ``action`` (default: raise RuntimeError) when the pass ``label`` starts."""

    def install(label: str, action=None):
        orig = Plan.reduce

        def reduce(self, fn, *args, label: str, **kw):
            if label == target:
                (action or _boom)()
            return orig(self, fn, *args, label=label, **kw)

        target = label
        monkeypatch.setattr(Plan, "reduce", reduce)
        return lambda: monkeypatch.setattr(Plan, "reduce", orig)

    return install


class Injected(RuntimeError):
    pass


def _boom():
    raise Injected("injected fault")


# ---- resume equals the uninterrupted run ----

@pytest.mark.parametrize("kw", [
    pytest.param({"loss": "kl", "sparsity": 2.0, "refit_iter": 5, "loss_every": 3}, id="kl-sparsity"),
    pytest.param({"loss": "frobenius", "init": "random", "seed": 4}, id="frobenius-random"),
])
def test_resume_after_a_fault_equals_the_uninterrupted_run(store, fail_at, kw):
    ref = reference(store, **kw)
    undo = fail_at("NMF iteration 27")
    with pytest.raises(Injected):
        _nmf(store, checkpoint_every=5, **kw)
    undo()
    m = manifest(store)
    assert m["n_iter"] == 25 and m["kind"] == "nmf"
    assert not scratches(store)  # the scratch folder goes with the exception; the checkpoint stays
    res = _nmf(store, checkpoint_every=5, resume=True, **kw)
    assert res.attrs["resumed_from_iteration"] == 25
    assert_same(res, ref)
    assert not checkpoints(store) and not scratches(store)  # the completed run removed its checkpoint


def test_a_checkpoint_every_n_iterations_costs_nothing_in_the_result(store):
    assert_same(_nmf(store, checkpoint_every=7), reference(store))
    assert not checkpoints(store)


def test_resume_without_a_checkpoint_starts_from_the_init(store):
    assert not checkpoints(store)
    res = _nmf(store, resume=True)
    assert "resumed_from_iteration" not in res.attrs
    assert_same(res, reference(store))


def test_resume_from_the_start_checkpoint_skips_the_svd(store, fail_at):
    undo = fail_at("NMF iteration 1")
    with pytest.raises(Injected):
        _nmf(store, checkpoint_every=10)
    undo()
    assert manifest(store)["n_iter"] == 0
    res = _nmf(store, checkpoint_every=10, resume=True)
    assert res.attrs["resumed_from_iteration"] == 0
    assert res.attrs["passes"] == ITERS + 1  # the iterations and the final loss: no SVD, no NNDSVD, no initial loss
    assert_same(res, reference(store))


def test_resume_with_more_iterations_equals_the_longer_run(store, fail_at):
    undo = fail_at("NMF iteration 12")
    with pytest.raises(Injected):
        _nmf(store, checkpoint_every=10, max_iter=20)
    undo()
    res = _nmf(store, checkpoint_every=10, resume=True)  # max_iter 60
    assert_same(res, reference(store))


@pytest.mark.parametrize("change, named", [
    ({"sparsity": 1.0}, "sparsity"),
    ({"loss_every": 5}, "loss_every"),
    ({"seed": 9}, "seed 9"),
    ({"max_iter": 5}, "beyond max_iter=5"),
])
def test_a_checkpoint_of_other_parameters_is_refused_naming_them(store, fail_at, change, named):
    undo = fail_at("NMF iteration 12")
    with pytest.raises(Injected):
        _nmf(store, checkpoint_every=10)
    undo()
    with pytest.raises(DecompositionError, match=named) as e:
        _nmf(store, resume=True, **change)
    assert str(checkpoints(store)[0]) in str(e.value)
    assert manifest(store)["n_iter"] == 10  # refused before any pass: the checkpoint is untouched
    with pytest.raises(DecompositionError, match="n_components: 3 in the checkpoint, 2 now"):
        xsi_dask.nmf(xsi_dask.open_montage(store), 2, max_iter=ITERS, tol=0.0, resume=True)
    # a fresh run replaces it and removes it when it completes
    _nmf(store, max_iter=3)
    assert not checkpoints(store)


def test_resume_on_a_fixed_size_cluster_equals_its_uninterrupted_run(store, fail_at):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) \
            as cluster, Client(cluster), dask.config.set(scheduler=None):
        one = xsi_dask.open_montage(store).isel(tile=[1])  # one tile on two workers: two row-block units
        ref = _nmf(store, one, checkpoint_every=0)
        undo = fail_at("NMF iteration 34")
        with pytest.raises(Injected):
            _nmf(store, one, checkpoint_every=10)
        undo()
        assert len(manifest(store)["identity"]["units"]) == 2
        res = _nmf(store, one, checkpoint_every=10, resume=True)
        assert res.attrs["resumed_from_iteration"] == 30
        assert_same(res, ref)
        undo = fail_at("NMF iteration 14")
        with pytest.raises(Injected):
            _nmf(store, one, checkpoint_every=10)
        undo()
    # a checkpoint of two row-block units resumed without a cluster (one unit: another tree of sums)
    again = _nmf(store, xsi_dask.open_montage(store).isel(tile=[1]), resume=True)
    assert again.attrs["resumed_from_iteration"] == 10
    for name in ("spectra", "abundances", "loss"):
        np.testing.assert_allclose(again[name].values, ref[name].values, rtol=1e-9, atol=1e-12)
    assert not checkpoints(store)


def test_a_live_run_checkpointing_the_same_nmf_is_not_overwritten(store, fail_at):
    import psutil

    undo = fail_at("NMF iteration 12")
    with pytest.raises(Injected):
        _nmf(store, checkpoint_every=10)
    undo()
    (folder,) = checkpoints(store)
    m = manifest(store)
    parent = psutil.Process(os.getppid())
    m["owner"] = {**m["owner"], "pid": parent.pid, "create_time": parent.create_time()}
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DecompositionError, match=f"process {parent.pid}"):
        _nmf(store, checkpoint_every=10)
    shutil.rmtree(folder)


def test_a_damaged_checkpoint_is_refused_by_resume_and_replaced_by_a_fresh_run(store, fail_at):
    undo = fail_at("NMF iteration 12")
    with pytest.raises(Injected):
        _nmf(store, checkpoint_every=10)
    undo()
    (folder,) = checkpoints(store)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ScratchError, match="unreadable") as e:
        _nmf(store, resume=True)
    assert str(folder) in str(e.value)
    _nmf(store, max_iter=3)  # checkpointing, not resuming: replaces it, and removes it when done
    assert not checkpoints(store)


# ---- killed processes ----

_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    import dask, xsi_dask
    from xsi_dask.engine import scratch
    from xsi_dask.engine.plan import Plan

    store, marker, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "kill":  # hold still right after the checkpoint of iteration 40 is committed
        commit = scratch.Checkpoint.commit
        def hold(self, meta, arrays, files):
            commit(self, meta, arrays, files)
            if meta["n_iter"] == 40:
                open(marker, "w").write(str(self.path))
                time.sleep(120)
        scratch.Checkpoint.commit = hold
    else:  # SIGTERM arrives while iteration 33 runs
        reduce = Plan.reduce
        def slow(self, fn, *args, label, **kw):
            if label == "NMF iteration 33":
                open(marker, "w").write("33")
                time.sleep(5)
            return reduce(self, fn, *args, label=label, **kw)
        Plan.reduce = slow
    with dask.config.set(scheduler="sync"):
        xsi_dask.nmf(xsi_dask.open_montage(store), 3, max_iter=60, tol=0.0, checkpoint_every=10 if mode == "kill" else 1000)
    sys.exit(0)
""")


def _child(store, tmp_path, mode: str):
    marker = tmp_path / f"{mode}.marker"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(store.path), str(marker), mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the NMF process ended early: {proc.communicate()[1].decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the NMF process did not reach the iteration")
        time.sleep(0.05)
    return proc


def test_sigkill_at_iteration_40_of_60_then_resume_equals_the_uninterrupted_run(store, tmp_path):
    ref = reference(store)
    proc = _child(store, tmp_path, "kill")
    assert manifest(store)["n_iter"] == 40
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert scratches(store)  # SIGKILL: the scratch folder stays (swept by the next run)
    res = _nmf(store, checkpoint_every=10, resume=True)
    assert res.attrs["resumed_from_iteration"] == 40
    assert_same(res, ref)
    assert not checkpoints(store) and not scratches(store)


def test_sigterm_commits_the_iteration_it_arrives_in_and_ends_the_process(store, tmp_path):
    ref = reference(store)
    proc = _child(store, tmp_path, "term")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err.decode()[-2000:]  # the default disposition, after the checkpoint
    assert b"Traceback" not in err
    assert manifest(store)["n_iter"] == 33  # not the periodic checkpoint (every 1000): the one SIGTERM asked for
    assert not scratches(store)  # the run unwound before the process ended
    res = _nmf(store, resume=True)
    assert res.attrs["resumed_from_iteration"] == 33
    assert_same(res, ref)
    assert not checkpoints(store)


def test_sigterm_calls_the_previous_handler_after_the_checkpoint(store, fail_at):
    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        fail_at("NMF iteration 12", lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(Stop):
            _nmf(store, checkpoint_every=50)
        assert signal.getsignal(signal.SIGTERM) is handler  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert manifest(store)["n_iter"] == 12 and not scratches(store)
    assert_same(_nmf(store, resume=True), reference(store))


# ---- the checkpoint commit is atomic ----

def test_a_failed_commit_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from xsi_dask.engine import scratch as mod

    src = tmp_path / "W.npy"
    np.save(src, np.arange(6.0))
    ck = Checkpoint.of("nmf", tmp_path / "m.zarr", "0123456789abcdef", [0, 1], parent=tmp_path)
    ck.commit({"kind": "nmf", "n_iter": 10}, {"H": np.ones(3)}, {"W0": src})
    np.save(tmp_path / "new.npy", np.arange(6.0) + 1)
    os.replace(tmp_path / "new.npy", src)  # replaced, as Scratch.save does: the checkpoint keeps its own
    real = os.replace

    def full(a, b):
        if Path(b).name == "manifest.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(a, b)

    monkeypatch.setattr(mod.os, "replace", full)
    with pytest.raises(ScratchError, match="no space left") as e:
        ck.commit({"kind": "nmf", "n_iter": 20}, {"H": np.zeros(3)}, {"W0": src})
    assert str(ck.path) in str(e.value)
    m = ck.manifest()
    assert m["n_iter"] == 10
    np.testing.assert_array_equal(ck.load(m, "H"), np.ones(3))
    np.testing.assert_array_equal(ck.load(m, "W0"), np.arange(6.0))
    assert [p.name for p in ck.path.iterdir() if p.name.startswith("state-")] == [m["state"]]  # no partial state
    assert stat.S_IMODE(os.stat(ck.path).st_mode) == 0o700
    ck.remove()
    assert not ck.path.exists() and ck.manifest() is None


# ---- the scratch folder: removed mid-run, a full disk, the private fallback ----

def _remove_scratch(store):
    def action():
        for p in scratches(store):
            shutil.rmtree(p)
    return action


def test_scratch_removed_mid_run_is_the_package_error_naming_it(store, fail_at):
    folders = []
    fail_at("NMF iteration 5", lambda: (folders.extend(scratches(store)), _remove_scratch(store)()))
    with pytest.raises(ScratchLostError, match="was removed while the run was using it") as e:
        _nmf(store, checkpoint_every=0)
    assert str(folders[0]) in str(e.value) and isinstance(e.value, DecompositionError)


def test_scratch_removed_mid_run_on_the_cli_with_workers(store, tmp_path, fail_at, capsys):
    from xsi_dask.cli.main import main

    fail_at("NMF iteration 3", _remove_scratch(store))  # removed by the driver; the workers find it gone
    with dask.config.set(scheduler=None):
        rc = main(["nmf", str(store.path), "--out", str(tmp_path / "r.zarr"), "--workers", "1", "--max-iter", "6",
                   "--checkpoint-every", "0", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("xsi-dask nmf: error:")]
    assert len(lines) == 1 and PREFIX in lines[0] and "was removed while the run was using it" in lines[0]


@pytest.fixture
def full_disk(monkeypatch):
    """np.save raises ENOSPC for files in NMF scratch folders from the ``after``-th call on."""
    real = np.save
    calls = {"n": 0, "after": 0}

    def save(file, arr, *args, **kw):
        if PREFIX in str(file):
            calls["n"] += 1
            if calls["n"] > calls["after"]:
                raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real(file, arr, *args, **kw)

    monkeypatch.setattr(np, "save", save)
    return calls


def test_a_full_disk_in_the_scratch_folder_is_the_package_error_naming_it(store, full_disk, tmp_path, monkeypatch,
                                                                          capsys):
    from contextlib import nullcontext

    from xsi_dask.cli.main import main
    from xsi_dask.io.results import open_results
    from xsi_dask.pipeline import _run

    full_disk["after"] = 10  # the start's W, then a few iterations
    with pytest.raises(ScratchError, match="no space left on the device") as e:
        _nmf(store, checkpoint_every=0)
    assert PREFIX in str(e.value) and "xsi-dask.scratch" in str(e.value)
    assert not scratches(store)
    # the CLI: one line, exit 2 (in this process, so that np.save is the patched one)
    full_disk["n"] = 0
    monkeypatch.setattr(_run, "_client", lambda cluster: nullcontext())
    rc = main(["nmf", str(store.path), "--out", str(tmp_path / "r.zarr"), "--components", str(K), "--max-iter", "20",
               "--tol", "0", "--checkpoint-every", "10", "--keep-zero-peak", "--quiet"])  # explicit: the default waits a minute
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("xsi-dask nmf: error: no space left on the device of ") and PREFIX in err
    # the checkpoint of the start survived the full scratch disk: --resume continues from it
    assert manifest(store)["n_iter"] == 0
    full_disk["after"] = 10**9
    rc = main(["nmf", str(store.path), "--out", str(tmp_path / "r.zarr"), "--max-iter", str(ITERS), "--tol", "0",
               "--components", str(K), "--resume", "--keep-zero-peak", "--quiet"])  # the whole axis, as reference()
    assert rc == 0 and "resumed from iteration 0" in capsys.readouterr().out
    assert_same(open_results(tmp_path / "r.zarr", "nmf").load(), reference(store))
    assert not checkpoints(store)


def test_a_full_disk_in_the_checkpoint_keeps_the_previous_one(store, fail_at, monkeypatch):
    from xsi_dask.engine import scratch as mod

    real = mod.shutil.copyfile
    state = {"full": False}

    def link(src, dst):
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(mod.os, "link", link)  # no hard links here: copies, which can fill the disk
    monkeypatch.setattr(mod.shutil, "copyfile", link)
    fail_at("NMF iteration 11", lambda: state.update(full=True))
    with pytest.raises(ScratchError, match="no space left") as e:
        _nmf(store, checkpoint_every=10)
    assert CHECKPOINT_PREFIX in str(e.value)
    assert manifest(store)["n_iter"] == 10  # the failed commit of iteration 20 left the one of 10
    monkeypatch.undo()
    assert_same(_nmf(store, resume=True), reference(store))


def test_scratch_fallback_in_the_temporary_folder_is_private(store, tmp_path, monkeypatch):
    from xsi_dask.engine import scratch as mod

    systmp = tmp_path / "systmp"
    systmp.mkdir(mode=0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    real = os.access
    monkeypatch.setattr(mod.os, "access", lambda p, mode, **kw: False if Path(p) == store.path.parent else real(p, mode, **kw))
    old = os.umask(0)
    try:
        with Scratch.create(store.path, store.uuid) as s:
            assert s.path.parent == systmp
            assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o700
        ck = Checkpoint.of("nmf", store.path, store.uuid, [0, 1])
        ck.commit({"kind": "nmf", "n_iter": 0}, {"H": np.ones(2)}, {})
        assert ck.path.parent == systmp and stat.S_IMODE(os.stat(ck.path).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(ck.path / ck.manifest()["state"]).st_mode) == 0o700
        ck.remove()
    finally:
        os.umask(old)


# ---- the pipeline: run --resume ----

def test_run_resume_continues_the_interrupted_runs_nmf(store, tmp_path, fail_at, monkeypatch):
    from contextlib import nullcontext

    from xsi_dask import pipeline
    from xsi_dask.io.results import open_results
    from xsi_dask.pipeline import _run

    class NoCluster:  # the synchronous scheduler: fast
        def scheduler_info(self):
            return {"workers": {}}

    monkeypatch.setattr(_run, "_client", lambda cluster: nullcontext(NoCluster()))
    svd = pipeline.SVDParams(components=K)

    def run(out, **nmf):
        return pipeline.run(store.path, out, svd=svd, nmf=pipeline.NMFParams(components=K, max_iter=30, tol=0.0, **nmf),
                            progress=False)

    ref = open_results(run(tmp_path / "ref").results, "nmf").load()
    undo = fail_at("NMF iteration 17")
    with pytest.raises(Injected):
        run(tmp_path / "r", checkpoint_every=5)
    undo()
    # the interrupted run committed no results (svd and nmf are committed together); its checkpoint stays
    assert not (tmp_path / "r" / "results.zarr").exists() and manifest(store)["n_iter"] == 15
    res = open_results(run(tmp_path / "r", resume=True).results, "nmf").load()
    assert res.attrs["resumed_from_iteration"] == 15
    assert_same(res, ref)
    assert not checkpoints(store)


def test_the_default_checkpoints_wait_a_minimum_interval(store, monkeypatch):
    """Checkpoints by the configured default are no sooner than xsi-dask.nmf-checkpoint-min-interval apart (a run of
    fast iterations spends no time in fsyncs); with the interval at 0 they come every nmf-checkpoint-every."""
    commits = []
    original = Checkpoint.commit

    def counting(self, meta, *a, **kw):
        commits.append(meta["n_iter"])
        return original(self, meta, *a, **kw)

    monkeypatch.setattr(Checkpoint, "commit", counting)
    with dask.config.set({"xsi-dask.nmf-checkpoint-every": 10}):
        _nmf(store, max_iter=30)
        assert commits == []  # a few seconds' run: none (the default interval is 60 s)
        with dask.config.set({"xsi-dask.nmf-checkpoint-min-interval": 0}):
            _nmf(store, max_iter=30)
    assert commits == [0, 10, 20]
    assert not checkpoints(store)
