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
                         "--cores", "1", "--memory", "3GiB"]) == 0
    finally:
        done.set()
        watcher.join()
    assert max(seen) == 2
    assert main(["run", *common, "--out", str(tmp_path / "local"), "--workers", "2"]) == 0
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

