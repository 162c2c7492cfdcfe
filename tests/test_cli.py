"""The command line: ingest then info."""

import json

import pytest

from xsi_dask.cli.main import main

from .conftest import EDS

pytestmark = pytest.mark.usefixtures("needs_data")


def test_ingest_and_info(tmp_path, capsys):
    out = tmp_path / "p45.zarr"
    assert main(["ingest", str(EDS / "P45_the_default_job.bcf"), "--out", str(out), "--split", "3x4", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "12 on a 3x4 grid" in text and "total counts     165,941" in text
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tiles"] == 12 and info["shape"] == [12, 25, 25, 2048]
    assert info["total_counts"] == 165941
    assert info["energy"]["units"] == "keV"
