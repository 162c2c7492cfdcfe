"""The analyses of #13 through the pipeline and the command line: run flags, the commands on a results store, the
report, run.yaml and the refusals before any work."""

import numpy as np
import pytest
import yaml

import xsi_dask
from xsi_dask.cli.main import main
from xsi_dask.io.results import has_group, open_results
from xsi_dask.testing.simulate import simulate

from .conftest import EDS


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("analyses")
    simulate(d / "m.zarr", preset="am_aluminum", tiles=(2, 2), tile_shape=(24, 24), channels=1024, counts_per_pixel=60,
             seed=1, low_count_tile=3, progress=False)
    return d


@pytest.fixture(scope="module")
def ran(sim):
    out = sim / "run"
    rc = main(["run", str(sim / "m.zarr"), "--out", str(out), "--nmf-components", "4", "--components", "6", "--solver", "gram",
               "--rotate", "varimax", "--mcr", "--ica", "--segments", "4", "--quantify", "--workers", "1", "--quiet"])
    assert rc == 0
    return out


@pytest.mark.slow  # the whole run with every analysis (~2 min): make test-all
def test_run_writes_every_group_its_figures_and_report_sections(ran):
    results = ran / "results.zarr"
    for g in ("svd", "nmf", "rotation", "mcr", "ica", "segments", "elements", "quantification", "qc"):
        assert has_group(results, g), g
    figs = {p.name for p in (ran / "figures").glob("*.png")}
    for name in ("rotation_loadings.png", "rotation_scores.png", "mcr_spectra.png", "mcr_abundances.png", "ica_loadings.png",
                 "segments.png", "segment_spectra.png", "element_maps.png", "composition_maps.png", "qc.png"):
        assert name in figs, name
    html = (ran / "report.html").read_text()
    for heading in ("Spatial-simplicity rotation", "MCR-ALS (factored)", "ICA", "k-means segments", "Element maps",
                    "Cliff-Lorimer quantification of the endmembers", "Tile quality control"):
        assert heading in html, heading
    saved = yaml.safe_load((ran / "run.yaml").read_text())
    assert saved["analyses"]["mcr"] is True and saved["analyses"]["rotate"] == "varimax"
    assert saved["analyses"]["segments"] == 4 and saved["analyses"]["quantify"] is True


@pytest.mark.slow  # the whole run with every analysis (~2 min): make test-all
def test_the_low_count_tile_is_flagged_by_run_and_by_info(ran, sim, capsys):
    qc = open_results(ran / "results.zarr", "qc")
    assert [int(t) for t in qc["tile"].values[qc["flagged"].values]] == [3]
    assert qc.attrs["group"] == "mcr"  # the residual is of the MCR model when the run has one
    capsys.readouterr()
    assert main(["info", str(sim / "m.zarr")]) == 0
    assert "1 of 4 tiles flagged" in capsys.readouterr().out


@pytest.mark.slow  # the whole run with every analysis (~2 min): make test-all
def test_mcr_fits_the_counts_nearly_as_well_as_the_kl_nmf(ran):
    # the phase-recovery targets are tests/test_rotate_mcr.py's (this montage is too small for them): here the
    # factored model, fitted without reading the counts, against the KL optimum of the same k on the same counts
    mcr = open_results(ran / "results.zarr", "mcr")
    nmf = open_results(ran / "results.zarr", "nmf")
    S = mcr["spectra"].values
    assert (S >= 0).all() and (mcr["abundances"].values >= 0).all()
    np.testing.assert_allclose(S.sum(1), 1.0, rtol=1e-9)
    assert mcr.attrs["passes"] == 1  # the residual; the iterations read the stored scores only
    assert 2 * nmf.attrs["divergence"] <= mcr.attrs["deviance"] <= 1.1 * 2 * nmf.attrs["divergence"]


@pytest.mark.slow  # the whole run with every analysis (~2 min): make test-all
def test_quantification_has_every_endmember_and_sums_to_100(ran):
    q = open_results(ran / "results.zarr", "quantification")
    at = q["atomic_percent"].values
    assert at.shape[0] == 4
    np.testing.assert_allclose(np.nansum(at, axis=-1), 100.0, rtol=1e-6)
    maps = q["map_atomic_percent"].values  # per pixel, from the element maps
    assert maps.shape == (4, 24, 24, q.sizes["element"])
    total = np.nansum(maps, axis=-1)
    finite = np.isfinite(maps).any(-1)
    assert finite.mean() > 0.9
    np.testing.assert_allclose(total[finite], 100.0, rtol=1e-6)


