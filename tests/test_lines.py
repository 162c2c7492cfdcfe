"""X-ray line labels come from xraydb, use the context of the other peaks, and only the sample's elements where it lists them."""

import functools

import numpy as np
import pytest

from xsi_dask.errors import ParameterError
from xsi_dask.plotting.lines import component_labels, element_lines, label_options, label_peaks, line_table, parse_elements


def _peaks(centres, heights, sigma=0.03):
    e = np.linspace(0, 12, 2400)
    return e, sum(h * np.exp(-0.5 * ((e - c) / sigma) ** 2) for c, h in zip(centres, heights))


def test_line_energies_come_from_xraydb():
    xraydb = pytest.importorskip("xraydb")
    energies, names, _ = line_table()
    for label, line in (("Fe Ka", "Ka1"), ("Cr Ka", "Ka1"), ("Mo La", "La1"), ("Ce Ma", "Ma")):
        element = label.split()[0]
        assert energies[names.index(label)] == pytest.approx(xraydb.xray_lines(element)[line].energy / 1000)


def test_labels_use_the_other_peaks():
    e, y = _peaks([0.705, 2.307, 6.404], [0.5, 0.3, 1.0])  # Fe La, S Ka, Fe Ka
    assert [lab for _, _, lab in label_peaks(e, y)] == ["Fe La", "S Ka", "Fe Ka"]
    e, y = _peaks([1.740, 5.415], [0.3, 1.0])  # Si Ka, Cr Ka
    assert [lab for _, _, lab in label_peaks(e, y)] == ["Si Ka", "Cr Ka"]


def test_negative_loadings_and_empty_spectra():
    e, y = _peaks([6.404], [1.0])
    assert label_peaks(e, -y)[0][2] == "Fe Ka"
    assert label_peaks(e, np.zeros_like(e)) == []


# ---- element-aware labels ----------------------------------------------------------------------

BRUKER = ["Ag", "Al", "C", "Cu", "O"]  # Sample.elements of bcf_v2_50x50px.bcf


def _family(name: str) -> str:
    return name.split()[-1][:2]


def _exspy_lines(element: str) -> dict:
    """exspy's EDS line table of one element: {"La": {"energy (keV)": ..., "weight": ...}, ...}."""
    material = pytest.importorskip("exspy.material")
    return material.elements[element].Atomic_properties.Xray_lines.as_dictionary()


@pytest.mark.parametrize("element", ["Al", "Si", "Fe", "Cu", "Mo", "Pd", "Ag", "W", "Pt", "Pb"])
def test_element_lines_rank_like_exspy(element):
    """Per family, the strongest line and its energy agree with exspy's EDS line table (NIST EPQ weights)."""
    ref = {k: (v["energy (keV)"], v["weight"]) for k, v in _exspy_lines(element).items()}
    ours = element_lines(element)
    for fam in {k[0] for k in ref}:
        ref_top = max((k for k in ref if k[0] == fam), key=lambda k: ref[k][1])
        e, name, w = max((row for row in ours if _family(row[1])[0] == fam), key=lambda row: row[2])
        assert _family(name) == ref_top[:2] and w == 1.0
        assert e == pytest.approx(ref[ref_top][0], abs=0.07 if e > 15 else 0.012)  # Ka1+Ka2 merged: the doublet's centroid
    # the families an analyst names: L lines from Ca, M lines from La, as in exspy's table
    assert {_family(n)[0] for _, n, _ in ours} == {k[0] for k in ref}


def test_families_start_where_exspys_do():
    for el in ("K", "Ca", "Ba", "La"):
        ref = {k[0] for k in _exspy_lines(el)}
        assert {_family(n)[0] for _, n, _ in element_lines(el)} == ref, el


def test_listed_elements_resolve_the_overlaps():
    """Ag La (2.98) is never Ar Ka, Ag Ll (2.63) never Cl Ka, Cu Ll/La never Ne Ka; unlisted Si stays unlabelled."""
    xraydb = pytest.importorskip("xraydb")
    e, y = _peaks([2.984, 2.634, 1.486, 3.151], [1.0, 0.08, 0.9, 0.4])
    got = {round(en, 1): lab for en, _, lab in label_peaks(e, y, elements=BRUKER, n_peaks=8, prominence=0.01)}
    assert got == {3.0: "Ag La", 2.6: "Ag Ll", 1.5: "Al Ka", 3.2: "Ag Lb"}
    e, y = _peaks([0.93, 8.046], [1.0, 0.5])
    assert [lab for _, _, lab in label_peaks(e, y, elements=["Al", "Cu"])] == ["Cu La", "Cu Ka"]
    e, y = _peaks([0.85], [1.0])  # Ne Ka's energy (0.849): Cu Ll (0.81) is within FWHM(0.85 keV) = 65 eV, Cu La is not
    assert label_peaks(e, y)[0][2] == "Ne Ka"  # without a list
    assert label_peaks(e, y, elements=["Al", "Cu"])[0][2] == "Cu Ll"
    assert xraydb.xray_lines("Cu")["Ll"].energy / 1000 == pytest.approx(0.81, abs=0.01)
    e, y = _peaks([1.740, 4.510], [1.0, 0.5])  # Si Ka, Ti Ka: the test_TEM.bcf list has no Si
    assert [lab for _, _, lab in label_peaks(e, y, elements="Cu,O,Pd,Ti")] == ["", "Ti Ka"]


