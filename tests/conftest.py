"""Shared fixtures: real instrument data from ../shared/data, read through RosettaSciIO."""

from __future__ import annotations

import contextlib
import functools
import importlib
from pathlib import Path

import numpy as np
import pytest

from xsi_dask.cluster.slurm import _jobqueue
from xsi_dask.errors import ClusterUnavailableError

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()

# dask-jobqueue 0.9.0 replaces the SIGINT handler with sys.exit when first imported (dask/dask-jobqueue#696);
# imported once here the package's way, keeping pytest's Ctrl-C, so later imports by the tests change nothing
with contextlib.suppress(ClusterUnavailableError):
    _jobqueue()

EDS = DATA / "eds"

# file -> split used where the map is >= 64 px a side (None: too small to split)
EDS_FILES = {
    "jeol_View000_0000006.pts": "4x4",
    "velox_EELS_EDS_128x128.emd": "4x4",
    "velox_test_SI_16x16.emd": None,
    "Hitachi_TM3030Plus.bcf": "3x4",
    "P45_the_default_job.bcf": "3x4",
    "bcf_v2_50x50px.bcf": None,
    "test_TEM.bcf": "2x2",
    "bcf-edx-ebsd.bcf": "3x4",
    "30x30_instructively_packed_16bit_compressed.bcf": None,
}


def pytest_collection_modifyitems(config, items):
    if not EDS.is_dir():
        skip = pytest.mark.skip(reason=f"real data not found at {DATA}")
        for item in items:
            if "needs_data" in item.fixturenames:
                item.add_marker(skip)


@pytest.fixture
def needs_data():
    return EDS


@functools.lru_cache(maxsize=4)
def reference_si(name: str):
    """Dense spectrum image and axes of a real file straight from RosettaSciIO (no xsi_dask code)."""
    path = EDS / name
    module = {".bcf": "rsciio.bruker", ".pts": "rsciio.jeol", ".emd": "rsciio.emd"}[path.suffix]
    signals = importlib.import_module(module).file_reader(str(path))
    si = [s for s in signals if s["data"].ndim == 3 and s["metadata"]["Signal"]["signal_type"].startswith("EDS")][0]
    return np.asarray(si["data"]), si["axes"]


def write_rpl(path: Path, data: np.ndarray, axes: list[dict], title: str = "tile") -> Path:
    """Write a Lispix .rpl/.raw spectrum image with RosettaSciIO's writer."""
    from rsciio import ripple

    sig = {
        "data": np.ascontiguousarray(data),
        "axes": axes,
        "metadata": {
            "General": {"title": title},
            "Signal": {"signal_type": "EDS_TEM"},
            "Acquisition_instrument": {"TEM": {"beam_energy": 200.0, "Detector": {"EDS": {"live_time": 1.0}}}},
        },
        "original_metadata": {},
    }
    ripple.file_writer(str(path), sig)
    return path


def write_rpl_tiles(src_name: str, split: tuple[int, int], folder: Path, *, energy_offset_shift: dict | None = None):
    """Cut a real map into Lispix .rpl/.raw tile files (RosettaSciIO's writer); return paths row-major."""
    data, axes = reference_si(src_name)
    rows, cols = split
    th, tw = data.shape[0] // rows, data.shape[1] // cols
    paths = []
    for r in range(rows):
        for c in range(cols):
            ax = [dict(a) for a in axes]
            ax[0]["size"], ax[1]["size"] = th, tw
            k = r * cols + c
            if energy_offset_shift and k in energy_offset_shift:
                ax[2]["offset"] = float(ax[2]["offset"]) + energy_offset_shift[k]
            tile = data[r * th : (r + 1) * th, c * tw : (c + 1) * tw]
            paths.append(write_rpl(folder / f"tile_r{r}_c{c}.rpl", tile, ax, f"tile{k}"))
    return paths


def assert_no_store(out: Path):
    """Neither the store nor any temporary sibling of it exists."""
    assert not out.exists()
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert not leftovers, leftovers


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line saying how the tests marked slurm went (CI's log shows they ran against the live SLURM)."""
    counts: dict[str, int] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for rep in terminalreporter.stats.get(outcome, []):
            if "slurm" in getattr(rep, "keywords", {}) and getattr(rep, "when", "call") in ("call", "setup"):
                if outcome == "passed" and rep.when != "call":
                    continue
                counts[outcome] = counts.get(outcome, 0) + 1
    if counts:
        terminalreporter.write_line("tests marked slurm: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
