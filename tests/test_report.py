"""The report a microscopist trusts: images that resolve relative to report.html, every component shown,
loss against the iteration, the scree cut at round-off, formatted numbers, and `xsi-dask report`."""

from __future__ import annotations

import errno
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import xarray as xr
from distributed import LocalCluster

import xsi_dask
from xsi_dask.cli.main import main
from xsi_dask.errors import InputFileNotFoundError, NotOurOutputError, OutputWriteError, ParameterError, StoreFormatError
from xsi_dask.io.results import write_results
from xsi_dask.plotting import build, figures
from xsi_dask.plotting.formatting import format_number, format_seconds, format_value
from xsi_dask.plotting.report import image_src

# ---- helpers ----


class _Page(HTMLParser):
    """The img sources, headings and table rows of a report."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.headings: list[str] = []
        self.rows: dict[str, str] = {}
        self.notes: list[str] = []
        self._tag, self._th, self._buf = None, None, ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag in ("h2", "th", "td") or (tag == "p" and a.get("class") == "note"):
            self._tag, self._buf = ("note" if tag == "p" else tag), ""

    def handle_data(self, data):
        if self._tag:
            self._buf += data

    def handle_endtag(self, tag):
        if self._tag is None or tag not in ("h2", "th", "td", "p"):
            return
        if self._tag == "h2":
            self.headings.append(self._buf)
        elif self._tag == "th":
            self._th = self._buf
        elif self._tag == "td":
            self.rows[self._th] = self._buf
        elif self._tag == "note":
            self.notes.append(self._buf)
        self._tag = None


def _parse(report: Path) -> _Page:
    page = _Page()
    page.feed(report.read_text(encoding="utf-8"))
    return page


def _assert_images_resolve(report: Path) -> list[Path]:
    """Every img src of the report names an existing file relative to the report's folder (not the cwd)."""
    page = _parse(report)
    assert page.images
    files = []
    for src in page.images:
        assert not os.path.isabs(unquote(src)), src
        f = report.parent / unquote(src)
        assert f.is_file(), f"{src} does not resolve relative to {report}"
        files.append(f)
    return files


@pytest.fixture
def captured(monkeypatch):
    """Every Figure that figures.save writes, by file name."""
    seen: dict[str, object] = {}
    real = figures.save

    def save(fig, path):
        seen[Path(path).name] = fig
        return real(fig, path)

    monkeypatch.setattr(figures, "save", save)
    return seen


def _map_titles(figs: dict, stem: str) -> list[str]:
    """Titles of the map panels (axes holding an image) of every page of ``stem``."""
    pages = sorted((n for n in figs if n == f"{stem}.png" or n.startswith(stem + "_page")), key=lambda n: (len(n), n))
    return [ax.get_title() for n in pages for ax in figs[n].axes if ax.images]


def _spectrum_names(figs: dict, stem: str) -> list[str]:
    """The component names written in the panels of every page of a stacked-spectra figure."""
    pages = sorted((n for n in figs if n == f"{stem}.png" or n.startswith(stem + "_page")), key=lambda n: (len(n), n))
    return [t.get_text() for n in pages for ax in figs[n].axes for t in ax.texts if t.get_text().startswith("#")]


