"""Element maps and Cliff-Lorimer quantification (xsi_dask.quantify) against exspy and a dense NumPy reference.

Tolerances: net intensities are sums of counts times window weights, so the
engine's sparse product and a dense NumPy product differ only by summation
order: 1e-12 relative to the gross counts each sum touches (float64). exspy's
``get_lines_intensity`` slices and sums the same channels: 1e-9 relative
(the brief's bound; measured 4e-16). Cliff-Lorimer on the simulator's true
phase spectra with simulator-consistent k-factors: 2 at.% (peak overlaps and
the continuum's curvature under the windows are the only error sources).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xsi_dask
from xsi_dask.errors import InputFileNotFoundError, KFactorError, MissingDependencyError, ParameterError, XrayLineError

pytest.importorskip("exspy")
hs = pytest.importorskip("hyperspy.api")

from xsi_dask.montage.prepare import analysis_view  # noqa: E402
from xsi_dask.quantify import element_lines, element_maps, net_intensities, quantify, read_kfactors  # noqa: E402
from xsi_dask.testing.kfactors import simulator_kfactors  # noqa: E402
from xsi_dask.testing.physics import Detector  # noqa: E402
from xsi_dask.testing.presets import PRESETS  # noqa: E402
from xsi_dask.testing.simulate import open_truth, simulate  # noqa: E402

BRUKER = "bcf_v2_50x50px.bcf"
AXIS = np.arange(2048) * 0.01  # the simulator's axis: 10 eV channels from 0 keV


def _net_dense(spectra: np.ndarray, table) -> np.ndarray:
    """exspy's net intensity written out per line from the channel ranges: window sum - f (left sum + right sum)."""
    out = np.empty(spectra.shape[:-1] + (len(table),))
    for j in range(len(table)):
        a, b = table.integration_channels[j]
        l0, l1, r0, r1 = table.background_channels[j]
        f = (b - a) / ((l1 - l0) + (r1 - r0))
        out[..., j] = spectra[..., a:b].sum(-1) - f * (spectra[..., l0:l1].sum(-1) + spectra[..., r0:r1].sum(-1))
    return out


def _gross_dense(spectra: np.ndarray, table) -> np.ndarray:
    """Counts touched by each line's windows (the scale of the round-off of its net intensity)."""
    out = np.empty(spectra.shape[:-1] + (len(table),))
    for j in range(len(table)):
        a, b = table.integration_channels[j]
        l0, l1, r0, r1 = table.background_channels[j]
        out[..., j] = spectra[..., a:b].sum(-1) + spectra[..., l0:l1].sum(-1) + spectra[..., r0:r1].sum(-1)
    return out


# ---- exspy's lines, windows and net intensities on a real Bruker map ----


@pytest.fixture
def bruker_signal(needs_data):
    sigs = hs.load(str(needs_data / BRUKER))
    return [s for s in (sigs if isinstance(sigs, list) else [sigs]) if s.metadata.Signal.signal_type.startswith("EDS")][0]


def test_lines_and_net_intensities_equal_exspy_on_bruker(bruker_signal):
    s = bruker_signal
    ss = s.sum()
    ax = ss.axes_manager.signal_axes[0]
    sem = ss.metadata.Acquisition_instrument.SEM
    table = element_lines(ss.metadata.Sample.elements, ax.axis, beam_energy=sem.beam_energy,
                          resolution_mnka=sem.Detector.EDS.energy_resolution_MnKa)
    # the file lists exspy's own choice at 20 keV: Ag La (Ag Ka 22 keV is above the beam), Cu Ka below 10 keV
    assert list(table.lines) == list(ss.metadata.Sample.xray_lines) == ["Ag_La", "Al_Ka", "C_Ka", "Cu_Ka", "O_Ka"]
    iw = ss.estimate_integration_windows(xray_lines=list(table.lines))  # a list of [lo, hi] lists, as exspy needs
    bw = ss.estimate_background_windows(xray_lines=list(table.lines))  # C_Ka and O_Ka share merged windows
    np.testing.assert_array_equal(table.integration, iw)
    np.testing.assert_array_equal(table.background, bw)
    ref = np.array([float(x.data[0]) for x in ss.get_lines_intensity(list(table.lines), integration_windows=iw,
                                                                      background_windows=bw)])
    got = net_intensities(ss.data, table)
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    assert got.min() > 0
    # and per pixel of the 50 x 50 map
    maps = s.get_lines_intensity(list(table.lines), integration_windows=iw, background_windows=bw)
    ref_map = np.stack([m.data for m in maps], axis=-1)
    np.testing.assert_allclose(net_intensities(s.data, table), ref_map, rtol=1e-9, atol=1e-9 * np.abs(ref_map).max())


