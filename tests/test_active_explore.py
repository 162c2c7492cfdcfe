"""`xsi-dask explore`: the automated experiment on pre-acquired data, its record, figures and report (issue #12 item 6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import xsi_dask
from xsi_dask.cli.main import main
from xsi_dask.errors import NoSpectrumImageError, NotOurOutputError, ParameterError, StoreExistsError
from xsi_dask.io.results import write_results
from xsi_dask.testing.simulate import simulate

pytest.importorskip("gpytorch")

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
HAADF = DATA / "eels" / "CuZn_HAADF.hspy"
EELS = DATA / "eels" / "CuZn_EELS_mapping_tutorial.hspy"
VELOX = DATA / "eds" / "velox_EELS_EDS_128x128.emd"
CUZN_SPEC = "ratio:1020-1100/924-1004:bg=820-916:units=eV"  # as tests/test_active_loop.py: Zn L3 over Cu L3,2
needs_eels = pytest.mark.skipif(not EELS.is_file(), reason=f"real EELS data not found at {EELS.parent}")
needs_velox = pytest.mark.skipif(not VELOX.is_file(), reason=f"real EDS data not found at {VELOX.parent}")


def _cuzn_args(out, *extra):
    return ["explore", str(HAADF), str(EELS), "--structure", "Gatan HAADF", "--scalarizer", CUZN_SPEC,
            "--acquisition", "ei", "--out", str(out), "--quiet", *extra]


def _visited_truth(run, truth):
    return truth[run["visited_y"].values, run["visited_x"].values]


@pytest.fixture(scope="module")
def cuzn(tmp_path_factory):
    out = tmp_path_factory.mktemp("explore") / "cuzn"
    assert main(_cuzn_args(out, "--budget", "30", "--steps", "10")) == 0
    return out


@needs_eels
def test_cuzn_explore_writes_the_record_figures_and_report(cuzn):
    from rsciio.hspy import file_reader

    from xsi_dask.active.explore import open_explore
    from xsi_dask.active.scalarizers import parse_scalarizer
    from xsi_dask.plotting.report import is_our_report

    assert {p.name for p in (cuzn / "figures").iterdir()} == {"visits.png", "final_maps.png", "discovery.png"}
    assert is_our_report(cuzn / "report.html")
    html = (cuzn / "report.html").read_text()
    for text in ("top-1 % recall", "RMSE (unmeasured)", "95 % predictive interval coverage", "Per-step timing", "figures/discovery.png",
                 "figures/visits.png", CUZN_SPEC):
        assert text in html
    truth, runs, params = open_explore(cuzn / "explore.zarr")
    n_at = int(truth["top"].values.sum())
    assert truth.attrs["n_at_or_above"] == n_at >= 20
    expected = min(30 * n_at / 2000, 20) / 20  # random sampling's expected recall at the budget of 30
    assert f"{n_at} pixels at or above it" in html and "random sampling, expected" in html
    from xsi_dask.plotting.active import random_expected_recall
    from xsi_dask.plotting.formatting import format_number

    assert random_expected_recall(30, 2000, n_at, 20) == pytest.approx(expected) and f"recall {format_number(expected)} at the budget" in html
    assert params["methods"] == ["dkl", "random"] and params["seeds"] == [0]
    assert params["n_init"] == 10 and not params["n_init_given"]  # 0.5 % of the 2,000 pixels
    assert params["image"] == "Gatan HAADF" and "(50, 40, 162)" in params["spectra"] and params["energy_units"] == "eV"

    # the true map is the scalarizer applied by hand to the EELS SI read with RosettaSciIO
    eels = file_reader(str(EELS))[0]
    ax = eels["axes"][-1]
    energy = ax["offset"] + ax["scale"] * np.arange(eels["data"].shape[-1])
    hand = parse_scalarizer(CUZN_SPEC, energy=energy, units="eV")(np.asarray(eels["data"], dtype=np.float64))
    np.testing.assert_allclose(truth["true_value"].values, hand, rtol=1e-12)
    np.testing.assert_array_equal(truth["image"].values, np.asarray(file_reader(str(HAADF))[0]["data"], dtype=float))

    dkl, rnd = runs["dkl"][0], runs["random"][0]
    true = truth["true_value"].values
    for run in (dkl, rnd):
        assert run.sizes["step"] == 30 and int(run["initial"].sum()) == 10
        visited = set(zip(run["visited_y"].values.tolist(), run["visited_x"].values.tolist(), strict=True))
        assert len(visited) == 30
        # the values the experiment measured are the true map at the pixels it visited
        np.testing.assert_allclose(run["value"].values, _visited_truth(run, true), rtol=1e-9)  # one spectrum vs the batch: the power-law fit rounds differently
        np.testing.assert_array_equal(run["best_true"].values, np.maximum.accumulate(_visited_truth(run, true)))
        top = true >= truth.attrs["top_threshold"]
        assert truth.attrs["n_top"] == int(top.sum()) == 20
        np.testing.assert_allclose(run["recall"].values, np.minimum(np.cumsum(top[run["visited_y"], run["visited_x"]]), 20) / 20)
    # the baseline starts from the model run's random pixels
    np.testing.assert_array_equal(rnd["visited_y"].values[:10], dkl["visited_y"].values[:10])
    np.testing.assert_array_equal(rnd["visited_x"].values[:10], dkl["visited_x"].values[:10])
    # final scores: over the unmeasured pixels
    rest = dkl["order"].values < 0
    err = dkl["prediction"].values[rest] - true[rest]
    assert dkl.attrs["final_rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
    std = dkl["uncertainty"].values[rest]
    assert dkl.attrs["final_coverage_latent"] == pytest.approx(np.mean(np.abs(err) <= 1.96 * std))
    assert 0 < dkl.attrs["noise_variance"] < np.var(dkl["value"].values)
    assert dkl.attrs["final_coverage"] == pytest.approx(np.mean(np.abs(err) <= 1.96 * np.sqrt(std**2 + dkl.attrs["noise_variance"])))
    assert np.isnan(rnd.attrs["final_rmse"])


@needs_eels
def test_an_existing_output_is_refused_unless_ours_with_overwrite(cuzn, tmp_path, capsys):
    stamp = (cuzn / "explore.zarr" / "zarr.json").stat().st_mtime_ns
    assert main(_cuzn_args(cuzn, "--budget", "30")) == 2
    assert "exists" in capsys.readouterr().err
    assert (cuzn / "explore.zarr" / "zarr.json").stat().st_mtime_ns == stamp  # untouched

    from xsi_dask.pipeline import explore_run

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "report.html").write_text("<html>mine</html>")
    with pytest.raises(NotOurOutputError, match="is not an xsi_dask report"):
        explore_run([HAADF, EELS], foreign, structure="Gatan HAADF", scalarizer=CUZN_SPEC, acquisition="ei", budget=30)
    (foreign / "report.html").unlink()
    (foreign / "explore.zarr").mkdir()
    (foreign / "explore.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(NotOurOutputError, match="not an xsi_dask explore record"):
        explore_run([HAADF, EELS], foreign, structure="Gatan HAADF", scalarizer=CUZN_SPEC, acquisition="ei", budget=30,
                    overwrite=True)
    assert (foreign / "explore.zarr" / "notes.txt").read_text() == "mine"
    with pytest.raises(StoreExistsError):
        explore_run([HAADF, EELS], cuzn, structure="Gatan HAADF", scalarizer=CUZN_SPEC, acquisition="ei", budget=30)


@needs_eels
@pytest.mark.parametrize("args, error, match", [
    (["--structure", "ADF"], ParameterError, r"no 2-D image of that name; the images are: 'Gatan HAADF' \(50, 40\)"),
    (["--budget", "2001"], ParameterError, r"budget \(2001\) exceeds the 2000 candidate pixels"),
    (["--n-init", "30"], ParameterError, r"n_init \(30\) must be below the budget \(30\)"),
    (["--window", "4"], ParameterError, "window must be odd"),
    (["--scalarizer", "band:10-20"], ParameterError, "band"),  # outside the 700-1988 eV axis
    (["--features", "results.zarr"], ParameterError, "give the montage store as the input"),
    (["--structure", None, "--window", "3"], ParameterError, r"a window \(3\) applies to the patches of --structure"),
])
def test_bad_requests_are_refused_before_any_run(tmp_path, args, error, match):
    from xsi_dask.active.explore import explore

    kw = dict(structure="Gatan HAADF", scalarizer=CUZN_SPEC, acquisition="ei", budget=30)
    flags = {"--structure": "structure", "--budget": "budget", "--n-init": "n_init", "--window": "window",
             "--scalarizer": "scalarizer", "--features": "features"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        kw[flags[flag]] = int(value) if value is not None and value.isdigit() else value
    if kw["structure"] is None:
        kw["features"] = "results.zarr"
    with pytest.raises(error, match=match):
        explore([HAADF, EELS], out=tmp_path / "explore.zarr", **kw)
    assert not (tmp_path / "explore.zarr").exists()


@needs_eels
def test_the_cli_refuses_with_exit_status_2_and_the_reason(tmp_path, capsys):
    assert main(_cuzn_args(tmp_path / "a", "--budget", "30", "--structure", "nothing")) == 2
    err = capsys.readouterr().err
    assert err.startswith("xsi-dask explore: error: --structure 'nothing'") and "'Gatan HAADF'" in err
    assert not (tmp_path / "a" / "explore.zarr").exists()
    # the structural image alone: no spectrum image on its grid
    assert main(["explore", str(HAADF), "--structure", "Gatan HAADF", "--scalarizer", "band:0.5-1", "--acquisition", "ei",
                 "--budget", "30", "--out", str(tmp_path / "b")]) == 2
    assert "no 3-D spectrum image (y, x, channels) on the 50 x 40 grid" in capsys.readouterr().err
    assert main(["explore", str(HAADF), str(EELS), "--scalarizer", CUZN_SPEC, "--acquisition", "ei", "--budget", "30",
                 "--out", str(tmp_path / "c")]) == 2
    assert "give the structural image (--structure NAME) or a results store (--features RESULTS.zarr)" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # refused before any folder is made


@needs_eels
@needs_velox
def test_a_spectrum_image_of_another_grid_is_refused_naming_the_shapes(tmp_path):
    from xsi_dask.active.explore import load_inputs

    with pytest.raises(NoSpectrumImageError, match=r"50 x 40 grid .*\(128, 128, 4096\)"):
        load_inputs([HAADF, VELOX], structure="Gatan HAADF")
    # the file's stem names its only image (the title is 'Gatan HAADF'), case-insensitively
    inputs = load_inputs([HAADF, EELS], structure="cuzn_haadf")
    assert inputs.image_name == "Gatan HAADF" and inputs.features.shape == (50, 40) and inputs.units == "eV"
    # three EELS SIs lie on the 16 x 20 grid of the DF-S image: which one to measure is ambiguous
    with pytest.raises(ParameterError, match=r"3 spectrum images lie on the 16 x 20 grid"):
        load_inputs([VELOX], structure="DF-S")


@needs_velox
@pytest.mark.slow  # ~15 s: each prediction covers the 16,384 pixels
def test_the_velox_file_gives_its_haadf_and_eds_spectrum_image(tmp_path):
    """One Velox file: the 128 x 128 image ('a', the HAADF) and the EDS SI (keV) on its grid.

    The EDS SI of this test file holds 11,093 counts, all but 2 of them in the
    detector's zero (strobe) peak within 0.1 keV of 0 (no element line has
    counts), so the scalar is that peak's integral (-0.1 to 0.1 keV); an
    element band would be zero at every pixel.
    """
    from rsciio.emd import file_reader

    from xsi_dask.active.explore import open_explore

    out = tmp_path / "velox"
    assert main(["explore", str(VELOX), "--structure", "a", "--scalarizer", "integral:-0.1-0.1", "--acquisition", "ucb",
                 "--n-init", "5", "--budget", "8", "--steps", "5", "--out", str(out), "--quiet"]) == 0
    truth, runs, params = open_explore(out / "explore.zarr")
    assert params["n_init"] == 5 and params["n_init_given"] and params["energy_units"] == "keV" and "(128, 128, 4096)" in params["spectra"]
    (si,) = [s for s in file_reader(str(VELOX)) if s["data"].ndim == 3 and s["data"].shape[:2] == (128, 128)]
    ax = si["axes"][-1]
    assert ax["units"] == "keV"
    energy = ax["offset"] + ax["scale"] * np.arange(si["data"].shape[-1])
    band = (energy >= -0.1 - 1e-9) & (energy <= 0.1 + 1e-9)
    hand = np.asarray(si["data"], dtype=np.float64)[..., band].sum(-1)
    np.testing.assert_allclose(truth["true_value"].values, hand)
    assert hand.sum() > 10_000 and (hand > 0).mean() < 0.05  # sparse: 2 % of the pixels hold counts
    run = runs["dkl"][0]
    np.testing.assert_allclose(run["value"].values, _visited_truth(run, hand))
    assert (out / "figures" / "visits.png").is_file() and (out / "report.html").is_file()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore_sim")
    st = simulate(root / "sim.zarr", tiles="1x2", tile_shape="16x16", channels=1024, counts_per_pixel=50, progress=False)
    m = xsi_dask.open_montage(st)
    write_results(root / "results.zarr", {"nmf": xsi_dask.nmf(m, 2, max_iter=20)})
    return st, root / "results.zarr"


def test_a_simulated_store_with_patches_and_nmf_features(sim, tmp_path):
    from xsi_dask.active.explore import open_explore
    from xsi_dask.active.measure import MontageMeasure
    from xsi_dask.active.scalarizers import band_mean
    from xsi_dask.plotting.lines import element_lines

    st, results = sim
    ka = [e for e, name, _ in element_lines("Cr") if name == "Cr Ka"][0]  # 5.41 keV: Cr of the grade 91 replica
    lo, hi = round(ka - 0.1, 2), round(ka + 0.1, 2)
    spec = f"band:{lo}-{hi}"
    out = tmp_path / "sim"
    assert main(["explore", str(st.path), "--structure", "HAADF", "--features", str(results), "--window", "3",
                 "--scalarizer", spec, "--acquisition", "max-std", "--budget", "10", "--steps", "5", "--out", str(out),
                 "--quiet"]) == 0
    truth, runs, params = open_explore(out / "explore.zarr")
    assert params["feature_columns"] == 9 + 2 and params["feature_group"] is None and params["shape"] == [16, 32]
    true = truth["true_value"].values
    measure = MontageMeasure(st)
    rng = np.random.default_rng(0)
    for y, x in zip(rng.integers(0, 16, 8), rng.integers(0, 32, 8), strict=True):
        s = measure(int(y), int(x))
        hand = band_mean(np.asarray(s, dtype=float)[None], energy=s["energy"].values, band=(lo, hi),
                         units="keV", band_units="keV")[0]
        assert true[y, x] == pytest.approx(hand, rel=1e-12)
    run = runs["dkl"][0]
    np.testing.assert_allclose(run["value"].values, _visited_truth(run, true), rtol=1e-9)  # one spectrum vs the batch: the power-law fit rounds differently
    assert np.isfinite(run["prediction"].values).all()

    from xsi_dask.active.explore import load_inputs
    from xsi_dask.errors import InputFileNotFoundError, StoreFormatError

    with pytest.raises(InputFileNotFoundError, match=r"none\.zarr: no such results store"):
        load_inputs([st.path], structure="HAADF", features=tmp_path / "none.zarr")
    with pytest.raises(StoreFormatError, match="montage store, not an xsi_dask results store"):  # the checks of make_report
        load_inputs([st.path], structure="HAADF", features=st.path)
    with pytest.raises(ParameterError, match=r"no svd group \(it has nmf\)"):
        load_inputs([st.path], structure="HAADF", features=results, feature_group="svd")
    from xsi_dask.io.results import open_results

    other = open_results(results, "nmf").load()
    other.attrs["store_uuid"] = "0" * 32  # the results of another store of the same shape
    write_results(tmp_path / "other.zarr", {"nmf": other})
    with pytest.raises(ParameterError, match=rf"other\.zarr: its nmf results were computed from the montage store of uuid "
                                             rf"{'0' * 32} .*not from the input {st.path} \(uuid {st.uuid}\)"):
        load_inputs([st.path], structure="HAADF", features=tmp_path / "other.zarr")
    with pytest.raises(ParameterError, match="no tile image of that name; its images: HAADF"):
        load_inputs([st.path], structure="SEM")
    with pytest.raises(ParameterError, match="one montage store alone"):
        load_inputs([st.path, st.path])


def test_discovery_counts_ties_at_the_top_up_to_n_top_and_scores_the_unmeasured_pixels():
    import xarray as xr

    from xsi_dask.active.explore import default_n_init, discovery, scores

    truth = np.zeros((10, 20))
    truth[0, :3] = 5.0  # 200 pixels: n_top = 2, three tie at the top
    truth[5, 5] = 1.0
    run = xr.Dataset({"visited_y": ("step", [5, 0, 9, 0, 0]), "visited_x": ("step", [5, 1, 9, 2, 0])})
    recall, best = discovery(run, truth)
    np.testing.assert_allclose(recall, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(best, [1, 5, 5, 5, 5])
    order = np.full(truth.shape, -1)
    order[run["visited_y"].values, run["visited_x"].values] = np.arange(5)
    pred = truth + 0.5
    std = np.full(truth.shape, 0.3)  # |error| 0.5 within 1.96 * 0.3
    std[1] = 0.1  # a row of 20 unmeasured pixels outside
    run = run.assign(prediction=(("y", "x"), pred), uncertainty=(("y", "x"), std), order=(("y", "x"), order))
    s = scores(run, truth)
    assert s["recall"] == 1 and s["best"] == 5 and s["rmse"] == pytest.approx(0.5)
    assert s["coverage_latent"] == pytest.approx(1 - 20 / 195) and np.isnan(s["coverage"])  # no noise variance given
    run.attrs["noise_variance"] = 0.3**2 - 0.1**2 + 1e-9  # the 20 pixels' interval widens to 1.96 * 0.3 + ...
    assert scores(run, truth)["coverage"] == pytest.approx(1.0)
    assert [default_n_init(n) for n in (100, 1000, 2000, 16384)] == [5, 5, 10, 82]


def test_pixels_off_the_candidates_never_count_in_the_recall():
    """A montage with a hole: the true map off the candidates is NaN before the top 1 % is taken, so a large value
    there (unmeasurable) neither takes a place in the top nor lowers the recall."""
    import xarray as xr

    from xsi_dask.active.explore import _on_candidates, _top_mask, discovery
    from xsi_dask.active.features import Features

    truth = np.zeros((10, 20))
    truth[:, 10:] = 100.0  # the right half is a hole in the montage (no tile): not candidates
    truth[2, 3] = 7.0
    yy, xx = np.mgrid[0:10, 0:10]
    feats = Features(values=np.zeros((100, 1)), yx=np.stack([yy.ravel(), xx.ravel()], 1), shape=(10, 20), names=("f",))
    on = _on_candidates(truth, feats)
    assert np.isnan(on[:, 10:]).all() and np.isfinite(on[:, :10]).all()
    top, threshold = _top_mask(on)  # 100 candidates: n_top = 1, the 7
    assert threshold == 7.0 and top.sum() == 1 and top[2, 3]
    run = xr.Dataset({"visited_y": ("step", [0, 2]), "visited_x": ("step", [0, 3])})
    recall, best = discovery(run, on)
    np.testing.assert_allclose(recall, [0, 1])
    np.testing.assert_allclose(best, [0, 7])
    recall, _ = discovery(run, truth)  # the hole counted: 2 top pixels, both unmeasurable
    assert recall[-1] == 0


PTS = DATA / "eds" / "jeol_View000_0000006.pts"


@pytest.mark.skipif(not PTS.is_file(), reason=f"real EDS data not found at {PTS.parent}")
@pytest.mark.parametrize("isolate", [True, False])
def test_read_signals_refuses_what_read_spectrum_image_refuses(tmp_path, isolate):
    """A JEOL .pts cut after a third of its events, its header's data length patched to match: the pre-read check
    passes, the frames the header declares are missing (the post-read check); both readers refuse it alike."""
    from xsi_dask.errors import CorruptFileError
    from xsi_dask.io.readers import read_signals, read_spectrum_image

    raw = bytearray(PTS.read_bytes())
    data_pos, data_len = (int(v) for v in np.frombuffer(bytes(raw[:36]), "<u4", 2, 28))
    cut = raw[: data_pos + data_len // 3]
    cut[32:36] = np.uint32(data_len // 3).tobytes()
    bad = tmp_path / "cut.pts"
    bad.write_bytes(bytes(cut))
    with pytest.raises(CorruptFileError, match="10 of the 15 frames") as a:
        read_spectrum_image(bad, isolate=isolate)
    with pytest.raises(CorruptFileError, match="10 of the 15 frames") as b:
        read_signals(bad, isolate=isolate)
    assert str(a.value) == str(b.value) and str(bad) in str(b.value)


@needs_velox
def test_read_signals_decoded_in_the_child_equals_in_process():
    from xsi_dask.io.readers import read_signals

    a, b = read_signals(VELOX, isolate=False), read_signals(VELOX, isolate=True)
    assert [(s.title, s.shape, s.signal_type) for s in a] == [(s.title, s.shape, s.signal_type) for s in b]
    for s, t in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(s.data), np.asarray(t.data))
        assert [{k: v for k, v in ax.items()} for ax in s.axes] == t.axes  # JSON-safe, equal values


@needs_eels
def test_a_spectrum_image_of_another_calibration_is_refused(tmp_path):
    """The CuZn pair (both 0.921 nm pixels) is one grid; the EELS SI written again with 1.0 nm pixels is not."""
    hs = pytest.importorskip("hyperspy.api")

    from xsi_dask.active.explore import load_inputs

    assert load_inputs([HAADF, EELS], structure="Gatan HAADF").features.shape == (50, 40)
    sig = hs.load(EELS)
    sig.axes_manager.navigation_axes[0].scale = 1.0  # x
    other = tmp_path / "other_scale.hspy"
    sig.save(other)
    with pytest.raises(ParameterError, match=r"other_scale\.hspy.*pixel 0\.921386 x 1 nm.*CuZn_HAADF\.hspy.*"
                                             r"pixel 0\.921386 x 0\.921386 nm"):
        load_inputs([HAADF, other], structure="Gatan HAADF")
    sig.axes_manager.navigation_axes[0].scale = sig.axes_manager.navigation_axes[1].scale
    for ax in sig.axes_manager.navigation_axes:  # an origin where the HAADF records none (0): taken as the same
        ax.offset = 5.0
    sig.save(other, overwrite=True)
    assert load_inputs([HAADF, other], structure="Gatan HAADF").features.shape == (50, 40)


@needs_velox
def test_a_constant_true_map_is_refused_before_the_runs(tmp_path):
    """No element line of the Velox test file's EDS SI has counts: a band at 5-6 keV is zero at every pixel."""
    out = tmp_path / "e.zarr"
    with pytest.raises(ParameterError, match=r"every one of the 16384 candidate pixels is at or above .*the map is constant"):
        xsi_dask.active.explore.explore([VELOX], out=out, structure="a", scalarizer="integral:5-6", acquisition="ei",
                                        budget=8, n_init=5, steps=1)
    assert not out.exists()