def _index(titles: list[str]) -> list[int]:
    return [int(re.match(r"#(\d+)", t).group(1)) for t in titles]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small simulated montage: 2 x 2 tiles of 6 x 6 pixels, 256 channels (72 pixels: a rank-deficient gram)."""
    from xsi_dask.testing.simulate import simulate

    return simulate(tmp_path_factory.mktemp("sim") / "s.zarr", tiles="2x2", tile_shape="6x6", channels=256,
                    counts_per_pixel=200, seed=1, progress=False)


# ---- numbers ----

@pytest.mark.parametrize("value, unit, text", [
    (0.0002842200919985771, "", "2.842 × 10⁻⁴"),
    (638489.4953203215, "", "6.385 × 10⁵"),
    (379.9076, "", "379.9"),
    (949769, "", "949,769"),
    (np.int64(12), "", "12"),
    (20.0, "kV", "20 kV"),
    (0.009996, "keV", "0.009996 keV"),
    (-0.47316066, "keV", "-0.4732 keV"),
    (12345.6, "", "12,346"),
    (99999.7, "", "1 × 10⁵"),
    (9.99996, "", "10"),
    (6.78, "%", "6.78%"),
    (35.0, "°", "35°"),
    (1e-134, "", "1 × 10⁻¹³⁴"),
    (0.0, "s", "0 s"),
    (float("nan"), "", "n/a"),
    (True, "", "yes"),
    (None, "", "—"),
])
def test_format_number(value, unit, text):
    assert format_number(value, unit) == text


def test_format_number_significant_digits_and_errors():
    assert format_number(0.123456, sig=3) == "0.123"
    assert format_number(np.float32(2.5)) == "2.5"
    assert format_number(np.array(7.25)) == "7.25"
    with pytest.raises(TypeError, match="expected a number"):
        format_number("7")
    assert format_seconds(0.4712) == "0.471 s"
    assert format_seconds(125.4) == "2 min 05 s"
    assert format_seconds(3725) == "1 h 02 min"
    assert format_value([1, 2.5e-7, "Ag"]) == "1, 2.5 × 10⁻⁷, Ag"
    assert format_value({"a": 0.1234567}) == "a: 0.1235"


def _too_precise(text: str) -> bool:
    """Whether ``text`` holds a decimal number of more than 4 significant digits (integers, counts, are exact)."""
    for token in re.findall(r"\d[\d,]*\.\d+", text):
        digits = token.replace(",", "").replace(".", "").lstrip("0")
        if len(digits) > 4:
            return True
    return False


def test_too_precise():
    assert _too_precise("0.0002842200919985771") and _too_precise("638489.4953203215") and _too_precise("379.9076")
    assert not _too_precise("-0.4732 keV, 2.842 × 10⁻⁴, 949,769 counts, 12,346, 0.06779")


def test_no_raw_float_in_a_report(tmp_path, store):
    """Every table cell of a report of real results: no float printed with more than 4 significant digits."""
    m = xsi_dask.open_montage(store)
    res = tmp_path / "r.zarr"
    write_results(res, {"svd": xsi_dask.decompose(m, 3), "nmf": xsi_dask.nmf(m, 2, max_iter=5, tol=0)})
    report = build.make_report(res, tmp_path / "rep", max_per_page=8)
    page = _parse(report)
    bad = {k: v for k, v in page.rows.items() if _too_precise(v.replace(str(res), "").replace(str(store.path), ""))}
    assert not bad, bad
    # the metadata and calibration of the store are shown
    assert page.rows["beam energy"] == "200 kV"
    assert page.rows["detector resolution (Mn Ka)"].endswith(" eV")
    assert page.rows["energy scale"] == "10 eV/channel"
    assert page.rows["montage"] == "4 tiles on a 2 x 2 grid, 6 x 6 pixels each"
    assert page.rows["counts per pixel (mean, all channels)"] == format_number(store.attrs["total_counts"] / 144)
    assert page.rows["converged"].startswith("no test (tol = 0")


# ---- images relative to the report ----

def test_image_src_is_relative_to_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert image_src("out/run/figures/a b.png", "out/run/report.html") == "figures/a%20b.png"
    assert image_src(tmp_path / "x" / "f.png", "y/report.html") == "../x/f.png"


def test_write_report_escapes_html(tmp_path):
    from xsi_dask.plotting.report import is_our_report, write_report

    fig = tmp_path / "figures" / "it's <a>.png"
    fig.parent.mkdir()
    fig.write_bytes(b"")
    out = write_report(tmp_path / "report.html", title="<script>x</script> & co",
                       sections=[("A <b>", {"k<": "v & <i>", "n": 0.0002842200919985771}, [fig], ["note <u>"])])
    text = out.read_text()
    assert "<script>" not in text and "<b>" not in text and "<i>" not in text and "<u>" not in text
    page = _parse(out)
    assert page.headings == ["A <b>"] and page.rows == {"k<": "v & <i>", "n": "2.842 × 10⁻⁴"} and page.notes == ["note <u>"]
    assert page.images == ["figures/it%27s%20%3Ca%3E.png"] and _assert_images_resolve(out) == [fig]
    assert is_our_report(out) and not out.with_name(".report.html.tmp").exists()


def test_run_with_a_relative_out(tmp_path, monkeypatch, store, captured):
    """`xsi-dask run --out rel/run` from another folder: every image resolves relative to the report;
    10 SVD components: all 10 are drawn, on two pages of loadings and two of score maps."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["run", str(store.path), "--out", "rel/run", "--components", "10", "--nmf-components", "2", "--max-iter", "12",
            "--quiet"]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        assert main([*args, "--scheduler", cluster.scheduler_address]) == 0  # in-process: no worker processes to start
    report = work / "rel" / "run" / "report.html"
    files = _assert_images_resolve(report)
    monkeypatch.chdir(tmp_path)  # opened from elsewhere, the relative src still resolve against the report
    assert {f.name for f in files} == {f.name for f in _assert_images_resolve(report)}
    names = {f.name for f in files}
    assert names == {"scree.png", "loadings.png", "loadings_page2.png", "scores.png", "scores_page2.png", "nmf_spectra.png",
                     "nmf_abundances.png", "nmf_rgb.png", "nmf_loss.png", "qc.png"}  # the tile QC: on by default
    assert _index(_map_titles(captured, "scores")) == list(range(10))
    assert _index(_spectrum_names(captured, "loadings")) == list(range(10))
    assert _index(_map_titles(captured, "nmf_abundances")) == [0, 1]
    page = _parse(report)
    assert page.headings[0] == "Run" and page.rows["time: SVD"].endswith(" s")
    assert page.rows["components kept"] == "10" and page.rows["endmembers"].split()[0] == "2"
    # every figure file of the folder is in the report (no page left out, no stale file)
    assert names == {p.name for p in (work / "rel" / "run" / "figures").iterdir()}