# ---- element maps of a montage: the engine's map pass equals a dense computation ----


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("quantify") / "g91"
    return simulate(path, preset="grade91_replica", tiles=(2, 2), tile_shape=(16, 16), channels=2048, zero_peak=0.1,
                    progress=False)


def test_element_maps_equal_dense_numpy(sim_store):
    view = analysis_view(xsi_dask.open_montage(sim_store)).isel(tile=[3, 0, 2])  # no zero peak, 3 of 4 tiles
    elements = ["Cr", "Fe", "Mo", "Mn", "S", "V", "Ni", "Si", "Al"]
    ds = element_maps(view, elements, gross=True)
    assert ds["intensity"].dims == ("tile", "y", "x", "line")
    assert ds["intensity"].data.chunks[0] == (1, 1, 1)  # lazy, one chunk per tile
    table = element_lines(elements, view["energy"].values, beam_energy=200.0, zero_peak_cutoff=view.attrs["zero_peak_cutoff"])
    assert list(ds["line"].values) == list(table.lines) and "Mo_Ka" in table.lines
    np.testing.assert_array_equal(ds["line_energy"].values, table.energy)
    full = xsi_dask.open_montage(sim_store).compute().data.todense()  # (tile, y, x, channel) of the store
    channels = np.searchsorted(full_energy := xsi_dask.open_montage(sim_store)["energy"].values, view["energy"].values)
    np.testing.assert_array_equal(full_energy[channels], view["energy"].values)
    dense = full[[3, 0, 2]][..., channels].astype(np.float64)
    ref = _net_dense(dense, table)
    scale = _gross_dense(dense, table)
    got = ds["intensity"].values
    assert np.abs(ref).max() > 10  # real peaks, not an empty comparison
    # rtol 1e-12 of the counts each net intensity sums (a net intensity can cancel to ~0)
    assert np.all(np.abs(got - ref) <= 1e-12 * np.maximum(scale, 1.0))
    a, b = table.integration_channels.T
    np.testing.assert_array_equal(ds["integrated"].values, np.stack([dense[..., i:j].sum(-1) for i, j in zip(a, b)], -1))
    st = xsi_dask.MontageStore(sim_store.path)
    assert ds.attrs["store_uuid"] == st.uuid and ds.attrs["store"] == str(st.path)
    assert ds.attrs["lines"] == list(table.lines) and ds.attrs["zero_peak_cutoff"] == view.attrs["zero_peak_cutoff"]
    np.testing.assert_array_equal(ds["tile"].values, [3, 0, 2])


def test_element_maps_elements_default_and_errors(sim_store):
    m = xsi_dask.open_montage(sim_store)
    with pytest.raises(XrayLineError, match="no elements given and none recorded"):
        element_maps(m)
    recorded = element_maps(m.assign_attrs(elements=["Fe", "Cr"]))  # as the source files' Sample.elements
    assert list(recorded["line"].values) == ["Cr_Ka", "Fe_Ka"]
    view = analysis_view(m)
    with pytest.raises(XrayLineError, match="C_Ka.*outside the energy axis"):
        element_maps(view, ["C", "Fe"])  # C Ka's left background lies in the excluded zero peak, off the view
    with pytest.raises(XrayLineError, match="C_Ka.*below the zero-peak cutoff 0.186 keV"):
        element_maps(m, ["C", "Fe"])  # the whole axis: the detector's cutoff still applies (EDS_TEM)
    kept = element_maps(analysis_view(m, keep_zero_peak=True), ["C", "Fe"])  # kept on purpose: no cutoff
    assert kept.attrs["zero_peak_cutoff"] is None and list(kept["line"].values) == ["C_Ka", "Fe_Ka"]


# ---- Cliff-Lorimer on the simulator's true phase spectra ----


def _z(el: str) -> int:
    import xraydb

    return xraydb.atomic_number(el)


def _major(composition: dict[str, float]) -> dict[str, float]:
    """Elements with Z >= 11 and weight fraction >= 0.05, normalised over them."""
    major = {el: w for el, w in composition.items() if _z(el) >= 11 and w >= 0.05}
    total = sum(major.values())
    return {el: w / total for el, w in major.items()}