def test_channel_energies_are_read_strictly(tmp_path):
    from xsi_dask.errors import CorruptFileError
    from xsi_dask.io.readers import Signal, channel_energies

    def sig(**ax):
        return Signal(path=tmp_path / "f.hspy", title="EELS", data=np.zeros((2, 2, 4)), axes=[{}, {}, ax], signal_type="EELS")

    e, u = channel_energies(sig(units="eV", scale=0.5, offset=700.0, size=4))
    np.testing.assert_allclose(e, [700, 700.5, 701, 701.5])
    assert u == "eV"
    e, u = channel_energies(sig(units="KEV", axis=[1.0, 1.1, 1.3, 1.7], size=4))  # non-uniform: its values
    np.testing.assert_allclose(e, [1.0, 1.1, 1.3, 1.7])
    assert u == "keV"
    with pytest.raises(ParameterError, match=r"f\.hspy: the energy axis of 'EELS' is in 'nm', not eV or keV"):
        channel_energies(sig(units="nm", scale=1.0, offset=0.0))
    with pytest.raises(CorruptFileError, match="records no usable scale"):
        channel_energies(sig(units="eV", offset=0.0))
    with pytest.raises(CorruptFileError, match="says 5 channels but the data have 4"):
        channel_energies(sig(units="eV", scale=1.0, offset=0.0, size=5))
    with pytest.raises(CorruptFileError, match="strictly increasing"):
        channel_energies(sig(units="eV", axis=[1.0, 1.0, 2.0, 3.0]))


