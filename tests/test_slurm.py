"""Dask workers as SLURM jobs (dask-jobqueue) against a live single-node SLURM (deploy/slurm/local-slurm.sh).

The live tests are marked ``slurm`` and skip, saying why, where no SLURM answers (``.ci/run`` starts one and
exports SLURM_CONF). The scheduler and workers bind to the loopback interface here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest

from xsi_dask.cli.main import main
from xsi_dask.cluster.slurm import SlurmSpec, job_script, slurm_cluster, slurm_cluster_kwargs
from xsi_dask.errors import ParameterError
from xsi_dask.io.results import open_results
from xsi_dask.pipeline import ClusterParams

from .conftest import EDS

pytest.importorskip("dask_jobqueue")
LOOPBACK = {"jobqueue.slurm.interface": "lo", "jobqueue.slurm.walltime": "00:30:00"}


@pytest.fixture(autouse=True)
def _job_logs_in_tmp(tmp_path):
    """The jobs' output files go to the test's folder, not ./slurm-logs of the checkout."""
    with dask.config.set({"jobqueue.slurm.log-directory": str(tmp_path / "slurm-logs")}):
        yield


def _slurm_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "no SLURM client (sinfo) on this machine: start one with deploy/slurm/local-slurm.sh start"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 10 s"
    if out.returncode != 0 or not any(s in out.stdout for s in ("idle", "mixed", "allocated")):
        return f"no SLURM node up (sinfo: {(out.stderr or out.stdout).strip()[:200]!r}; SLURM_CONF={os.environ.get('SLURM_CONF')})"
    return None


def _jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, timeout=10)
    return [line for line in out.stdout.splitlines() if "dask-worker" in line]


live = pytest.mark.skipif(_slurm_problem() is not None, reason=str(_slurm_problem()))


# ---- without a SLURM: the job script and the checks ----

def test_job_script_carries_the_flags_and_tls(tmp_path):
    script = job_script(SlurmSpec(jobs=2, cores=4, memory="16GiB", walltime="02:00:00", queue="compute", account="proj42"))
    for directive in ("#SBATCH -p compute", "#SBATCH -A proj42", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G",
                      "#SBATCH -t 02:00:00"):
        assert directive in script, script
    # four single-threaded workers per job, over TLS with the certificate files named
    assert "--nworkers 4" in script and "--nthreads 1" in script
    assert "tls://" in script and "--tls-ca-file" in script and "--tls-key" in script
    assert main(["cluster", "slurm", "--print-job-script", "--cores", "2", "--memory", "4GiB"]) == 0


def test_settings_come_from_jobqueue_config_and_flags_win():
    with dask.config.set({"jobqueue.slurm.cores": 8, "jobqueue.slurm.memory": "32GiB", "jobqueue.slurm.queue": "long"}):
        kw = slurm_cluster_kwargs(SlurmSpec(cores=2, tls=False))
    assert kw["cores"] == 2 and kw["memory"] == "32GiB" and kw["processes"] == 2 and "security" not in kw
    assert "queue" not in kw  # left to dask-jobqueue, which reads jobqueue.slurm.queue itself
    assert kw["scheduler_options"]["dashboard_address"] == "127.0.0.1:8787"
    with dask.config.set({"jobqueue.slurm.processes": 16}):  # 16 worker processes cannot share 8 cores
        with pytest.raises(ParameterError, match="processes = 16 cannot split a job of 8 cores"):
            slurm_cluster_kwargs(SlurmSpec(cores=8, memory="8GiB", tls=False))
    with dask.config.set({"jobqueue.slurm.processes": 2}):
        assert slurm_cluster_kwargs(SlurmSpec(cores=8, memory="8GiB", tls=False))["processes"] == 2
    with pytest.raises(ParameterError, match="TLS certificates does not exist: .*nowhere"):
        slurm_cluster_kwargs(SlurmSpec(cores=1, memory="1GiB", shared_dir="/nonexistent/nowhere"))
    with dask.config.set({"jobqueue.slurm.shared-temp-directory": "$HOME"}):  # expanded as the shell would
        assert slurm_cluster_kwargs(SlurmSpec(cores=1, memory="1GiB"))["shared_temp_directory"] == str(
            Path(os.path.expanduser("~")).resolve())
    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}):
        with pytest.raises(ParameterError, match="needs its cores and memory"):
            slurm_cluster_kwargs(SlurmSpec())


@pytest.mark.parametrize("kwargs,match", [
    ({"jobs": 2}, "need cluster='slurm'"),
    ({"cluster": "slurm", "workers": 2}, "with cluster='slurm' give jobs"),
    ({"cluster": "slurm", "jobs": 0}, "jobs must be a whole number >= 1"),
    ({"cluster": "slurm", "memory": "lots"}, "memory must be a size"),
    ({"cluster": "slurm", "walltime": "2h"}, "walltime must be HH:MM:SS"),
    ({"cluster": "pbs"}, "must be 'local' or 'slurm'"),
])
def test_cluster_params_refuse_what_cannot_apply(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        ClusterParams(**kwargs)


# ---- against the live SLURM ----

@pytest.fixture(autouse=True)
def _default_scheduler_restored():
    """Every test leaves dask's default scheduler as it found it (the next test files compute without a client)."""
    before = dask.config.get("scheduler", None)
    yield
    assert dask.config.get("scheduler", None) == before