def _cases():
    for preset, pre in PRESETS.items():
        for i, phase in enumerate(pre.phases):
            if len(_major(phase.composition)) >= 2:
                marks = []
                if phase.name == "V(C,N)":
                    marks = [pytest.mark.xfail(strict=True, reason=(
                        "V Kb (5.427 keV) lies inside the Cr Ka (5.415 keV) integration window and V is 10x Cr: "
                        "Cr comes out about 17.6 at.% for 8.0 (V 75.7 for 84.5); see the Cr_Kb test"))]
                yield pytest.param(preset, i, id=f"{preset}-{phase.name}", marks=marks)


@pytest.fixture(scope="module")
def truths(tmp_path_factory):
    root = tmp_path_factory.mktemp("truth")
    return {p: open_truth(simulate(root / p, preset=p, tiles=(1, 1), tile_shape=(16, 16), channels=2048, progress=False))
            for p in PRESETS}


def _quantify_phase(truth, preset: str, i: int, lines=None):
    from exspy.material import weight_to_atomic

    pre = PRESETS[preset]
    major = _major(pre.phases[i].composition)
    energy = truth["energy"].values
    table = element_lines(sorted(major), energy, beam_energy=pre.beam_kev, lines=lines)
    k = simulator_kfactors(table, beam_kev=pre.beam_kev, detector=Detector(), energy_axis=energy)
    q = quantify(net_intensities(truth["spectra"], table), k)  # every phase at once, (phase, element)
    want = weight_to_atomic(np.array([major[el] for el in table.elements]) * 100, list(table.elements))
    return q, q["atomic_percent"].values[i], want, table


@pytest.mark.parametrize(("preset", "i"), list(_cases()))
def test_cliff_lorimer_recovers_simulated_phase_composition(truths, preset, i):
    q, got, want, table = _quantify_phase(truths[preset], preset, i)
    assert q["atomic_percent"].dims == ("phase", "element")
    np.testing.assert_allclose(got.sum(), 100.0, rtol=1e-12)
    assert np.abs(got - want).max() < 2.0, dict(zip(table.lines, np.round(got - want, 2)))


def test_cliff_lorimer_vcn_with_cr_kb(truths):
    """V(C,N) quantified with Cr Kb (clear of V Kb; no Mn in this phase): within 2 at.%."""
    _, got, want, table = _quantify_phase(truths["grade91_replica"], "grade91_replica", 2, lines=["Cr_Kb"])
    assert "Cr_Kb" in table.lines
    assert np.abs(got - want).max() < 2.0, dict(zip(table.lines, np.round(got - want, 2)))


def test_quantify_equals_exspy_and_maps_stay_lazy(sim_store):
    from exspy._misc.eds.utils import quantification_cliff_lorimer
    from exspy.material import weight_to_atomic

    ds = element_maps(xsi_dask.open_montage(sim_store), ["Cr", "Fe", "Mo"])
    k = {"Cr_Ka": 1.0, "Fe": 1.2, "Mo_Ka": 2.5}  # by line or by element
    q = quantify(ds, k)
    assert q["weight_percent"].dims == ("tile", "y", "x", "element")
    assert q["weight_percent"].data.chunks[0] == (1,) * 4
    I = ds["intensity"].values  # counts: exspy's 0.1-count threshold applies as is
    with np.errstate(divide="ignore", invalid="ignore"):  # exspy divides by the lines of pixels with no counts
        ref = np.moveaxis(quantification_cliff_lorimer(np.moveaxis(I, -1, 0), [1.0, 1.2, 2.5]), 0, -1) * 100
    # exspy's 0 % of everything where no line is above its threshold is no composition: NaN here
    none = ~np.any(ref != 0, axis=-1)
    assert none.any() and np.isnan(q["weight_percent"].values[none]).all()
    ref[none] = np.nan
    np.testing.assert_allclose(q["weight_percent"].values, ref, rtol=1e-12, atol=1e-12)
    with np.errstate(invalid="ignore"):
        ref_at = np.nan_to_num(np.moveaxis(weight_to_atomic(np.moveaxis(ref, -1, 0), ["Cr", "Fe", "Mo"]), 0, -1))
    ref_at[none] = np.nan
    np.testing.assert_allclose(q["atomic_percent"].values, ref_at, rtol=1e-12, atol=1e-12)
    # a plain ndarray with its line names gives the same
    q2 = quantify(I, [1.0, 1.2, 2.5], lines=list(ds["line"].values), min_intensity=0.1)
    np.testing.assert_allclose(q2["weight_percent"].values, ref, rtol=1e-12, atol=1e-12)