def test_the_acquisitions_and_the_steps_default_come_from_the_model_modules():
    import inspect

    from xsi_dask.active.acquisition import ACQUISITIONS as ALL
    from xsi_dask.active.explore import ACQUISITIONS
    from xsi_dask.active.model import dkl_factory
    from xsi_dask.cli.main import build_parser

    assert ACQUISITIONS == tuple(a for a in ALL if a != "random")
    explore = build_parser()._subparsers._group_actions[0].choices["explore"]
    actions = {a.dest: a for a in explore._actions}
    assert tuple(actions["acquisition"].choices) == ACQUISITIONS
    assert "the model's" in actions["steps"].help and str(inspect.signature(dkl_factory).parameters["steps"].default) not in actions["steps"].help


def test_figures_are_written_atomically(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from xsi_dask.plotting.figures import save

    fig = Figure()
    fig.add_subplot().plot([0, 1])
    path = save(fig, tmp_path / "a.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in tmp_path.iterdir()] == ["a.png"]
    old = path.read_bytes()

    def fail(self, fname, **kw):  # the disk fills up half-way through the PNG
        Path(fname).write_bytes(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", fail)
    with pytest.raises(OSError, match="No space"):
        save(fig, path)
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["a.png"]  # the old figure, no leftover


@needs_eels
def test_a_full_disk_while_drawing_names_the_cause_and_keeps_the_record(tmp_path, monkeypatch):
    import errno

    import xsi_dask.plotting.active as active_plots
    from xsi_dask.errors import OutputWriteError
    from xsi_dask.pipeline import explore_run

    def full(record, out, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "figures" / "visits.png"))

    monkeypatch.setattr(active_plots, "write_explore_report", full)
    out = tmp_path / "o"
    with pytest.raises(OutputWriteError, match=r"o: cannot be written: the disk is full \(.*visits\.png\); the report is "
                                               r"incomplete \(the record .*explore\.zarr is complete\)"):
        explore_run([HAADF, EELS], out, structure="Gatan HAADF", scalarizer=CUZN_SPEC, acquisition="ei", budget=12, steps=2)
    assert (out / "explore.zarr").is_dir()
