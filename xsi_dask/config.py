"""Package configuration merged into ``dask.config`` under the ``xsi-dask`` key.

Override any value the dask way: ``dask.config.set({"xsi-dask.tile-cache": "4 GiB"})``,
an ``~/.config/dask/xsi-dask.yaml``, or ``DASK_XSI_DASK__TILE_CACHE=4GiB``.
"""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml
from dask.utils import parse_bytes

_fn = os.path.join(os.path.dirname(__file__), "xsi-dask.yaml")
with open(_fn) as _f:
    _defaults = yaml.safe_load(_f)
dask.config.update_defaults(_defaults)


def get(key: str, value: Any = None) -> Any:
    """Return ``value`` if given, else the configured ``xsi-dask.<key>``."""
    if value is not None:
        return value
    return dask.config.get(f"xsi-dask.{key}")


def get_bytes(key: str, value: Any = None) -> int:
    """Like :func:`get` for a size (``"2 GiB"`` or an integer)."""
    v = get(key, value)
    return int(v) if isinstance(v, (int, float)) else parse_bytes(v)