def test_absorption_correction_and_its_errors(truths):
    pre = PRESETS["grade91_replica"]
    truth = truths["grade91_replica"]
    table = element_lines(["Al", "Si", "Cr"], truth["energy"].values, beam_energy=pre.beam_kev)
    k = simulator_kfactors(table, beam_kev=pre.beam_kev, energy_axis=truth["energy"].values)
    I = net_intensities(truth["spectra"].isel(phase=[4]), table)
    plain = quantify(I, k)["weight_percent"].values[0]
    corr = quantify(I, k, absorption={"thickness_nm": 100.0, "density_g_cm3": 3.5, "take_off_angle_deg": 20.0})
    got = corr["weight_percent"].values[0]
    assert corr.attrs["absorption_correction"] == 1
    # Si Ka (1.74 keV, just above the Al K edge) is absorbed most, Cr Ka least: corrected Si up, Cr down
    el = list(table.elements)
    assert got[el.index("Si")] > plain[el.index("Si")] and got[el.index("Cr")] < plain[el.index("Cr")]
    np.testing.assert_allclose(got.sum(), 100.0, rtol=1e-12)
    with pytest.raises(ParameterError, match="absorption needs exactly the keys"):
        quantify(I, k, absorption={"thickness_nm": 100.0})
    with pytest.raises(ParameterError, match="density_g_cm3 must be a positive"):
        quantify(I, k, absorption={"thickness_nm": 100.0, "density_g_cm3": -1.0, "take_off_angle_deg": 20.0})


# ---- errors: lines and windows ----


def test_element_lines_errors():
    with pytest.raises(XrayLineError, match="unknown element 'Xx'"):
        element_lines(["Fe", "Xx"], AXIS, beam_energy=200.0)
    with pytest.raises(XrayLineError, match="'Fe_Kz' is not a line of Fe"):
        element_lines(None, AXIS, lines=["Fe_Kz"], beam_energy=200.0)
    with pytest.raises(XrayLineError, match="Fe_Ka is not in the data energy range"):
        element_lines(None, AXIS[:500], lines=["Fe_Ka"], beam_energy=200.0)  # axis to 4.99 keV
    with pytest.raises(XrayLineError, match=r"Fe_Ka \(6.4039 keV\): its integration window .* outside the energy axis"):
        element_lines(["Fe"], AXIS[632:], beam_energy=200.0)  # axis from 6.32 keV: the line is on it, its window is not
    with pytest.raises(XrayLineError, match=r"Fe_Ka .*background windows .* outside the energy axis"):
        element_lines(["Fe"], AXIS[:656], beam_energy=200.0)  # axis to 6.55 keV: the window is on it, the right background not
    with pytest.raises(XrayLineError, match="no Ka, La or Ma line of Be"):
        element_lines(["Be", "Fe"], AXIS[20:], beam_energy=200.0)  # Be Ka 0.108 keV below the axis
    with pytest.raises(XrayLineError, match="C_Ka.*zero-peak cutoff 0.186"):
        element_lines(["C"], AXIS, beam_energy=200.0, zero_peak_cutoff=0.186)
    with pytest.raises(XrayLineError, match="uniform"):
        element_lines(["Fe"], np.r_[AXIS[:100], AXIS[101:]], beam_energy=200.0)
    with pytest.raises(XrayLineError, match="no elements and no lines"):
        element_lines([], AXIS)
    with pytest.raises(XrayLineError, match="two lines of Fe"):
        element_lines(["Fe"], AXIS, lines=["Fe_Ka", "Fe_Kb"], beam_energy=200.0)
    with pytest.raises(XrayLineError, match="beam_energy"):
        element_lines(["Fe"], AXIS, beam_energy=-1.0)
    with pytest.raises(XrayLineError, match="narrower than one channel"):
        element_lines(["Fe"], AXIS, beam_energy=200.0, background_width=0.01)
    table = element_lines(["Fe"], AXIS, beam_energy=200.0)
    tds = table.to_dataset()
    assert tds["integration_channels"].sel(line="Fe_Ka").values.tolist() == table.integration_channels[0].tolist()
    assert float(tds["line_energy"].sel(line="Fe_Ka")) == 6.4039  # exspy's database
    with pytest.raises(XrayLineError, match="2047 channels"):
        net_intensities(np.zeros((3, 2047)), table)
    assert isinstance(XrayLineError("x"), ParameterError)


