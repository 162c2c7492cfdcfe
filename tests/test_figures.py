"""Figures are drawn on matplotlib.figure.Figure: no pyplot, no backend switch, valid PNGs of the expected size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib import image as matplotlib_image

from xsi_dask.plotting import figures

_ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (MPLBACKEND unset, this worktree first on the path); return stdout."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=_ROOT)
    return out.stdout.strip()


def test_import_leaves_backend_and_pyplot_alone():
    # matplotlib.get_backend() itself imports pyplot (to resolve the automatic backend), so look at
    # sys.modules first, then compare the backend with a fresh interpreter's
    fresh = _python("import matplotlib; print(matplotlib.get_backend())")
    after = _python(
        "import sys, matplotlib\n"
        "import xsi_dask.plotting.figures\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "print(matplotlib.get_backend())"
    )
    assert after == fresh


def test_import_keeps_a_backend_the_user_chose():
    chosen = _python("import matplotlib\nmatplotlib.use('svg')\nimport xsi_dask.plotting.figures\nprint(matplotlib.get_backend())")
    assert chosen == "svg"


def test_drawing_does_not_import_pyplot(tmp_path):
    code = (
        "import sys\nfrom pathlib import Path\nimport numpy as np, xarray as xr\n"
        "from xsi_dask.plotting import figures\n"
        f"figures.save(figures.draw_scree(xr.Dataset({{'explained_variance_ratio': ('component', np.array([0.5, 0.2, 0.1]))}})), "
        f"Path({str(tmp_path / 's.png')!r}))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\nprint('ok')"
    )
    assert _python(code) == "ok"


def _maps_coords(grid=(2, 2), h=12, w=16):
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    return {"tile": np.arange(rows.size), "row": ("tile", rows), "col": ("tile", cols), "y": np.arange(h), "x": np.arange(w)}, rows.size, h, w


def _energy(n=400):
    return np.linspace(0.0, 10.0, n)


def _peaks(e, centres):
    return sum(np.exp(-0.5 * ((e - c) / 0.05) ** 2) for c in centres)


@pytest.fixture
def svd():
    rng = np.random.default_rng(0)
    coords, nt, h, w = _maps_coords()
    e = _energy()
    k = 5
    loadings = np.stack([_peaks(e, c) for c in ([6.40, 7.06], [5.41], [1.49], [1.74], [0.28])]) * rng.choice([-1, 1], (k, 1))
    sv = np.array([100.0, 40.0, 15.0, 6.0, 2.0])
    return xr.Dataset(
        {
            "singular_values": ("component", sv),
            "explained_variance_ratio": ("component", sv**2 / 20000.0),
            "loadings": (("component", "energy"), loadings),
            "scores": (("tile", "y", "x", "component"), rng.normal(size=(nt, h, w, k))),
            "eigenvalues": ("rank", np.sort(rng.exponential(size=50))[::-1] * 100),
        },
        coords={"component": np.arange(k), "energy": e, **coords},
        attrs={"method": "Poisson-scaled SVD", "solver": "gram", "total_scaled_variance": 20000.0},
    )


@pytest.fixture
def nmf():
    rng = np.random.default_rng(1)
    coords, nt, h, w = _maps_coords()
    e = _energy()
    spectra = np.stack([_peaks(e, c) + 0.01 for c in ([6.40, 7.06], [5.41, 5.95], [1.49])])
    spectra /= spectra.sum(1, keepdims=True)
    return xr.Dataset(
        {
            "spectra": (("component", "energy"), spectra),
            "abundances": (("tile", "y", "x", "component"), rng.gamma(2.0, 50.0, size=(nt, h, w, 3))),
            "loss": ("iteration", 1e6 / np.arange(1, 21)),
        },
        coords={"component": np.arange(3), "iteration": np.arange(20), "energy": e, **coords},
        attrs={"method": "NMF", "loss_function": "generalized Kullback-Leibler (Poisson)"},
    )


def _check_png(path: Path, size_in: tuple[float, float]) -> None:
    assert path.is_file() and path.stat().st_size > 0
    img = matplotlib_image.imread(path)  # raises on a corrupt file
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    w_in, h_in = size_in
    assert img.shape[:2] == (round(h_in * figures._DPI), round(w_in * figures._DPI))
    assert np.ptp(img[..., :3]) > 0  # something was drawn


def test_save_all_writes_every_figure(tmp_path, svd, nmf):
    paths = figures.save_all(tmp_path / "figs", svd, nmf)
    names = ["scree.png", "loadings.png", "scores.png", "nmf_spectra.png", "nmf_abundances.png", "nmf_rgb.png", "nmf_loss.png"]
    assert [p.name for p in paths] == names
    # the mosaic is 2 x 2 tiles of 12 x 16 px: 24 x 32, aspect 0.75
    sizes = {
        "scree.png": (6.5, 4),
        "loadings.png": (9, 1.6 * 5 + 0.8),
        "scores.png": (3.2 * 4, 3.2 * 2 * 0.75 + 0.6),
        "nmf_spectra.png": (9, 1.6 * 3 + 0.8),
        "nmf_abundances.png": (max(3.2 * 3, 6.4), 3.2 * 1 * 0.75 + 0.6),
        "nmf_rgb.png": (6, 6 * 0.75 + 0.6),
        "nmf_loss.png": (5.5, 3.5),
    }
    for p in paths:
        _check_png(p, sizes[p.name])


def test_each_figure_on_its_own(tmp_path, svd, nmf):
    figures.save(figures.draw_scree(svd.drop_vars("eigenvalues")), tmp_path / "scree.png")
    _check_png(tmp_path / "scree.png", (6.5, 4))
    e = svd["energy"].values
    figures.save(figures.draw_spectra(e, nmf["spectra"].values[:2], title="t", ylabel="y"), tmp_path / "sp.png")
    _check_png(tmp_path / "sp.png", (9, 1.6 * 2 + 0.8))
    mos = figures.mosaic(nmf["abundances"], max_px=16)  # 24 x 32 px, block-averaged by 2
    assert mos.shape == (12, 16, 3) and np.isfinite(mos).all()
    figures.save(figures.draw_maps(mos[:, :, :1], title="one map"), tmp_path / "one.png")
    _check_png(tmp_path / "one.png", (6.4, 3.2 * 0.75 + 0.6))
    figures.save(figures.draw_rgb(mos, components=(2, 1, 0)), tmp_path / "rgb.png")
    _check_png(tmp_path / "rgb.png", (6, 6 * 0.75 + 0.6))
    figures.save(figures.draw_loss(nmf), tmp_path / "loss.png")
    _check_png(tmp_path / "loss.png", (5.5, 3.5))


def test_pages():
    assert figures.pages(10, 8) == [range(0, 8), range(8, 10)]
    assert figures.pages(8, 8) == [range(0, 8)]
    assert figures.pages(3, 1) == [range(0, 1), range(1, 2), range(2, 3)]
    assert figures.pages(0, 8) == []
    with pytest.raises(ValueError, match="per_page"):
        figures.pages(3, 0)


def test_every_component_on_some_page(tmp_path, svd, nmf):
    """5 loadings, 3 endmembers, 2 a page: 3 + 2 pages of each kind, and every panel titled by its component."""
    paths = figures.save_all(tmp_path, svd, nmf, per_page=2)
    names = [p.name for p in paths]
    assert names == ["scree.png", "loadings.png", "loadings_page2.png", "loadings_page3.png", "scores.png", "scores_page2.png",
                     "scores_page3.png", "nmf_spectra.png", "nmf_spectra_page2.png", "nmf_abundances.png",
                     "nmf_abundances_page2.png", "nmf_rgb.png", "nmf_loss.png"]
    _check_png(tmp_path / "loadings_page3.png", (9, 1.6 * 1 + 0.8))  # the fifth loading alone
    _check_png(tmp_path / "scores_page3.png", (6.4, 3.2 * 0.75 + 0.6))
    # the component names are those of component_titles, in order
    titles = figures.component_titles(svd["energy"].values, svd["loadings"].values)
    assert [t.split()[0] for t in titles] == ["#0", "#1", "#2", "#3", "#4"]
    assert "Fe Ka" in titles[0]  # 6.40 keV
