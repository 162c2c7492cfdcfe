"""The tile-pass engine every algorithm plugs into: a plan built from the view, and three verbs.

See :mod:`xsi_dask.engine.plan` (plan, reduction and map passes),
:mod:`xsi_dask.engine.resources` (a task on a worker offering a resource) and
:mod:`xsi_dask.engine.backends` (the kernel backend seam).
"""

from .backends import available_backends, get_backend, register_backend, register_lazy
from .plan import Block, PassRecord, Plan, Source, Unit, make_plan, split_units, tile_pixel_weights, tree_sum, worker_addresses
from .resources import run_on_resource, worker_resources

__all__ = [
    "Block", "PassRecord", "Plan", "Source", "Unit", "make_plan", "split_units", "tile_pixel_weights", "tree_sum",
    "worker_addresses", "run_on_resource", "worker_resources", "available_backends", "get_backend",
    "register_backend", "register_lazy",
]