def test_exspy_line_rule_uses_beam_energy():
    # at 20 keV Mo Ka (17.5 keV) is above half the beam energy: exspy takes Mo La; at 200 keV Mo Ka
    assert element_lines(["Mo"], AXIS, beam_energy=20.0).lines == ("Mo_La",)
    assert element_lines(["Mo"], AXIS, beam_energy=200.0).lines == ("Mo_Ka",)
    # Ce Ka (34.7 keV) is off a 0-20.47 keV axis: Ce La
    assert element_lines(["Ce"], AXIS, beam_energy=200.0).lines == ("Ce_La",)


def test_missing_exspy_names_the_extra(monkeypatch):
    from xsi_dask.quantify import _lines

    def no_exspy(name, *args, **kwargs):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(_lines.importlib, "import_module", no_exspy)
    with pytest.raises(MissingDependencyError, match=r"pip install xsi-dask\[quantify\]") as info:
        element_lines(["Fe"], AXIS, beam_energy=200.0)
    assert isinstance(info.value, ImportError) and isinstance(info.value, xsi_dask.XSIError)


# ---- errors: k-factors ----


def test_read_kfactors_yaml_and_csv(tmp_path):
    y = tmp_path / "k.yaml"
    y.write_text("Fe_Ka: 1.0\nCr_Ka: 0.95\nMo: 2.1\n")
    assert read_kfactors(y, lines=["Fe_Ka", "Cr_Ka", "Mo_Ka"]) == {"Fe_Ka": 1.0, "Cr_Ka": 0.95, "Mo": 2.1}
    y2 = tmp_path / "k2.yml"
    y2.write_text("kfactors:\n  Fe: 1\n  Cr: 0.9\n")
    assert read_kfactors(y2) == {"Fe": 1.0, "Cr": 0.9}
    c = tmp_path / "k.csv"
    c.write_text("line,kfactor\n# measured on standards\nFe_Ka,1.0\nCr_Ka, 0.95\n")
    assert read_kfactors(c) == {"Fe_Ka": 1.0, "Cr_Ka": 0.95}


@pytest.mark.parametrize(("name", "text", "match"), [
    ("k.csv", "line,kfactor\nFe_Ka,1.0\nCr_Ka,0\n", r"k.csv line 3: the k-factor of Cr_Ka must be a positive finite"),
    ("k.csv", "line,kfactor\nFe_Ka,nan\n", r"line 2: the k-factor of Fe_Ka must be a positive finite"),
    ("k.csv", "line,kfactor\nFe_Ka,inf\n", r"line 2: the k-factor of Fe_Ka must be a positive finite"),
    ("k.csv", "line,kfactor\nFe_Ka,abc\n", r"line 2: the k-factor of Fe_Ka is not a number"),
    ("k.csv", "line,k\nFe_Ka,1\n", r"k.csv line 1: the header must be 'line,kfactor'"),
    ("k.csv", "line,kfactor,error\nFe_Ka,1,0.1\n", r"line 1: the header must be"),
    ("k.csv", "line,kfactor\nFe_Ka,1,2\n", r"line 2: expected 2 columns"),
    ("k.csv", "line,kfactor\nFe_Ka,1\nFe_Ka,2\n", r"line 3: Fe_Ka is given twice"),
    ("k.csv", "line,kfactor\nIron,1\n", r"line 2: 'Iron' is not an element"),
    ("k.yaml", "Fe_Ka: 1.0\nCr_Ka: -2\n", r"k.yaml line 2: the k-factor of Cr_Ka must be a positive finite"),
    ("k.yaml", "Fe_Ka: [1, 2]\n", r"line 1: the k-factor of Fe_Ka is not a number"),
    ("k.yaml", "Fe_Ka: 1\n  Cr: : 2\n", r"not valid YAML"),
    ("k.yaml", "- 1\n- 2\n", r"expected a mapping"),
    ("k.txt", "Fe_Ka 1\n", r"unknown k-factor file type '.txt'"),
])
def test_read_kfactors_errors(tmp_path, name, text, match):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(KFactorError, match=match):
        read_kfactors(p)


