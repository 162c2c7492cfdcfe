"""Bad input gives the package's own error, naming what is at fault, and leaves no store."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import xsi_dask
from xsi_dask import errors
from xsi_dask.cli.main import main

from .conftest import EDS, assert_no_store, write_rpl_tiles

pytestmark = pytest.mark.usefixtures("needs_data")


def test_missing_file(tmp_path):
    out = tmp_path / "m.zarr"
    with pytest.raises(errors.InputFileNotFoundError, match="nope.bcf"):
        xsi_dask.ingest(tmp_path / "nope.bcf", out, progress=False)
    assert_no_store(out)


def test_unsupported_format(tmp_path):
    f = tmp_path / "spectrum.txt"
    f.write_text("1 2 3")
    out = tmp_path / "m.zarr"
    with pytest.raises(errors.UnsupportedFormatError, match=r"spectrum\.txt.*'\.txt'"):
        xsi_dask.ingest(f, out, progress=False)
    assert_no_store(out)


@pytest.mark.parametrize("name", ["P45_the_default_job.bcf", "velox_test_SI_16x16.emd", "jeol_View000_0000006.pts"])
def test_truncated_file(name, tmp_path):
    src = EDS / name
    bad = tmp_path / f"truncated{src.suffix}"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    out = tmp_path / "m.zarr"
    with pytest.raises((errors.CorruptFileError, errors.NoSpectrumImageError), match="truncated"):
        xsi_dask.ingest(bad, out, progress=False)
    assert_no_store(out)


def test_no_spectrum_image(tmp_path):
    out = tmp_path / "m.zarr"
    with pytest.raises(errors.NoSpectrumImageError, match="CuZn_HAADF"):
        xsi_dask.ingest(EDS.parent / "eels" / "CuZn_HAADF.hspy", out, progress=False)
    assert_no_store(out)


def test_calibration_mismatch_names_tile(tmp_path):
    # tile 3 is shifted by 5 channels (50 eV)
    write_rpl_tiles("test_TEM.bcf", (2, 2), tmp_path, energy_offset_shift={3: 0.05})
    out = tmp_path / "m.zarr"
    with pytest.raises(errors.CalibrationMismatchError, match=r"tile 3 \(row 1, col 1.*tile_r1_c1\.rpl.*offset -0\.425"):
        xsi_dask.ingest([str(tmp_path / "tile_*.rpl")], out, grid="2x2", progress=False)
    assert_no_store(out)


def test_calibration_within_tolerance_is_accepted(tmp_path):
    write_rpl_tiles("test_TEM.bcf", (2, 2), tmp_path, energy_offset_shift={3: 0.0005})  # 0.05 channel
    store = xsi_dask.ingest([str(tmp_path / "tile_*.rpl")], tmp_path / "m.zarr", grid="2x2", progress=False)
    assert store.n_tiles == 4


def test_tile_shape_mismatch(tmp_path):
    out = tmp_path / "m.zarr"
    with pytest.raises(errors.TileShapeMismatchError, match="bcf-edx-ebsd.bcf"):
        xsi_dask.ingest([EDS / "P45_the_default_job.bcf", EDS / "bcf-edx-ebsd.bcf"], out, grid="1x2", progress=False)
    assert_no_store(out)


def test_grid_does_not_match_files(tmp_path):
    out = tmp_path / "m.zarr"
    with pytest.raises(errors.LayoutError, match="grid 2x2 needs 4 tile files but 2"):
        xsi_dask.ingest([EDS / "test_TEM.bcf", EDS / "P45_the_default_job.bcf"], out, grid="2x2", progress=False)
    assert_no_store(out)


def test_several_files_without_layout(tmp_path):
    with pytest.raises(errors.LayoutError, match="--grid"):
        xsi_dask.ingest([EDS / "test_TEM.bcf", EDS / "P45_the_default_job.bcf"], tmp_path / "m.zarr", progress=False)


def _manifest(tmp_path, rows):
    paths = write_rpl_tiles("test_TEM.bcf", (2, 2), tmp_path)
    f = tmp_path / "m.csv"
    f.write_text("path,row,col\n" + "".join(f"{paths[k].name},{r},{c}\n" for k, r, c in rows))
    return f


def test_manifest_duplicate_position(tmp_path):
    f = _manifest(tmp_path, [(0, 0, 0), (1, 0, 1), (2, 0, 1), (3, 1, 1)])
    out = tmp_path / "m.zarr"
    with pytest.raises(errors.LayoutError, match=r"\(row 0, col 1\) is given twice.*tile_r0_c1.*tile_r1_c0"):
        xsi_dask.ingest(None, out, manifest=f, progress=False)
    assert_no_store(out)


def test_manifest_missing_position(tmp_path):
    f = _manifest(tmp_path, [(0, 0, 0), (1, 0, 1), (3, 1, 1)])
    out = tmp_path / "m.zarr"
    with pytest.raises(errors.LayoutError, match=r"1 missing position\(s\): \(row 1, col 0\)"):
        xsi_dask.ingest(None, out, manifest=f, progress=False)
    assert_no_store(out)


def test_split_does_not_divide(tmp_path):
    out = tmp_path / "m.zarr"
    with pytest.raises(errors.LayoutError, match=r"P45_the_default_job.bcf: a 75x100 px map cannot be split 4x4: its height \(75 px\)"):
        xsi_dask.ingest(EDS / "P45_the_default_job.bcf", out, split="4x4", progress=False)
    assert_no_store(out)


def test_existing_store_refused_then_overwritten(tmp_path):
    out = tmp_path / "m.zarr"
    first = xsi_dask.ingest(EDS / "test_TEM.bcf", out, progress=False)
    with pytest.raises(errors.StoreExistsError, match="--overwrite"):
        xsi_dask.ingest(EDS / "P45_the_default_job.bcf", out, progress=False)
    assert xsi_dask.MontageStore(out).uuid == first.uuid
    second = xsi_dask.ingest(EDS / "P45_the_default_job.bcf", out, overwrite=True, progress=False)
    assert second.uuid != first.uuid and second.tile_shape == (75, 100)
    assert [p.name for p in tmp_path.iterdir()] == ["m.zarr"]


def test_failed_overwrite_keeps_old_store(tmp_path):
    out = tmp_path / "m.zarr"
    first = xsi_dask.ingest(EDS / "test_TEM.bcf", out, progress=False)
    with pytest.raises(errors.LayoutError):
        xsi_dask.ingest(EDS / "P45_the_default_job.bcf", out, split="4x4", overwrite=True, progress=False)
    assert xsi_dask.MontageStore(out).uuid == first.uuid


def test_negative_counts(tmp_path):
    from .conftest import reference_si, write_rpl

    data, axes = reference_si("test_TEM.bcf")
    bad = data.astype(np.int32)
    bad[5, 7, 100] = -3
    write_rpl(tmp_path / "neg.rpl", bad, [dict(a) for a in axes])
    out = tmp_path / "m.zarr"
    with pytest.raises(errors.CountsError, match="neg.rpl: negative value -3"):
        xsi_dask.ingest(tmp_path / "neg.rpl", out, progress=False)
    assert_no_store(out)


def test_non_integer_counts(tmp_path):
    from .conftest import reference_si, write_rpl

    data, axes = reference_si("test_TEM.bcf")
    bad = data.astype(np.float32)
    bad[1, 2, 300] = 0.5
    write_rpl(tmp_path / "float.rpl", bad, [dict(a) for a in axes])
    out = tmp_path / "m.zarr"
    with pytest.raises(errors.CountsError, match="float.rpl: non-integer value 0.5"):
        xsi_dask.ingest(tmp_path / "float.rpl", out, progress=False)
    assert_no_store(out)


def test_cli_reports_error_and_exit_code(tmp_path, capsys):
    rc = main(["ingest", str(EDS / "P45_the_default_job.bcf"), "--out", str(tmp_path / "m.zarr"), "--split", "4x4"])
    assert rc == 2
    assert "cannot be split 4x4" in capsys.readouterr().err
    assert_no_store(tmp_path / "m.zarr")


def test_not_a_store(tmp_path):
    with pytest.raises(errors.StoreFormatError):
        xsi_dask.open_montage(tmp_path)
    shutil.copy(EDS / "test_TEM.bcf", tmp_path / "x.bcf")
    with pytest.raises(errors.StoreFormatError):
        xsi_dask.open_montage(tmp_path / "x.bcf")
