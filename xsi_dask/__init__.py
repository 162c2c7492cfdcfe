"""xsi_dask: multivariate statistical analysis of sparse X-ray spectrum-image montages."""

from ._version import __version__
from . import config  # noqa: F401  (merges the package defaults into dask.config)
from .errors import XSIError
from .io.ingest import ingest
from .io.store import MontageStore
from .montage.view import open_montage
from .decomposition import decompose, nmf

__all__ = ["__version__", "XSIError", "MontageStore", "ingest", "open_montage", "decompose", "nmf"]