def test_kfactor_errors_in_quantify(tmp_path):
    with pytest.raises(InputFileNotFoundError, match="k-factor file not found"):
        read_kfactors(tmp_path / "missing.yaml")
    p = tmp_path / "k.yaml"
    p.write_text("Fe_Ka: 1.0\n")
    with pytest.raises(KFactorError, match=r"k.yaml: no k-factor for Cr_Ka"):
        read_kfactors(p, lines=["Fe_Ka", "Cr_Ka"])
    I = xr.DataArray(np.ones((2, 2)), dims=("component", "line"),
                     coords={"line": ["Cr_Ka", "Fe_Ka"], "element": ("line", ["Cr", "Fe"])})
    with pytest.raises(KFactorError, match="no k-factor for Cr_Ka"):
        quantify(I, {"Fe_Ka": 1.0})
    with pytest.raises(KFactorError, match="the k-factor of Fe_Ka must be a positive finite"):
        quantify(I, {"Cr": 1.0, "Fe": 0.0})
    with pytest.raises(KFactorError, match="1 k-factors for 2 lines"):
        quantify(I, [1.0])
    with pytest.raises(ParameterError, match="one line per element"):
        quantify(I.assign_coords(line=["Fe_Ka", "Fe_Kb"], element=("line", ["Fe", "Fe"])), [1.0, 1.0])


# ---- the pipeline's entry points: a montage view as the axis, a results store's endmembers ----


def test_montage_defaults_and_quantify_results(sim_store, truths, tmp_path):
    from xsi_dask.io.results import write_results
    from xsi_dask.quantify import quantify_results

    view = analysis_view(xsi_dask.open_montage(sim_store))
    table = element_lines(["Cr", "Fe", "Mo"], view)  # beam energy, resolution and zero-peak cutoff from the view
    assert table.beam_energy == 200.0 and table.zero_peak_cutoff == view.attrs["zero_peak_cutoff"]
    assert table.axis_size == view.sizes["energy"]
    explicit = simulator_kfactors(table, beam_kev=200.0, detector=Detector(), energy_axis=view["energy"].values)
    assert simulator_kfactors(table, store=sim_store) == pytest.approx(explicit, rel=1e-12)  # axis rebuilt from offset/scale
    maps = element_maps(view, table=table)
    np.testing.assert_array_equal(maps["line"].values, list(table.lines))
    with pytest.raises(XrayLineError, match="not the one the line table was made for|channels"):
        element_maps(xsi_dask.open_montage(sim_store), table=table)  # the table is on the view's axis, not the store's
    # endmember spectra (here the true phase spectra, summing to 1 as NMF's) of a results group
    spectra = truths["grade91_replica"]["spectra"].rename(phase="component")
    full_table = element_lines(["Cr", "Fe", "Mo"], spectra["energy"].values, beam_energy=200.0)
    k = simulator_kfactors(full_table, beam_kev=200.0)
    nmf = xr.Dataset({"spectra": spectra.assign_coords(component=np.arange(spectra.sizes["component"]))})
    q = quantify_results(nmf, k, table=full_table, k_factor_source="the simulator's physics")
    ref = quantify(net_intensities(nmf["spectra"], full_table), k)
    np.testing.assert_array_equal(q["atomic_percent"].values, ref["atomic_percent"].values)
    assert q["atomic_percent"].dims == ("component", "element") and q["intensity"].dims == ("component", "line")
    assert q.attrs["k_factor_source"] == "the simulator's physics" and q.attrs["absorption"] == "off"
    out = write_results(tmp_path / "results", {"nmf": nmf})
    q2 = quantify_results(out, k, table=full_table)
    np.testing.assert_array_equal(q2["atomic_percent"].values, ref["atomic_percent"].values)
    assert q2.attrs["group"] == "nmf"
    with pytest.raises(ParameterError, match="no mcr group"):
        quantify_results(out, k, table=full_table, group="mcr")


def test_a_line_given_twice_in_a_yaml_file_is_refused(tmp_path):
    path = tmp_path / "k.yaml"
    path.write_text("Fe_Ka: 1.0\nCr_Ka: 0.9\nFe_Ka: 2.0\n")  # YAML itself would keep the last
    with pytest.raises(KFactorError, match=r"lines 1, 3: Fe_Ka is given 2 times"):
        read_kfactors(path)