@pytest.mark.slow  # the whole run with every analysis (~2 min): make test-all
def test_the_commands_on_a_results_store(ran, sim, capsys):
    results = ran / "results.zarr"
    # a group that is there is refused without --overwrite, before any work
    assert main(["rotate", str(results), "--quiet"]) == 2
    assert "already has group" in capsys.readouterr().err
    before = open_results(results, "qc")["z_dose"].values.copy()
    assert main(["qc", str(results), "--threshold", "100", "--overwrite", "--quiet", "--workers", "1"]) == 0
    qc = open_results(results, "qc")
    assert not qc["flagged"].values.any() and qc.attrs["threshold"] == 100
    np.testing.assert_allclose(qc["z_dose"].values, before)
    # more components than the SVD keeps: refused before any work
    assert main(["ica", str(results), "--components", "9", "--overwrite", "--quiet"]) == 2
    assert "at most the SVD's 6" in capsys.readouterr().err


def test_quantify_without_k_factors_on_a_real_store_is_refused_before_any_work(tmp_path, capsys, needs_data):
    out = tmp_path / "bruker"
    rc = main(["run", str(EDS / "bcf_v2_50x50px.bcf"), "--out", str(out), "--quantify", "--elements", "Al,Ag", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--k-factors" in err
    assert not (out / "results.zarr").exists()


def test_analyses_params_refuse_what_they_cannot_honour():
    from xsi_dask.errors import ParameterError
    from xsi_dask.pipeline import AnalysesParams

    assert AnalysesParams(mcr=True).rotate is None  # MCR starts from its own rotation; --rotate writes the group
    assert AnalysesParams(segments=3).segment_on == "svd" and AnalysesParams().qc_threshold == 3.5
    with pytest.raises(ParameterError, match="segments too"):
        AnalysesParams(segment_on="nmf")
    with pytest.raises(ParameterError, match="--no-qc"):
        AnalysesParams(qc=False, qc_threshold=3.0)
    with pytest.raises(ParameterError, match="k_factors"):
        AnalysesParams(k_factors="k.yaml")
    with pytest.raises(ParameterError, match="segments"):
        AnalysesParams(segments=1)
    with pytest.raises(ParameterError, match="rotate"):
        AnalysesParams(rotate="quartimax")
    assert xsi_dask.pipeline.AnalysesParams().describe().startswith("tile QC")


@pytest.mark.slow  # the whole run with every analysis (~2 min): make test-all
def test_nmf_with_a_known_spectrum_from_another_run(ran, tmp_path):
    from xsi_dask.pipeline import NMFParams, nmf_store

    results = ran / "results.zarr"
    spec = f"{results}:nmf:1"
    params = NMFParams(components=3, max_iter=15, known_spectra=[spec])
    assert params.known_spectra == (spec,)
    ds = nmf_store(open_results(results, "svd").attrs["store"], tmp_path / "k.zarr", nmf=params, progress=False)
    ref = open_results(results, "nmf")["spectra"].isel(component=1).values
    assert bool(ds["fixed"].values[0]) and not ds["fixed"].values[1:].any()
    np.testing.assert_allclose(ds["spectra"].values[0], ref / ref.sum(), rtol=1e-12)
    from xsi_dask.errors import ParameterError

    with pytest.raises(ParameterError, match="GROUP nmf or mcr"):
        NMFParams(known_spectra=[f"{results}:svd:1"])
    with pytest.raises(ParameterError, match="GROUP nmf or mcr"):
        NMFParams(known_spectra=[f"{results}:nmf"])  # the index forgotten: not taken for a file name


@pytest.mark.slow  # the whole run with every analysis (~2 min): make test-all
def test_replacing_the_svd_drops_the_groups_computed_from_the_old_results(ran, sim, capsys):
    results = ran / "results.zarr"
    assert has_group(results, "rotation") and has_group(results, "qc")
    assert main(["decompose", str(sim / "m.zarr"), "--out", str(results), "--components", "6", "--solver", "gram",
                 "--overwrite", "--workers", "1", "--quiet"]) == 0
    assert "the groups computed from the results before it go too" in capsys.readouterr().out
    for g in ("rotation", "mcr", "ica", "segments", "elements", "quantification", "qc"):
        assert not has_group(results, g), g  # never left to describe results that are gone
    assert has_group(results, "svd") and has_group(results, "nmf")
