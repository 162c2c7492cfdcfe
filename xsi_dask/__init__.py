"""xsi_dask: multivariate statistical analysis of sparse X-ray spectrum-image montages."""

from . import config  # noqa: F401  (merges the package defaults into dask.config)
from ._version import __version__
from .decomposition import decompose, ica, mcr, nmf, reconstruct, region_spectrum, rotate, segment
from .errors import XSIError
from .interop import from_hyperspy, results_to_hyperspy, to_hyperspy
from .io.ingest import ingest
from .io.store import MontageStore
from .montage.view import open_montage

__all__ = ["__version__", "XSIError", "MontageStore", "ingest", "open_montage", "decompose", "nmf", "reconstruct",
           "region_spectrum", "rotate", "mcr", "ica", "segment", "to_hyperspy", "from_hyperspy", "results_to_hyperspy"]