@pytest.mark.slurm
@live
@pytest.mark.usefixtures("needs_data")
def test_run_on_slurm_equals_a_local_run_and_leaves_nothing(tmp_path):
    """`xsi-dask run ... --cluster slurm --jobs 2`: squeue lists the worker jobs while it runs, the results equal a
    LocalCluster run of the same command, and afterwards no job is queued and no scratch folder is left."""
    common = [str(EDS / "jeol_View000_0000006.pts"), "--split", "4x4", "--bin", "16", "--solver", "gram",
              "--nmf-components", "3", "--max-iter", "20", "--quiet"]
    seen: list[int] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.append(len(_jobs()))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with dask.config.set(LOOPBACK):
            assert main(["run", *common, "--out", str(tmp_path / "slurm"), "--cluster", "slurm", "--jobs", "2",
                         "--cores", "1", "--memory", "3GiB", "--performance-report"]) == 0
    finally:
        done.set()
        watcher.join()
    assert max(seen) == 2
    # Dask's performance report of the SLURM run, linked from its report.html
    assert "Dask Performance Report" in (tmp_path / "slurm" / "dask-performance-report.html").read_text()
    assert "<a href='dask-performance-report.html'>" in (tmp_path / "slurm" / "report.html").read_text()
    # the same analysis on a LocalCluster, of the store the SLURM run ingested (one ingest of the .pts is enough)
    assert main(["run", str(tmp_path / "slurm" / "montage.zarr"), *common[3:], "--out", str(tmp_path / "local"),
                 "--workers", "2"]) == 0
    a, b = (open_results(tmp_path / k / "results.zarr", "svd") for k in ("slurm", "local"))
    np.testing.assert_allclose(a.singular_values.values, b.singular_values.values, rtol=1e-10)
    na, nb = (open_results(tmp_path / k / "results.zarr", "nmf") for k in ("slurm", "local"))
    np.testing.assert_allclose(na.loss.values[-1], nb.loss.values[-1], rtol=1e-10)
    time.sleep(1)
    assert _jobs() == []
    assert not list((tmp_path / "slurm").glob(".xsi-dask-nmf-*")) and not list(tmp_path.glob("**/.xsi-dask-nmf-*"))


@pytest.mark.slurm
@live
def test_scheduler_speaks_tls_only(tmp_path):
    """The scheduler of a SLURM run listens on tls://; a client without the run's certificate cannot connect."""
    from distributed import Client

    with dask.config.set(LOOPBACK), slurm_cluster(SlurmSpec(jobs=1, cores=1, memory="2GiB", shared_dir=str(tmp_path))) as c:
        address = c.scheduler.address
        assert address.startswith("tls://")
        assert c.submit(lambda: 6 * 7).result() == 42
        # set_as_default=False: a Client that fails to connect would leave "dask.distributed" as dask's scheduler
        with pytest.raises((OSError, TimeoutError, TypeError)):  # TypeError: no TLS context without a certificate
            Client(address, timeout=3, set_as_default=False)
        with pytest.raises((OSError, TimeoutError)):
            Client(address.replace("tls://", "tcp://"), timeout=3, set_as_default=False)
    time.sleep(1)
    assert _jobs() == []



