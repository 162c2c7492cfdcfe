"""Ingest of every real EDS file: counts, tiles and calibration exactly as RosettaSciIO reads them."""

from __future__ import annotations

import numpy as np
import pytest

import xsi_dask
from xsi_dask.io.readers import read_spectrum_image

from .conftest import EDS, EDS_FILES, reference_si, write_rpl_tiles

pytestmark = pytest.mark.usefixtures("needs_data")


def _check_store_against_file(store, name):
    data, axes = reference_si(name)
    assert store.info()["total_counts"] == int(data.sum(dtype=np.uint64))
    th, tw = store.tile_shape
    for t, tile in enumerate(store.tiles):
        y0, y1, x0, x1 = tile["window"]
        expected = data[y0:y1, x0:x1].reshape(th * tw, -1)
        got = store.tile_csr(t).to_scipy().toarray()
        np.testing.assert_array_equal(got, expected, err_msg=f"{name} tile {t}")
        np.testing.assert_array_equal(store.count_map(t), expected.sum(1).reshape(th, tw))
        np.testing.assert_array_equal(store.sum_spectrum(t), expected.sum(0))
    e = axes[2]
    factor = 1e-3 if e["units"] == "eV" else 1.0
    np.testing.assert_allclose(
        store.energy, (float(e["offset"]) + float(e["scale"]) * np.arange(int(e["size"]))) * factor, rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("name", sorted(EDS_FILES))
def test_ingest_whole_file(name, tmp_path):
    store = xsi_dask.ingest(EDS / name, tmp_path / "m.zarr", progress=False)
    assert store.n_tiles == 1
    _check_store_against_file(store, name)


@pytest.mark.parametrize("name", sorted(n for n, s in EDS_FILES.items() if s))
def test_ingest_split(name, tmp_path):
    split = EDS_FILES[name]
    store = xsi_dask.ingest(EDS / name, tmp_path / "m.zarr", split=split, progress=False)
    rows, cols = (int(v) for v in split.split("x"))
    assert store.n_tiles == rows * cols
    assert store.attrs["grid"] == [rows, cols]
    _check_store_against_file(store, name)


def test_compact_dtypes_and_binsparse(tmp_path):
    store = xsi_dask.ingest(EDS / "jeol_View000_0000006.pts", tmp_path / "j.zarr", split="4x4", progress=False)
    g = store.root["tiles/0"]
    assert g["indices_1"].dtype == np.uint16
    assert g["values"].dtype == np.uint8  # JEOL counts per voxel are <= 3
    bs = g.attrs["binsparse"]
    assert bs["format"] == "CSR" and bs["shape"] == [128 * 128, 4096]
    assert bs["number_of_stored_values"] == g["values"].shape[0]
    wide = xsi_dask.ingest(EDS / "30x30_instructively_packed_16bit_compressed.bcf", tmp_path / "w.zarr", progress=False)
    assert wide.root["tiles/0/values"].dtype == np.dtype(np.uint16)


def test_jeol_store_is_small(tmp_path):
    store = xsi_dask.ingest(EDS / "jeol_View000_0000006.pts", tmp_path / "j.zarr", split="4x4", progress=False)
    info = store.info()
    assert info["stored_bytes"] * 100 <= info["dense_float32_bytes"], info


def test_structural_images_and_metadata_kept(tmp_path):
    si = read_spectrum_image(EDS / "test_TEM.bcf")
    assert list(si.images) == ["HAADF"]
    assert si.metadata["Acquisition_instrument"]["TEM"]["beam_energy"] == pytest.approx(200.0)
    store = xsi_dask.ingest(EDS / "test_TEM.bcf", tmp_path / "t.zarr", split="2x2", progress=False)
    np.testing.assert_array_equal(store.image(3, "HAADF"), si.images["HAADF"][32:, 32:])
    assert store.attrs["sources"][0]["metadata"]["Acquisition_instrument"]["TEM"]["beam_energy"] == pytest.approx(200.0)
    assert "Stage" in store.root["sources/0"].attrs["original_metadata"]
    # a 1100x825 SEM overview of another shape is kept with its source
    v2 = xsi_dask.ingest(EDS / "bcf_v2_50x50px.bcf", tmp_path / "v2.zarr", progress=False)
    (name,) = list(v2.root["sources/0/images"].array_keys())
    assert v2.root[f"sources/0/images/{name}"].shape == (825, 1100)


def test_velox_picks_eds_not_eels(tmp_path):
    si = read_spectrum_image(EDS / "velox_EELS_EDS_128x128.emd")
    assert si.shape == (128, 128, 4096)
    assert si.signal_type.startswith("EDS")
    assert si.energy.offset == pytest.approx(-0.2) and si.energy.scale == pytest.approx(0.01)


def test_eels_energy_converted_to_kev(tmp_path):
    si = read_spectrum_image(EDS.parent / "eels" / "CuZn_EELS_mapping_tutorial.hspy")
    assert si.energy.offset == pytest.approx(0.7)  # 700 eV
    assert si.energy.scale == pytest.approx(0.008)  # 8 eV/channel


@pytest.mark.parametrize("how", ["grid", "manifest"])
def test_tile_files_equal_split(how, tmp_path):
    """A montage from separate tile files equals the same map cut with split (tiling changes nothing)."""
    paths = write_rpl_tiles("test_TEM.bcf", (2, 2), tmp_path)
    split = xsi_dask.ingest(EDS / "test_TEM.bcf", tmp_path / "s.zarr", split="2x2", progress=False)
    if how == "grid":
        # lazily read .rpl files are densified in row blocks: force several blocks per tile
        import dask

        with dask.config.set({"xsi-dask.ingest-block": 32 * 2048 * 3}):
            tiles = xsi_dask.ingest([str(tmp_path / "tile_r*_c*.rpl")], tmp_path / "g.zarr", grid="2x2", progress=False)
    else:
        manifest = tmp_path / "tiles.csv"
        manifest.write_text(
            "# stage_units: um\npath,row,col,stage_x,stage_y\n"
            + "".join(f"{p.name},{k // 2},{k % 2},{10.0 * (k % 2)},{10.0 * (k // 2)}\n" for k, p in reversed(list(enumerate(paths))))
        )
        tiles = xsi_dask.ingest(None, tmp_path / "g.zarr", manifest=manifest, progress=False)
        assert [t["stage_x"] for t in tiles.tiles] == [0.0, 10.0, 0.0, 10.0]
        assert tiles.attrs["stage_units"] == "um"
    for t in range(4):
        a, b = split.tile_csr(t), tiles.tile_csr(t)
        for field in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert [(t["row"], t["col"]) for t in tiles.tiles] == [(0, 0), (0, 1), (1, 0), (1, 1)]
