"""xsi_dask: multivariate statistical analysis of sparse X-ray spectrum-image montages."""

__version__ = "0.1.0"

from . import config  # noqa: E402,F401  (merges the package defaults into dask.config)
from .errors import XSIError  # noqa: E402
from .io.ingest import ingest  # noqa: E402
from .io.store import MontageStore  # noqa: E402
from .montage.view import open_montage  # noqa: E402
from .decomposition.svd import decompose  # noqa: E402
from .decomposition.nmf import nmf  # noqa: E402

__all__ = ["__version__", "XSIError", "MontageStore", "ingest", "open_montage", "decompose", "nmf"]
