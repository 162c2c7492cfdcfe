"""The example files under deploy/slurm/ are usable as they are shipped.

``jobqueue.yaml`` holds only keys dask-jobqueue reads and yields the job script it describes;
``run-montage.sbatch`` is valid bash whose ``xsi-dask`` command the real parser accepts (and,
where a SLURM answers, whose #SBATCH header ``sbatch --test-only`` accepts: nothing is submitted).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import dask
import pytest
import yaml

from xsi_dask.cli.main import build_parser
from xsi_dask.cluster.slurm import SlurmSpec, job_script, slurm_cluster_kwargs
from xsi_dask.pipeline import ClusterParams

SLURM_DIR = Path(__file__).resolve().parents[1] / "deploy" / "slurm"
JOBQUEUE_YAML = SLURM_DIR / "jobqueue.yaml"
SBATCH = SLURM_DIR / "run-montage.sbatch"


def _example_config() -> dict:
    """The example's jobqueue.slurm settings as dotted keys, to lay over dask-jobqueue's defaults as a config file does."""
    cfg = yaml.safe_load(JOBQUEUE_YAML.read_text())
    assert list(cfg) == ["jobqueue"] and list(cfg["jobqueue"]) == ["slurm"]
    return {f"jobqueue.slurm.{k}": v for k, v in cfg["jobqueue"]["slurm"].items()}


def test_jobqueue_yaml_has_only_keys_dask_jobqueue_reads():
    dask_jobqueue = pytest.importorskip("dask_jobqueue")
    defaults = yaml.safe_load((Path(dask_jobqueue.__file__).parent / "jobqueue.yaml").read_text())["jobqueue"]["slurm"]
    keys = {k.removeprefix("jobqueue.slurm.") for k in _example_config()}
    assert keys <= set(defaults), sorted(keys - set(defaults))
    for key in ("cores", "memory", "processes", "walltime", "queue", "account", "interface", "local-directory",
                "shared-temp-directory", "log-directory", "job-script-prologue", "job-extra-directives",
                "scheduler-options"):
        assert key in keys, key


def test_jobqueue_yaml_gives_the_job_it_describes(tmp_path):
    pytest.importorskip("dask_jobqueue")
    cfg = _example_config()
    # the example's shared folders do not exist here; the scheduler of the printout listens on loopback (no ib0
    # here), while the workers' command keeps the example's interface
    local = {"jobqueue.slurm.shared-temp-directory": str(tmp_path), "jobqueue.slurm.log-directory": str(tmp_path / "logs"),
             "jobqueue.slurm.scheduler-options": {**cfg["jobqueue.slurm.scheduler-options"], "interface": "lo"}}
    with dask.config.set({**cfg, **local}):
        kw = slurm_cluster_kwargs(SlurmSpec(tls=False))
        script = job_script(SlurmSpec(dashboard_address="127.0.0.1:0"))  # any free port: 8787 may be taken here
    assert kw["cores"] == 16 and kw["memory"] == "64GiB" and kw["processes"] == 16  # processes null: one per core
    assert kw["scheduler_options"]["dashboard_address"] == "127.0.0.1:8787"
    assert kw["log_directory"] == str(tmp_path / "logs")
    for line in ("#SBATCH -J dask-worker", "#SBATCH -p compute", "#SBATCH -A myproject", "#SBATCH --cpus-per-task=16",
                 "#SBATCH --mem=64G", "#SBATCH -t 04:00:00", "#SBATCH --qos=normal",
                 f"#SBATCH -o {tmp_path / 'logs'}/dask-worker-%J.out",
                 "module load python/3.11", "source ~/venvs/xsi-dask/bin/activate"):
        assert line in script.splitlines(), (line, script)
    # sixteen single-threaded workers over TLS; $TMPDIR is left for the worker node's shell to expand
    for arg in ("--nworkers 16", "--nthreads 1", "--memory-limit 4.00GiB", "--death-timeout 60",
                "--local-directory $TMPDIR", "--interface ib0", "--tls-ca-file"):
        assert arg in script, (arg, script)
    assert script.index("source ~/venvs/xsi-dask/bin/activate") < script.index("distributed.cli.dask_worker")


def test_sbatch_script_is_valid_bash():
    out = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = SBATCH.read_text()
    assert text.startswith("#!/bin/bash\n") and "\nset -euo pipefail\n" in text


def _xsi_dask_args(text: str) -> list[str]:
    """The arguments the script passes to ``xsi-dask``, its variables replaced by their defaults (``"$@"``: none)."""
    defaults = {name: value for name, value in re.findall(r'^(\w+)=\$\{\1:-"?([^"}]*)"?\}', text, re.MULTILINE)}
    lines = text.replace("\\\n", " ").splitlines()
    commands = [line for line in lines if re.match(r"\s*(exec\s+)?xsi-dask\s", line)]
    assert len(commands) == 1, commands
    command = commands[0].replace('"$@"', "")
    used = re.findall(r"\$\{?(\w+)\}?", command)
    assert set(used) <= set(defaults), f"variables without a default at the top: {sorted(set(used) - set(defaults))}"
    command = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], command)
    words = shlex.split(command, comments=True)
    return words[words.index("xsi-dask") + 1:]


def test_sbatch_script_flags_are_the_real_clis():
    args = _xsi_dask_args(SBATCH.read_text())
    assert args[0] == "run" and "--cluster" in args
    ns = build_parser().parse_args(args)  # SystemExit(2) on a flag the CLI does not have
    assert ns.command == "run" and ns.cluster == "slurm" and ns.performance_report
    assert ns.inputs == ["/shared/project/data/tile_*.bcf"] and ns.grid == "2x3"
    # the values are ones the run accepts (sizes, walltime), checked as `xsi-dask run` checks them
    cluster = ClusterParams(cluster=ns.cluster, jobs=ns.jobs, cores=ns.cores, memory=ns.memory, walltime=ns.walltime,
                            queue=ns.queue, account=ns.account, performance_report=ns.performance_report)
    assert cluster.slurm.jobs == 4 and cluster.slurm.cores == 16


@pytest.mark.slurm
def test_sbatch_header_is_accepted_by_sbatch():
    """``sbatch --test-only`` (nothing is submitted) on the live SLURM, its partition and no account in place of the
    example's placeholders: every #SBATCH line parses (a misspelt option or --signal form fails here)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip("no SLURM client here (deploy/slurm/local-slurm.sh start)")
    part = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=10)
    partitions = [p.rstrip("*") for p in part.stdout.split()]
    if part.returncode != 0 or not partitions:
        pytest.skip(f"no SLURM answers (sinfo: {part.stderr.strip()[:200]!r})")
    out = subprocess.run(["sbatch", "--test-only", f"--partition={partitions[0]}", "--account=", str(SBATCH)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "to start at" in out.stderr, out.stderr
