"""X-ray line labels come from xraydb and use the context of the other peaks."""

import numpy as np
import pytest

from xsi_dask.plotting.lines import label_peaks, line_table


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
