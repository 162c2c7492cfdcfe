"""The EDS analyst's routine end to end, with the defaults: zero peak out, endmembers from the data, labels from the
file's elements (issue #10's acceptance on the real Bruker and Velox maps)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from xsi_dask.cli.main import main
from xsi_dask.io.results import open_results
from xsi_dask.plotting import figures
from xsi_dask.plotting.lines import component_labels, label_options

from .conftest import EDS

pytestmark = pytest.mark.usefixtures("needs_data")


def _elements(label: str) -> set[str]:
    """Element symbols of a label such as "Al Ka + Ag La"."""
    return set(re.findall(r"\b([A-Z][a-z]?) (?:K|L|M)[a-z]*", label))


@pytest.fixture
def drawn_peaks(monkeypatch):
    """Every (energy, height, label) the figures annotate during the test."""
    seen: list[tuple[float, float, str]] = []
    real = figures._peak_annotations

    def record(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.extend(out)
        return out

    monkeypatch.setattr(figures, "_peak_annotations", record)
    return seen


def test_bruker_run_picks_the_components_and_names_them_from_the_file(tmp_path, drawn_peaks):
    out = tmp_path / "run"
    assert main(["run", str(EDS / "bcf_v2_50x50px.bcf"), "--out", str(out), "--quiet"]) == 0
    svd, nmf = open_results(out / "results.zarr", "svd"), open_results(out / "results.zarr", "nmf")
    # the zero (strobe) peak, 17 % of the counts, is not analysed: no endmember can be it
    assert nmf.attrs["zero_peak_cutoff"] > 0.12 and float(nmf.energy.min()) >= nmf.attrs["zero_peak_cutoff"]
    # the number of endmembers came from the scree, within the floor and cap
    assert nmf.attrs["n_components_source"] == "n_significant"
    assert nmf.sizes["component"] == max(2, min(12, svd.attrs["n_significant"]))
    listed = {"Ag", "Al", "C", "Cu", "O"}
    labels = component_labels(nmf.energy.values, nmf.spectra.values, **label_options(nmf.attrs))
    named = [_elements(lab) for lab in labels]
    assert all(n <= listed for n in named), labels
    assert any("Al" in n for n in named) and any("Ag" in n for n in named), labels
    # every peak any figure labelled belongs to an element of the file's list
    assert drawn_peaks and all(_elements(lab) <= listed and _elements(lab) for _, _, lab in drawn_peaks), drawn_peaks
    html = (out / "report.html").read_text()
    assert "Ar K" not in html and "Cl K" not in html


def test_velox_run_names_no_light_element_from_the_zero_peak(tmp_path, drawn_peaks):
    out = tmp_path / "run"
    assert main(["run", str(EDS / "velox_test_SI_16x16.emd"), "--out", str(out), "--quiet"]) == 0
    nmf = open_results(out / "results.zarr", "nmf")
    labels = component_labels(nmf.energy.values, nmf.spectra.values, **label_options(nmf.attrs))
    assert not any({"Be", "B"} & _elements(lab) for lab in labels), labels
    assert not any({"Be", "B"} & _elements(lab) for _, _, lab in drawn_peaks), drawn_peaks
    assert float(np.min(nmf.energy.values)) >= nmf.attrs["zero_peak_cutoff"]