def test_fewer_components_remove_the_pages_of_a_longer_set(tmp_path, store):
    m = xsi_dask.open_montage(store)
    res = tmp_path / "r.zarr"
    write_results(res, {"svd": xsi_dask.decompose(m, 5)})
    build.make_report(res, max_per_page=2)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "loadings.png", "loadings_page2.png", "loadings_page3.png", "scores.png", "scores_page2.png", "scores_page3.png",
        "scree.png"]
    build.make_report(res, max_per_page=4)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "loadings.png", "loadings_page2.png", "scores.png", "scores_page2.png", "scree.png"]
    _assert_images_resolve(tmp_path / "report.html")


# ---- loss against the iteration; convergence ----

def _nmf_ds(iterations, loss, **attrs):
    e = np.linspace(0, 10, 200)
    sp = np.stack([np.exp(-0.5 * ((e - c) / 0.06) ** 2) + 1e-3 for c in (1.49, 6.40)])
    rows, cols = np.divmod(np.arange(4), 2)
    return xr.Dataset(
        {"spectra": (("component", "energy"), sp / sp.sum(1, keepdims=True)),
         "abundances": (("tile", "y", "x", "component"), np.random.default_rng(0).gamma(2, 5, (4, 5, 6, 2))),
         "loss": ("iteration", np.asarray(loss, dtype=float))},
        coords={"component": [0, 1], "iteration": np.asarray(iterations), "energy": e, "tile": np.arange(4),
                "row": ("tile", rows), "col": ("tile", cols), "y": np.arange(5), "x": np.arange(6)},
        attrs={"method": "NMF", "loss_function": "KL", **attrs},
    )


def test_loss_is_drawn_against_the_iteration_numbers():
    it = [0, 10, 20, 30, 40, 50, 51]
    ds = _nmf_ds(it, [9, 5, 4, 3.5, 3.4, 3.39, 3.389], n_iter=51, max_iter=200, tol=1e-4)
    fig = figures.draw_loss(ds)
    (line,) = fig.axes[0].lines
    np.testing.assert_array_equal(line.get_xdata(), it)
    np.testing.assert_array_equal(line.get_ydata(), [9, 5, 4, 3.5, 3.4, 3.39, 3.389])
    assert "converged after 51 iterations" in fig.axes[0].get_title()