def test_match_window_is_the_detector_resolution():
    """A peak 180 eV off Cu Ka: outside FWHM(8 keV) = 149 eV at 130 eV (Mn Ka), inside 213 eV at 200 eV."""
    from xsi_dask.io.metadata import detector_fwhm

    assert detector_fwhm(8.22, 130.0) < 0.18 < detector_fwhm(8.22, 200.0)
    e, y = _peaks([8.046 + 0.18], [1.0])
    assert label_peaks(e, y, elements=["Cu"], resolution_mnka_ev=130.0)[0][2] == ""
    assert label_peaks(e, y, elements=["Cu"], resolution_mnka_ev=200.0)[0][2] == "Cu Ka"
    with pytest.raises(ValueError, match="resolution"):
        label_peaks(e, y, elements=["Cu"], resolution_mnka_ev=-5)


def test_parse_elements():
    assert parse_elements("fe, Cr ni") == ["Cr", "Fe", "Ni"]
    assert parse_elements(["O", "Al", "O"]) == ["Al", "O"]
    assert parse_elements(None) is None
    with pytest.raises(ParameterError, match="'Xx'"):
        parse_elements("Fe,Xx")
    with pytest.raises(ParameterError, match="empty"):
        label_peaks(*_peaks([6.4], [1.0]), elements=[])


def test_component_labels():
    e, al = _peaks([1.486], [1.0])
    _, ag = _peaks([2.984, 3.151], [1.0, 0.5])
    names = component_labels(e, np.stack([al, -ag, np.zeros_like(e)]), elements=BRUKER)
    assert names == ["Al Ka", "Ag La + Ag Lb", ""]
    assert component_labels(e, al[None]) == ["Al Ka"]  # no list: every element


def test_label_options_from_attrs():
    assert label_options({"elements": ["Al", "Cu"], "energy_resolution_MnKa": 133.0}) == {
        "elements": ["Al", "Cu"], "resolution_mnka_ev": 133.0}
    # resolution differing between source files: the widest, so that no line is missed
    assert label_options({"elements": None, "energy_resolution_MnKa": [128.0, None, 135.0]})["resolution_mnka_ev"] == 135.0
    # the analyst's list replaces the file's
    assert label_options({"elements": ["Al", "Cu"]}, elements="Fe,cr") == {"elements": ["Cr", "Fe"], "resolution_mnka_ev": None}
    with pytest.raises(ParameterError, match="'Q'"):
        label_options({}, elements="Fe,Q")


# ---- on the real maps ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _real(name: str, root: str, solver: str):
    import xsi_dask

    from .conftest import EDS

    m = xsi_dask.open_montage(xsi_dask.ingest(EDS / name, f"{root}/{name}.zarr", progress=False))
    total = sum(np.asarray(m.xsi.tile_csr(t).to_scipy().sum(axis=0), dtype=float).ravel() for t in m.xsi.tiles)
    svd = xsi_dask.decompose(m, 4, solver=solver)
    return m, np.asarray(m["energy"].values), total, np.asarray(svd["loadings"].values)


@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("lines"))


def _elements_of_rsciio(name: str) -> list[str]:
    from rsciio.bruker import file_reader

    from .conftest import EDS

    si = [s for s in file_reader(str(EDS / name)) if s["data"].ndim == 3][0]
    return list(si["metadata"]["Sample"]["elements"])


@pytest.mark.usefixtures("needs_data")
def test_bruker_labels_come_from_the_files_elements(real_root):
    m, e, total, loadings = _real("bcf_v2_50x50px.bcf", real_root, "gram")
    opts = label_options(m.attrs)
    assert opts["elements"] == sorted(_elements_of_rsciio("bcf_v2_50x50px.bcf")) == BRUKER
    peaks = label_peaks(e, total, n_peaks=12, prominence=0.003, **opts)
    named = {lab: en for en, _, lab in peaks if lab}
    for label, where in {"C Ka": 0.277, "O Ka": 0.525, "Cu La": 0.93, "Al Ka": 1.49, "Ag Ll": 2.63, "Ag La": 2.98,
                         "Ag Lb": 3.15, "Cu Ka": 8.05}.items():
        assert named[label] == pytest.approx(where, abs=0.02), label
    assert not any(en < 0.1 and lab for en, _, lab in peaks)  # the zero peak is no element's line
    for y in [total, *loadings]:
        labels = [lab for _, _, lab in label_peaks(e, y, n_peaks=12, prominence=0.01, **opts) if lab]
        assert labels and {lab.split()[0] for lab in labels} <= set(BRUKER), labels
    names = component_labels(e, loadings, **opts)
    assert all(set(part.split()[0] for part in n.split(" + ") if part) <= set(BRUKER) for n in names)
    assert "Ag La" in " ".join(names) and "Ar" not in " ".join(names)
    # without the list (old behaviour): the 2.98 keV peak is Ar Ka
    assert {lab for _, _, lab in label_peaks(e, total)} >= {"Ar Ka", "Al Ka"}


@pytest.mark.usefixtures("needs_data")
def test_hitachi_shows_no_neon(real_root):
    m, e, total, loadings = _real("Hitachi_TM3030Plus.bcf", real_root, "randomized")
    opts = label_options(m.attrs)
    assert opts["elements"] == ["Al", "Cu"]
    named = {lab: en for en, _, lab in label_peaks(e, total, **opts) if lab}
    assert named["Cu La"] == pytest.approx(0.93, abs=0.02) and named["Cu Ka"] == pytest.approx(8.04, abs=0.02)
    for y in [total, *loadings]:
        labels = [lab for _, _, lab in label_peaks(e, y, n_peaks=12, prominence=0.01, **opts) if lab]
        assert {lab.split()[0] for lab in labels} <= {"Al", "Cu"}, labels
    assert not any("Ne" in n for n in component_labels(e, loadings, **opts))
