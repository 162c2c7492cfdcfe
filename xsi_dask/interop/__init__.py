"""Exchange with other tools: HyperSpy / exspy signals (:mod:`xsi_dask.interop.hyperspy`).

HyperSpy and exspy are optional (``pip install xsi_dask[hyperspy]``); they are
imported only when a conversion is called.
"""

from .hyperspy import from_hyperspy, results_to_hyperspy, to_hyperspy

__all__ = ["from_hyperspy", "results_to_hyperspy", "to_hyperspy"]