def test_convergence_recorded_or_inferred():
    it, loss = [0, 10, 20], [3.0, 2.0, 1.0]
    assert figures.nmf_converged(_nmf_ds(it, loss, converged=True, n_iter=20, max_iter=20, tol=1e-4)) == (True, "recorded")
    assert figures.nmf_converged(_nmf_ds(it, loss, converged=False, n_iter=5, max_iter=20, tol=1e-4))[0] is False
    assert figures.nmf_converged(_nmf_ds(it, loss, n_iter=20, max_iter=20, tol=1e-4))[0] is False
    assert figures.nmf_converged(_nmf_ds(it, loss, n_iter=12, max_iter=20, tol=1e-4))[0] is True
    assert figures.nmf_converged(_nmf_ds(it, loss, n_iter=20, max_iter=20, tol=0.0))[0] is None
    assert figures.nmf_converged(_nmf_ds(it, loss, converged=False, n_iter=20, max_iter=20, tol=0.0))[0] is None
    assert figures.nmf_converged(_nmf_ds(it, loss))[0] is None
    title = figures.draw_loss(_nmf_ds(it, loss, converged=False, n_iter=20, max_iter=20, tol=1e-4)).axes[0].get_title()
    assert "NOT converged" in title and "max_iter = 20" in title


def test_report_warns_when_the_nmf_did_not_converge(tmp_path):
    res = tmp_path / "r.zarr"
    write_results(res, {"nmf": _nmf_ds([0, 10, 20], [3.0, 2.0, 1.9], converged=False, n_iter=20, max_iter=20, tol=1e-4)})
    page = _parse(build.make_report(res))
    assert page.rows["converged"] == "no"
    assert page.rows["final loss"] == "1.9 (after iteration 20)"
    assert any("did not converge" in n for n in page.notes)
    assert page.headings[-1] == "NMF" and "Poisson-scaled SVD" not in page.headings
    _assert_images_resolve(tmp_path / "report.html")


# ---- scree ----

def test_roundoff_rank():
    ev = np.array([10.0, 1.0, 1e-3, 1e-14, 1e-17, 0.0])
    assert figures.roundoff_rank(ev) == 3  # 6 * eps * 10 = 1.3e-14 > 1e-14
    assert figures.roundoff_rank(ev, rank=2) == 2
    assert figures.roundoff_rank(np.zeros(4)) == 0


def test_scree_cut_at_roundoff_on_a_rank_deficient_gram(store):
    """72 pixels, 256 channels: the scaled gram has rank <= 72; the scree draws none of the round-off eigenvalues."""
    svd = xsi_dask.decompose(xsi_dask.open_montage(store), 5, solver="gram")
    ev = svd["eigenvalues"].values
    rank = np.linalg.matrix_rank(np.diag(ev))  # numpy's tolerance: M * eps * max, the same criterion
    assert rank <= 144 < ev.size  # at most one eigenvalue per pixel (2 x 2 tiles of 6 x 6)
    assert ev[rank:].max() < ev.size * np.finfo(float).eps * ev.max() < ev[rank - 1]
    v = figures.scree_values(svd)
    assert v["eigen"].size == rank and v["n_roundoff"] == ev.size - rank
    fig = figures.draw_scree(svd)
    drawn = fig.axes[0].lines[0].get_ydata()
    assert drawn.size == rank and drawn.min() > 1e-14
    np.testing.assert_allclose(drawn, ev[:rank] / svd.attrs["total_scaled_variance"])
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == (
        f"gram eigenvalues ({rank} above round-off; {ev.size - rank} below not shown)")


