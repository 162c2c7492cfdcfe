"""--performance-report: Dask's performance report beside the results, written whole, and linked from report.html."""

from __future__ import annotations

import re

import pytest
import xarray as xr

from xsi_dask.cli.main import main
from xsi_dask.errors import OutputWriteError
from xsi_dask.pipeline import _run

NAME = "dask-performance-report.html"
SMALL = ["--components", "3", "--nmf-components", "2", "--max-iter", "5", "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small simulated EDS montage (2 tiles of 32 x 32 pixels, 256 channels)."""
    from xsi_dask.testing.simulate import simulate

    return simulate(tmp_path_factory.mktemp("perf") / "m.zarr", tiles="1x2", tile_shape="32x32", channels=256,
                    counts_per_pixel=20, seed=1, progress=False)


def _links(report) -> list[str]:
    return re.findall(r"<a href='([^']*)'>Dask performance report</a>", report.read_text(encoding="utf-8"))


def _is_dask_report(path) -> bool:
    text = path.read_text(encoding="utf-8")
    return "<title>Dask Performance Report</title>" in text and "Task Stream" in text and "bokeh" in text.lower()


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(f".{NAME}")]


def test_run_writes_the_report_into_its_folder_and_links_it(store, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(store.path), "--out", str(out), "--performance-report", *SMALL]) == 0
    assert f"Dask performance report: {out / NAME}" in capsys.readouterr().out
    assert _is_dask_report(out / NAME) and not _leftovers(out)
    assert _links(out / "report.html") == [NAME]  # relative to report.html, beside it
    for group in ("svd", "nmf"):
        assert xr.open_zarr(out / "results.zarr", group=group).attrs["performance_report"] == NAME

    # rerun without the flag: the earlier report stays in the folder, but describes other results: not linked
    assert main(["run", str(store.path), "--out", str(out), "--overwrite", *SMALL]) == 0
    assert (out / NAME).is_file() and _links(out / "report.html") == []
    assert "performance_report" not in xr.open_zarr(out / "results.zarr", group="nmf").attrs


def test_without_the_flag_no_report_and_no_link(store, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(store.path), "--out", str(out), *SMALL]) == 0
    assert "Dask performance report" not in capsys.readouterr().out
    assert not (out / NAME).exists() and not _leftovers(out)
    assert _links(out / "report.html") == [] and "<a href" not in (out / "report.html").read_text(encoding="utf-8")


def test_decompose_writes_it_beside_the_results_store_and_report_links_it(store, tmp_path):
    results = tmp_path / "a" / "res.zarr"
    assert main(["decompose", str(store.path), "--out", str(results), "--components", "3", "--workers", "1",
                 "--performance-report", "--quiet"]) == 0
    assert _is_dask_report(tmp_path / "a" / NAME) and not (results / NAME).exists()
    assert xr.open_zarr(results, group="svd").attrs["performance_report"] == NAME
    # xsi-dask report into another folder: the link still leads to the file, relative to that report
    assert main(["report", str(results), "--out", str(tmp_path / "b" / "rep")]) == 0
    assert _links(tmp_path / "b" / "rep" / "report.html") == [f"../../a/{NAME}"]


def test_a_failed_analysis_writes_no_report(store, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(_run, "_svd", fail)
    results = tmp_path / "res.zarr"
    with pytest.raises(RuntimeError, match="boom"):
        _run.decompose_store(store.path, results, cluster=_run.ClusterParams(workers=1, performance_report=True),
                             progress=False)
    assert not (tmp_path / NAME).exists() and not _leftovers(tmp_path)


def test_a_report_that_cannot_be_written_leaves_no_file_and_no_results(store, tmp_path, monkeypatch):
    import distributed

    def half_written(self, *exc):
        with open(self.filename, "w") as f:
            f.write("<html>half")
        raise OSError(28, "No space left on device", self.filename)

    monkeypatch.setattr(distributed.performance_report, "__exit__", half_written)
    with pytest.raises(OutputWriteError, match="the disk is full"):
        _run.decompose_store(store.path, tmp_path / "res.zarr", cluster=_run.ClusterParams(workers=1, performance_report=True),
                             progress=False)
    assert not (tmp_path / NAME).exists() and not _leftovers(tmp_path)
    assert not (tmp_path / "res.zarr").exists()  # gathered before the commit: the results are not committed either


def test_a_report_that_cannot_be_renamed_leaves_no_temporary_file(store, tmp_path, monkeypatch):
    import os

    replace = os.replace

    def refuse(src, dst):
        if os.path.basename(dst) == NAME:
            raise OSError(13, "Permission denied", str(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputWriteError, match="the results were written, the performance report was not"):
        _run.decompose_store(store.path, tmp_path / "res.zarr", cluster=_run.ClusterParams(workers=1, performance_report=True),
                             progress=False)
    assert not (tmp_path / NAME).exists() and not _leftovers(tmp_path)
    assert xr.open_zarr(tmp_path / "res.zarr", group="svd").attrs["performance_report"] == NAME  # committed before


def test_a_path_in_the_way_is_refused_before_any_work(store, tmp_path, capsys):
    # a folder that is not a run's: its own dask-performance-report.html is not replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / NAME).write_text("someone else's")
    assert main(["run", str(store.path), "--out", str(tmp_path / "other"), "--performance-report", *SMALL]) == 2
    assert "not the folder of an xsi_dask run" in capsys.readouterr().err
    assert (tmp_path / "other" / NAME).read_text() == "someone else's" and not (tmp_path / "other" / "run.yaml").exists()
    # a folder where the report goes, beside a results store
    (tmp_path / "d" / NAME).mkdir(parents=True)
    assert main(["decompose", str(store.path), "--out", str(tmp_path / "d" / "r.zarr"), "--performance-report",
                 "--quiet"]) == 2
    assert "not a performance report" in capsys.readouterr().err and not (tmp_path / "d" / "r.zarr").exists()