def test_gpu_job_script_carries_gres_and_the_resource():
    """`--print-job-script --gpu-jobs 1` shows the GPU job's --gres directive and its worker's --resources GPU=1."""
    script = job_script(SlurmSpec(cores=2, memory="4GiB", gpu_jobs=1))
    cpu, gpu = script.split("GPU job(s) ----")
    assert "--gres" not in cpu and "--resources" not in cpu
    assert "#SBATCH --gres=gpu:1" in gpu and "--resources GPU=1" in gpu and "--nworkers" not in gpu
    with dask.config.set({"xsi-dask.slurm-gpu-gres": "gpu:a100:{gpus}"}):
        gpu = job_script(SlurmSpec(cores=2, memory="4GiB", gpu_jobs=1, gpus_per_job=2)).split("GPU job(s) ----")[1]
    assert "#SBATCH --gres=gpu:a100:2" in gpu and "--resources GPU=2" in gpu
    with dask.config.set({"xsi-dask.slurm-gpu-gres": ""}):  # a cluster without GRES: the resource alone
        gpu = job_script(SlurmSpec(cores=2, memory="4GiB", gpu_jobs=1)).split("GPU job(s) ----")[1]
    assert "--gres" not in gpu and "--resources GPU=1" in gpu


def test_print_job_script_makes_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["cluster", "slurm", "--print-job-script", "--cores", "2", "--memory", "4GiB", "--gpu-jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --gres=gpu:1" in out and "--resources GPU=1" in out
    assert f"#SBATCH -o {tmp_path}/slurm-logs/" in out  # the jobs' output files: ./slurm-logs by default
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs,match", [
    ({"cluster": "slurm", "jobs": 2, "adapt": "1:3"}, "both set the number of worker jobs"),
    ({"cluster": "slurm", "adapt": "3:1"}, "1 <= MIN <= MAX"),
    ({"cluster": "slurm", "adapt": "0:2"}, "1 <= MIN <= MAX"),
    ({"cluster": "slurm", "gpu_jobs": -1}, "gpu_jobs must be a whole number"),
    ({"cluster": "slurm", "gpus_per_job": 0}, "gpus_per_job must be a whole number"),
    ({"cluster": "slurm", "dashboard_address": "localhost"}, "HOST:PORT"),
    ({"cluster": "slurm", "gpus_per_job": 2}, "asks for none"),
    ({"adapt": "1:2"}, "need cluster='slurm'"),
    ({"gpu_jobs": 1}, "need cluster='slurm'"),
    ({"performance_report": "yes"}, "must be true or false"),
])
def test_cluster_params_refuse_bad_scaling(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        ClusterParams(**kwargs)


def test_a_worker_that_cannot_see_the_store_is_named(tmp_path):
    from distributed import Client, LocalCluster

    from xsi_dask.cluster.shared import check_workers_see_store
    from xsi_dask.errors import ClusterUnavailableError

    store = tmp_path / "m.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc, set_as_default=False) as client:
        check_workers_see_store(store, client)
        with pytest.raises(ClusterUnavailableError, match=r"1 of 1 workers cannot read the montage store .*every node sees"):
            check_workers_see_store(tmp_path / "elsewhere.zarr", client)


@pytest.mark.slurm
@live
def test_gpu_job_worker_alone_runs_gpu_tasks(tmp_path):
    """A GPU-template worker started through the local SLURM (the resource declared, not detected: no GRES here)
    receives every resources={"GPU": 1} task; the CPU worker none."""
    from distributed import get_worker

    spec = SlurmSpec(jobs=1, cores=1, memory="2GiB", gpu_jobs=1, shared_dir=str(tmp_path), log_directory=str(tmp_path))
    with dask.config.set({**LOOPBACK, "xsi-dask.slurm-gpu-gres": ""}), slurm_cluster(spec) as c:
        c.wait_for_workers(2, timeout=120)
        assert len([j for j in _jobs() if "dask-worker-gpu" in j]) == 1
        names = {w["name"]: w.get("resources", {}) for w in c.scheduler_info(n_workers=-1)["workers"].values()}
        gpu = [n for n, r in names.items() if r.get("GPU") == 1]
        assert len(gpu) == 1 and "-gpu-" in str(gpu[0]) and len(names) == 2
        ran = c.gather([c.submit(lambda i: get_worker().name, i, resources={"GPU": 1}, pure=False) for i in range(8)])
        assert set(ran) == set(gpu)
        plain = c.gather([c.submit(lambda i: get_worker().name, i, pure=False) for i in range(8)])
        assert set(plain) <= set(names)
        from xsi_dask.engine.resources import run_on_resource

        assert run_on_resource(lambda: get_worker().name, resources={"GPU": 1}) == gpu[0]
    time.sleep(1)
    assert _jobs() == []


@pytest.mark.slurm
@live
def test_adapt_grows_under_load_and_shrinks_after(tmp_path):
    """--adapt 1:3: the worker jobs grow to 3 under 40 s of queued work and fall back to 1 when it is done."""
    spec = SlurmSpec(cores=1, memory="1GiB", adapt=(1, 3), shared_dir=str(tmp_path), log_directory=str(tmp_path))
    # three 1-core jobs on this 2-core node: they share its cores (the partition allows it when asked)
    extra = {"jobqueue.slurm.job-extra-directives": ["--oversubscribe"]}
    with dask.config.set({**LOOPBACK, **extra}), slurm_cluster(spec) as c:
        futures = [c.submit(time.sleep, 1.0, pure=False) for _ in range(40)]
        most, deadline = 0, time.monotonic() + 120
        while time.monotonic() < deadline and most < 3:
            most = max(most, len(_jobs()))
            time.sleep(0.5)
        assert most == 3
        c.gather(futures)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(_jobs()) > 1:
            time.sleep(0.5)
        assert len(_jobs()) == 1
    time.sleep(1)
    assert _jobs() == []


@pytest.mark.slurm
@live
def test_nmf_survives_a_cancelled_worker_job(tmp_path):
    """`scancel` of one of two worker jobs during NMF: the run completes, equal to an undisturbed run (same seed)."""
    import xsi_dask
    from xsi_dask.testing.simulate import simulate

    store = simulate(tmp_path / "m.zarr", preset="grade91_replica", tiles="4x4", tile_shape="32x32", channels=512,
                     counts_per_pixel=20, progress=False)
    view = xsi_dask.open_montage(store)
    kw = {"loss": "kl", "max_iter": 60, "tol": 0.0, "init": "random", "seed": 3, "progress": False}
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as lc, Client(lc):
        reference = xsi_dask.nmf(view, 3, **kw)
    cancelled: list[str] = []
    spec = SlurmSpec(jobs=2, cores=1, memory="3GiB", shared_dir=str(tmp_path), log_directory=str(tmp_path / "logs"))
    with dask.config.set(LOOPBACK), slurm_cluster(spec) as c:
        c.wait_for_workers(2, timeout=120)
        done = threading.Event()

        def cancel_one():  # once NMF's passes write W into its scratch folder, scancel the first job
            deadline = time.monotonic() + 120
            while not done.is_set() and time.monotonic() < deadline:
                if list(tmp_path.glob(".xsi-dask-nmf-*/*.npy")):
                    time.sleep(0.5)
                    job = next(iter(c.cluster.workers.values())).job_id
                    subprocess.run(["scancel", str(job)], check=True, timeout=10)
                    cancelled.append(str(job))
                    return
                time.sleep(0.1)

        killer = threading.Thread(target=cancel_one, daemon=True)
        killer.start()
        try:
            result = xsi_dask.nmf(view, 3, **kw)
        finally:
            done.set()
            killer.join()
        assert cancelled, "NMF ended before a worker job could be cancelled"
        assert len(c.nthreads()) == 1  # the cancelled job's worker is gone; the run went on without it
    np.testing.assert_allclose(result.loss.values[-1], reference.loss.values[-1], rtol=1e-10)
    np.testing.assert_allclose(result.spectra.values, reference.spectra.values, rtol=1e-10, atol=1e-12)
    assert not list(tmp_path.glob(".xsi-dask-nmf-*"))  # the scratch folder (and a killed task's part-file) is gone
    time.sleep(1)
    assert _jobs() == []


@pytest.mark.slurm
@live
def test_ctrl_c_cancels_the_worker_jobs(tmp_path):
    """Ctrl-C during a SLURM run's NMF: exit 130 within seconds, no worker job left queued, no scratch folder left."""
    import signal
    import sys

    from xsi_dask.testing.simulate import simulate

    montage = simulate(tmp_path / "m.zarr", tiles="1x2", tile_shape="32x32", channels=256, counts_per_pixel=20,
                       progress=False)
    env = {**os.environ, "DASK_JOBQUEUE__SLURM__INTERFACE": "lo",
           "DASK_JOBQUEUE__SLURM__LOG_DIRECTORY": str(tmp_path / "slurm-logs")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "xsi_dask.cli.main", "run", str(montage.path), "--out", str(tmp_path / "run"),
         "--components", "2", "--nmf-components", "2", "--max-iter", "100000", "--tol", "0", "--quiet",
         "--cluster", "slurm", "--jobs", "1", "--cores", "1", "--memory", "2GiB", "--walltime", "00:10:00"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not list(tmp_path.glob(".xsi-dask-nmf-*/*.npy")):  # NMF under way on the SLURM worker
        assert proc.poll() is None, proc.communicate()
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("NMF never started")
        time.sleep(0.1)
    assert len(_jobs()) == 1
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    time.sleep(1)
    assert _jobs() == []
    assert not list(tmp_path.glob(".xsi-dask-nmf-*"))


def test_importing_dask_jobqueue_leaves_ctrl_c_alone():
    """dask-jobqueue 0.9.0 sets a SIGINT handler calling sys.exit() when imported (dask/dask-jobqueue#696): a
    Ctrl-C would exit 0 without the interrupt handling. The package imports it keeping the handler in place."""
    import sys

    code = ("import signal, sys; h = signal.getsignal(signal.SIGINT)\n"
            "from xsi_dask.cluster.slurm import _jobqueue; _jobqueue()\n"
            "sys.exit(0 if signal.getsignal(signal.SIGINT) is h else 3)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_job_memory_comes_from_the_tile_size(tmp_path, capsys):
    """Without --memory or jobqueue.slurm.memory, a job's memory is the pass engine's need per worker for the
    store's largest tile (at least xsi-dask.slurm-min-worker-memory each), times its worker processes."""
    import xsi_dask
    from xsi_dask.engine.plan import make_plan
    from xsi_dask.pipeline._run import _with_slurm_memory
    from xsi_dask.testing.simulate import simulate

    montage = xsi_dask.open_montage(simulate(tmp_path / "m.zarr", tiles="1x2", tile_shape="64x64", channels=512,
                                             counts_per_pixel=20, progress=False))
    cluster = ClusterParams(cluster="slurm", cores=4)
    with dask.config.set({"jobqueue.slurm.memory": None, "xsi-dask.slurm-min-worker-memory": "1MiB"}):
        sized = _with_slurm_memory(cluster, montage, (5, None), "randomized")
        need = make_plan(montage).worker_memory(12, threads=1)["limit"]  # None: NMF's cap of 12 components
        assert sized.memory == f"{-(-4 * need // 2**30)}GiB" and sized.slurm.memory == sized.memory
        assert "SLURM job memory" in capsys.readouterr().out
        assert _with_slurm_memory(cluster, None, (5,), "randomized") is cluster  # files still to ingest
    with dask.config.set({"jobqueue.slurm.memory": None, "xsi-dask.slurm-min-worker-memory": "3GiB"}):
        assert _with_slurm_memory(cluster, montage, (5,), "randomized").memory == "12GiB"  # 4 x the floor
    given = ClusterParams(cluster="slurm", cores=4, memory="7GiB")
    assert _with_slurm_memory(given, montage, (5,), "randomized") is given
