"""Acquisition metadata: what RosettaSciIO reads from the files, in acquisition(), open_montage(...).attrs and `xsi-dask info`."""

from __future__ import annotations

import json

import numpy as np
import pytest

import xsi_dask
from xsi_dask.cli.main import main
from xsi_dask.io.metadata import DEFAULT_RESOLUTION_MNKA_EV, acquisition

from .conftest import EDS

BRUKER = "bcf_v2_50x50px.bcf"


def _rsciio_si(name: str) -> dict:
    """The EDS spectrum image signal dict RosettaSciIO's Bruker reader returns (no xsi_dask code)."""
    from rsciio.bruker import file_reader

    return [s for s in file_reader(str(EDS / name)) if s["data"].ndim == 3][0]


@pytest.fixture(scope="module")
def bruker_store(tmp_path_factory):
    if not EDS.is_dir():
        pytest.skip(f"real data not found at {EDS}")
    return xsi_dask.ingest(EDS / BRUKER, tmp_path_factory.mktemp("meta") / "b.zarr", progress=False)


@pytest.fixture(scope="module")
def two_files(tmp_path_factory):
    """A 1x2 montage of two .rpl tile files (RosettaSciIO's writer) whose beam energy, times and resolution differ."""
    from rsciio import ripple

    folder = tmp_path_factory.mktemp("rpl")
    rng = np.random.default_rng(0)
    axes = [
        {"name": "y", "size": 8, "offset": 0.0, "scale": 0.5, "units": "nm", "navigate": True},
        {"name": "x", "size": 8, "offset": 0.0, "scale": 0.5, "units": "nm", "navigate": True},
        {"name": "Energy", "size": 256, "offset": -0.1, "scale": 0.02, "units": "keV", "navigate": False},
    ]
    for k, (live, beam, res) in enumerate([(1.0, 200.0, 130.0), (2.5, 300.0, 135.0)]):
        eds = {"live_time": live, "energy_resolution_MnKa": res}
        ripple.file_writer(str(folder / f"tile_r0_c{k}.rpl"), {
            "data": rng.poisson(0.05, (8, 8, 256)).astype(np.uint16), "axes": axes, "original_metadata": {},
            "metadata": {"General": {"title": f"t{k}"}, "Signal": {"signal_type": "EDS_TEM"},
                         "Acquisition_instrument": {"TEM": {"beam_energy": beam, "Detector": {"EDS": eds}}}},
        })
    return xsi_dask.ingest([str(folder / "tile_r0_c*.rpl")], folder / "m.zarr", grid="1x2", progress=False)


def test_bruker_acquisition_equals_rsciio(bruker_store):
    ref = _rsciio_si(BRUKER)
    md, axes = ref["metadata"], ref["axes"]
    acq = acquisition(bruker_store)
    assert acq["signal_type"] == md["Signal"]["signal_type"] == "EDS_SEM"
    assert acq["beam_energy"] == md["Acquisition_instrument"]["SEM"]["beam_energy"] == 20.0
    assert acq["elements"] == sorted(md["Sample"]["elements"]) == ["Ag", "Al", "C", "Cu", "O"]
    assert acq["xray_lines"] == sorted(md["Sample"]["xray_lines"])
    eds = md["Acquisition_instrument"]["SEM"]["Detector"]["EDS"]
    assert acq["real_time"] == pytest.approx(eds["real_time"]) and "live_time" not in eds and acq["live_time"] is None
    assert acq["detector"] == eds["detector_type"]
    # the file records no resolution: exspy's default, and said so
    assert "energy_resolution_MnKa" not in eds
    assert acq["energy_resolution_MnKa"] == DEFAULT_RESOLUTION_MNKA_EV and acq["energy_resolution_MnKa_default"] is True
    e = axes[2]
    assert (acq["energy_offset"], acq["energy_scale"], acq["energy_channels"]) == (
        pytest.approx(e["offset"]), pytest.approx(e["scale"]), e["size"])
    assert acq["pixel_scale_y"] == pytest.approx(axes[0]["scale"]) and acq["pixel_units"] == axes[0]["units"]
    assert acq["varying"] == [] and acq["n_sources"] == 1
    assert acquisition(bruker_store.attrs) == acq  # the store or its attributes


def test_values_that_differ_are_never_the_first(two_files):
    acq = acquisition(two_files)
    assert acq["beam_energy"] == [200.0, 300.0]
    assert acq["energy_resolution_MnKa"] == [130.0, 135.0] and acq["energy_resolution_MnKa_default"] is False
    assert acq["live_time"] == pytest.approx(3.5) and acq["live_time_per_source"] == [1.0, 2.5]
    assert acq["real_time"] is None and acq["elements"] is None  # not recorded: None, never a guess
    assert set(acq["varying"]) == {"beam_energy", "live_time", "energy_resolution_MnKa"}


def test_partly_recorded_and_differing_element_lists():
    def src(elements, live):
        eds = {} if live is None else {"live_time": live}
        return {"signal_type": "EDS_SEM", "metadata": {"Sample": {"elements": elements},
                                                       "Acquisition_instrument": {"SEM": {"Detector": {"EDS": eds}}}}}

    attrs = {"sources": [src(["Fe", "Cr"], 1.0), src(["Ni", "Fe"], None)],
             "energy": {"size": 10, "offset": 0.0, "scale": 0.01, "units": "keV"},
             "pixels": {"scale_y": 1.0, "scale_x": 1.0, "units": "px"}}
    acq = acquisition(attrs)
    assert acq["elements"] == ["Cr", "Fe", "Ni"] and acq["elements_per_source"] == [["Cr", "Fe"], ["Fe", "Ni"]]
    assert acq["live_time"] == [1.0, None]  # a sum over one of two files would be silently short
    assert set(acq["varying"]) == {"elements", "live_time"}


def test_open_montage_attrs_carry_the_metadata(bruker_store, two_files):
    m = xsi_dask.open_montage(bruker_store)
    assert m.attrs["units"] == "counts" and m.attrs["store_uuid"] == bruker_store.uuid
    assert m.attrs["beam_energy"] == 20.0 and m.attrs["elements"] == ["Ag", "Al", "C", "Cu", "O"]
    assert m.attrs["signal_type"] == "EDS_SEM" and m.attrs["energy_resolution_MnKa"] == 130.0
    assert m.attrs["real_time"] == pytest.approx(19.2) and m.attrs["live_time"] is None
    json.dumps(m.attrs)  # flat, JSON (Zarr attribute) friendly
    assert m.isel(tile=[0]).attrs["elements"] == m.attrs["elements"]
    m2 = xsi_dask.open_montage(two_files)
    assert m2.attrs["beam_energy"] == [200.0, 300.0] and m2.attrs["live_time"] == pytest.approx(3.5)


def test_info_shows_the_metadata(bruker_store, two_files, capsys):
    assert main(["info", str(bruker_store.path)]) == 0
    text = capsys.readouterr().out
    assert "beam energy      20 keV" in text
    assert "elements         Ag, Al, C, Cu, O" in text
    assert "real time        19.2 s" in text and "live time        not recorded" in text
    assert "130 eV at Mn Ka (not recorded: exspy's default)" in text
    assert main(["info", str(bruker_store.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["acquisition"]["beam_energy"] == 20.0 and info["acquisition"]["elements"] == ["Ag", "Al", "C", "Cu", "O"]
    assert main(["info", str(two_files.path)]) == 0
    text = capsys.readouterr().out
    assert "beam energy      differs by source: 200, 300 keV" in text
    assert "live time        3.5 s" in text
    assert "differs by file  beam_energy, live_time, energy_resolution_MnKa" in text