def test_scree_draws_noise_band_and_n_significant(store):
    svd = xsi_dask.decompose(xsi_dask.open_montage(store), 5, solver="gram")
    total = svd.attrs["total_scaled_variance"]
    edge = float(svd["eigenvalues"].values[3])
    svd.attrs.update(noise_edge=edge, n_significant=3, eigenvalues_roundoff_rank=50)
    fig = figures.draw_scree(svd)
    ax = fig.axes[0]
    assert ax.lines[0].get_ydata().size == 50  # the solver's recorded round-off rank wins
    hlines = [ln for ln in ax.lines if np.ptp(ln.get_ydata()) == 0 and len(ln.get_ydata()) == 2]
    assert any(np.isclose(ln.get_ydata()[0], edge / total) for ln in hlines)
    vlines = [ln for ln in ax.lines if np.ptp(ln.get_xdata()) == 0 and len(ln.get_xdata()) == 2]
    assert [ln.get_xdata()[0] for ln in vlines] == [2.5]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "n_significant = 3" in texts and any(t.startswith("noise band") for t in texts)


# ---- xsi-dask report ----

def test_report_command_after_decompose_and_nmf(tmp_path, monkeypatch, store, captured):
    monkeypatch.chdir(tmp_path)
    # one in-process cluster for both commands (each would start its own LocalCluster of worker processes)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        sched = ["--scheduler", cluster.scheduler_address, "--quiet"]
        assert main(["decompose", str(store.path), "--out", "res.zarr", "--components", "2", *sched]) == 0
        assert main(["nmf", str(store.path), "--out", "res.zarr", "--components", "3", "--max-iter", "5", *sched]) == 0
    captured.clear()
    assert main(["report", "res.zarr", "--elements", "cr,Fe", "--per-page", "2"]) == 0  # default: beside res.zarr
    report = tmp_path / "report.html"
    names = {f.name for f in _assert_images_resolve(report)}
    assert names == {"scree.png", "loadings.png", "scores.png", "nmf_spectra.png", "nmf_spectra_page2.png", "nmf_abundances.png",
                     "nmf_abundances_page2.png", "nmf_rgb.png", "nmf_loss.png"}
    assert _index(_map_titles(captured, "nmf_abundances")) == [0, 1, 2]
    assert _index(_spectrum_names(captured, "nmf_spectra")) == [0, 1, 2]
    page = _parse(report)
    assert page.headings == ["Results", "Acquisition", "Calibration", "Data analysed", "Poisson-scaled SVD", "NMF"]
    assert page.rows["elements used for line labels"] == "Cr, Fe (given to the report)"
    nmf = xr.open_zarr(tmp_path / "res.zarr", group="nmf")
    assert page.rows["iterations run"] == f"{nmf.attrs['n_iter']} of max_iter 5"
    # the loss figure of the command is drawn against the stored iteration numbers
    np.testing.assert_array_equal(captured["nmf_loss.png"].axes[0].lines[0].get_xdata(), nmf["iteration"].values)


def test_report_refusals(tmp_path, store, capsys):
    with pytest.raises(InputFileNotFoundError, match="no such results store"):
        build.make_report(tmp_path / "missing.zarr")
    with pytest.raises(StoreFormatError, match="montage store, not an xsi_dask results store"):
        build.make_report(store.path, tmp_path / "x")
    res = tmp_path / "r.zarr"
    write_results(res, {"nmf": _nmf_ds([0, 5], [2.0, 1.0], n_iter=5, max_iter=5, tol=0.0)})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.html").write_text("<html>my notes</html>")
    with pytest.raises(NotOurOutputError, match="is not an xsi_dask report"):
        build.make_report(res, tmp_path / "mine")
    assert (tmp_path / "mine" / "report.html").read_text() == "<html>my notes</html>"
    assert not (tmp_path / "mine" / "figures").exists()
    with pytest.raises(ParameterError, match="'Xx' is not .*element symbol"):
        build.make_report(res, tmp_path / "o", elements="Fe,Xx")
    with pytest.raises(ParameterError, match="max_per_page"):
        build.make_report(res, tmp_path / "o", max_per_page=0)
    assert not (tmp_path / "o").exists()  # refused before anything is written
    assert main(["report", str(tmp_path / "missing.zarr")]) == 2
    assert capsys.readouterr().err.startswith("xsi-dask report: error: ")
    # a report of ours is replaced
    build.make_report(res, tmp_path / "o")
    build.make_report(res, tmp_path / "o")


