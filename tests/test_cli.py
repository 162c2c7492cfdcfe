"""The command line: ingest then info; every option documented; `python -m xsi_dask`; every argument and output
checked before any pass."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pytest

from xsi_dask.cli import main as cli
from xsi_dask.cli.main import build_parser, main
from xsi_dask.pipeline import ViewParams

from .conftest import EDS, write_rpl

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("needs_data")
def test_ingest_and_info(tmp_path, capsys):
    out = tmp_path / "p45.zarr"
    assert main(["ingest", str(EDS / "P45_the_default_job.bcf"), "--out", str(out), "--split", "3x4", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "12 on a 3x4 grid" in text and "total counts     165,941" in text
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tiles"] == 12 and info["shape"] == [12, 25, 25, 2048]
    assert info["total_counts"] == 165941
    assert info["energy"]["units"] == "keV"


# ---- help: every option, an example per subcommand, python -m xsi_dask ----

def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_option_has_help_and_every_command_an_example():
    subs = _subparsers(build_parser())
    assert {"ingest", "run", "decompose", "nmf", "simulate", "info", "clean", "verify"} <= set(subs)
    for name, p in subs.items():
        undocumented = [a.dest for a in p._actions if not a.help or a.help == argparse.SUPPRESS]
        assert not undocumented, f"xsi-dask {name}: options without help: {undocumented}"
        assert p.epilog and f"xsi-dask {name}" in p.epilog, f"xsi-dask {name} has no example"
        # the example parses: every flag it uses exists (the example line after "example:")
        for line in p.epilog.splitlines()[1:]:
            argv = line.split()[1:]
            if argv and argv[0] == name:
                build_parser().parse_args(argv)
    for name in ("run", "decompose", "nmf"):
        text = subs[name].format_help()
        for flag in ("--energy-range", "--keep-zero-peak", "--bin", "--elements"):
            assert flag in text, (name, flag)
    assert "--zero-peak" in subs["simulate"].format_help()


def test_python_m_xsi_dask(tmp_path):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "xsi_dask", "--version"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("xsi-dask "), proc.stderr
    proc = subprocess.run([sys.executable, "-m", "xsi_dask", "decompose", str(tmp_path / "none.zarr"), "--out",
                           str(tmp_path / "r.zarr"), "--bin", "0"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "xsi-dask decompose: error: ViewParams.bin must be >= 1; got 0"]


# ---- the view flags -> ViewParams ----

@pytest.mark.parametrize("command", ["run", "decompose", "nmf"])
def test_view_flags_become_view_params(command):
    head = [command, "s.zarr", "--out", "o"]
    g = cli._given(build_parser().parse_args(head))
    assert cli._view_params(g) == ViewParams()  # flags not given: the defaults (zero peak excluded, no bin)
    args = build_parser().parse_args([*head, "--energy-range", "0.5:", "--keep-zero-peak", "--bin", "2",
                                      "--elements", "fe, Cr,Fe"])
    v = cli._view_params(cli._given(args))
    assert v == ViewParams(energy_range=(0.5, None), keep_zero_peak=True, bin=2, elements=("Fe", "Cr"))
    v = cli._view_params(cli._given(build_parser().parse_args([*head, "--energy-range=-0.1:8"])))
    assert v.energy_range == (-0.1, 8.0)


# ---- checked before any pass ----

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from xsi_dask.testing.simulate import simulate

    return simulate(tmp_path_factory.mktemp("cli") / "m.zarr", tiles="1x2", tile_shape="16x16", channels=256,
                    counts_per_pixel=20, zero_peak=0.15, seed=2, progress=False)


@pytest.fixture
def no_pass(monkeypatch):
    """Any pass over the tiles, cluster start or ingest fails the test (they must not be reached)."""
    from xsi_dask.engine.plan import Plan
    from xsi_dask.pipeline import _run

    def boom(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    for name in ("reduce", "map", "unit_tasks"):
        monkeypatch.setattr(Plan, name, boom)
    monkeypatch.setattr(_run, "_client", boom)
    monkeypatch.setattr("xsi_dask.io.ingest.ingest", boom)


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"xsi-dask {command}: error: "), err
    return err[0]


@pytest.mark.parametrize("flags, says", [
    (["--energy-range", "5:1"], "must be below the high end"),
    (["--energy-range", "a:b"], "must be 'LO:HI' in keV"),
    (["--energy-range", "1:2:3"], "must be 'LO:HI' in keV"),
    (["--energy-range", "40:50"], "keeps 0 channel(s)"),  # outside the store's 0-2.55 keV: known once the store is
    (["--bin", "0"], "bin must be >= 1"),
    (["--bin", "3"], "bin 3 does not divide the tile size 16 x 16"),
    (["--elements", "Fe,Xx"], "'Xx' is not a chemical symbol"),
    (["--elements", ","], "at least one element"),
    (["--components", "0"], "components must be >= 1"),
])
@pytest.mark.parametrize("command", ["run", "decompose", "nmf"])
def test_bad_arguments_fail_before_any_pass(store, tmp_path, capsys, no_pass, command, flags, says):
    if command == "run" and flags[0] == "--components":
        flags = ["--nmf-components", "0"]
    out = tmp_path / ("run" if command == "run" else "r.zarr")
    t = time.perf_counter()
    assert main([command, str(store.path), "--out", str(out), *flags, "--quiet"]) == 2
    assert says in _one_error_line(capsys, command)
    assert time.perf_counter() - t < 5
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_nmf_into_a_results_store_with_an_nmf_group_fails_at_once(store, tmp_path, capsys, no_pass):
    import xarray as xr

    from xsi_dask.io.results import write_results

    out = tmp_path / "r.zarr"
    write_results(out, {"nmf": xr.Dataset({"a": ("k", np.arange(3.0))})})
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    t = time.perf_counter()
    assert main(["nmf", str(store.path), "--out", str(out), "--components", "2", "--quiet"]) == 2
    assert "already has group(s) ['nmf']; pass --overwrite" in _one_error_line(capsys, "nmf")
    assert time.perf_counter() - t < 5
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_with_an_unreachable_scheduler_fails_before_the_ingest(tmp_path, capsys, monkeypatch):
    """One line within the connect timeout, and no montage store ingested first."""
    def no_ingest(*a, **k):
        raise AssertionError("ingest ran before the scheduler was reached")

    monkeypatch.setattr("xsi_dask.io.ingest.ingest", no_ingest)
    counts = np.random.default_rng(0).poisson(0.5, (8, 8, 64)).astype(np.uint16)
    axes = [{"name": n, "size": s, "offset": 0.0, "scale": sc, "units": u, "navigate": nav}
            for n, s, sc, u, nav in [("y", 8, 1.0, "nm", True), ("x", 8, 1.0, "nm", True), ("Energy", 64, 0.02, "keV", False)]]
    src = write_rpl(tmp_path / "t.rpl", counts, axes)
    address = f"tcp://127.0.0.1:{_free_port()}"
    out = tmp_path / "run"
    t = time.perf_counter()
    with dask.config.set({"xsi-dask.connect-timeout": "1s"}):
        assert main(["run", str(src), "--out", str(out), "--scheduler", address, "--nmf-components", "2", "--quiet"]) == 2
    assert f"cannot reach the Dask scheduler at {address} within 1 s" in _one_error_line(capsys, "run")
    assert time.perf_counter() - t < 10
    assert not out.exists()


def test_readme_dense_values(store):
    """The README's ways to dense values work and give the stored counts; .values and np.asarray refuse."""
    import xsi_dask

    m = xsi_dask.open_montage(store)
    csr = store.tile_csr(0).to_scipy()
    want = csr.toarray().reshape(1, 16, 16, store.channels)
    with pytest.raises(RuntimeError, match="Cannot convert a sparse array to dense automatically"):
        m.values
    with pytest.raises(RuntimeError, match="Cannot convert a sparse array to dense automatically"):
        np.asarray(m)
    np.testing.assert_array_equal(m.isel(tile=[0]).compute().data.todense(), want)
    np.testing.assert_array_equal(m.isel(tile=[0]).to_numpy(), want)
    a = m.isel(tile=[0]).as_numpy()
    assert isinstance(a.data, np.ndarray) and a.dims == m.dims
    np.testing.assert_array_equal(a.values, want)
    np.testing.assert_array_equal(m.sum(["tile", "y", "x"]).compute().data.todense(), store.sum_spectrum())
    lazy = m.copy(data=m.data.map_blocks(lambda b: b.todense(), dtype=m.dtype))
    assert lazy.chunks == m.chunks
    np.testing.assert_array_equal(lazy.isel(tile=[0]).values, want)