def test_a_full_disk_is_the_package_error(tmp_path, monkeypatch):
    import xsi_dask.plotting.report as report_mod

    res = tmp_path / "r.zarr"
    write_results(res, {"nmf": _nmf_ds([0, 5], [2.0, 1.0], n_iter=5, max_iter=5, tol=0.0)})

    def full(path, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(report_mod, "write_report", full)
    out = tmp_path / "o"
    with pytest.raises(OutputWriteError, match=re.escape(f"{out}: cannot be written: the disk is full ({out / 'report.html'})")):
        build.make_report(res, out)


def test_acquisition_rows_across_files():
    class Store:
        attrs = {"energy": {"size": 2048, "offset": -0.47, "scale": 0.01}, "pixels": {"scale_y": 1.0, "scale_x": 1.0},
                 "sources": [
            {"signal_type": "EDS_SEM", "metadata": {"Acquisition_instrument": {"SEM": {
                "beam_energy": 20.0, "Detector": {"EDS": {"live_time": 9.87654321, "real_time": 19.2}}}},
                "Sample": {"elements": ["Ag", "Al"]}}},
            {"signal_type": "EDS_SEM", "metadata": {"Acquisition_instrument": {"SEM": {
                "beam_energy": 20.0, "Detector": {"EDS": {"live_time": 12.0}}}}, "Sample": {"elements": ["Al", "Cu"]}}},
        ]}

    rows = build.acquisition_rows(Store())
    assert rows["beam energy"] == "20 kV (all 2 files)"
    assert rows["live time"] == "9.877 s (1 file); 12 s (1 file)"
    assert rows["real time"] == "19.2 s (1 of 2 files)"
    assert rows["signal type"] == "EDS_SEM (all 2 files)"
    assert build.source_elements(Store()) == ["Ag", "Al", "Cu"]
    assert build.parse_elements(" ag, Cu ,") == ["Ag", "Cu"]
    with pytest.raises(ParameterError, match="'iron' is not a chemical element symbol"):
        build.parse_elements(["iron"])


def test_report_shows_what_the_results_record(tmp_path, store):
    """The view (energy range, zero peak, bin), the elements, n_significant with its noise edge and the NMF's
    recorded convergence and number of endmembers, as the analysis records them in the results' attributes."""
    m = xsi_dask.open_montage(store)
    svd = xsi_dask.decompose(m, 4, solver="gram")
    ev = svd["eigenvalues"].values
    view = {"energy_range": [0.2, 2.5], "zero_peak_cutoff": 0.1862, "bin": 2, "elements": ["Al", "O"],
            "counts_per_pixel": 812.54321}
    svd.attrs.update(n_significant=2, noise_edge=float(ev[2]), n_significant_is_lower_bound=False, **view)
    nmf = _nmf_ds([0, 10, 14], [3.0, 2.0, 1.99], converged=True, n_iter=14, max_iter=200, tol=1e-4,
                  n_components_source="n_significant", **view)
    nmf.attrs["store"] = str(store.path)
    res = tmp_path / "r.zarr"
    write_results(res, {"svd": svd, "nmf": nmf})
    page = _parse(build.make_report(res))
    r = page.rows
    assert r["energy range (recorded)"] == "0.2 keV to 2.5 keV"
    assert r["zero peak"] == "excluded below 0.1862 keV"
    assert r["binning"] == "2 x 2 pixels summed"
    cpp = store.attrs["total_counts"] / 144
    assert r["counts per 2 x 2 binned pixel (mean, all channels)"] == format_number(4 * cpp)
    assert r["counts per 2 x 2 binned pixel (mean, channels analysed)"] == "812.5"
    assert r["elements used for line labels"] == "Al, O (recorded in the results: --elements of the analysis)"
    assert r["n_significant (components above the noise)"].startswith("2 (")
    total = svd.attrs["total_scaled_variance"]
    assert r["noise edge"] == (f"{format_number(float(ev[2]))} (eigenvalue of the scaled gram); "
                               f"{format_number(float(ev[2]) / total)} as a variance ratio")
    assert r["converged"] == "yes" and r["iterations run"] == "14 of max_iter 200"
    assert r["endmembers"] == "2 (from the data: the SVD's n_significant)"
    assert not page.notes
