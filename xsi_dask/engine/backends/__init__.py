"""The kernel backend seam: the per-tile kernels every pass calls, behind one small interface.

A backend is an object (a module works) with the functions below, all
functional (arrays in, arrays out) and all on one tile's stored CSR arrays in
their compact dtypes: ``indptr`` may be a slice ``tile_indptr[a:b + 1]`` of a
tile's row pointers (a row block: ``indptr[0]`` need not be 0), while
``indices`` and ``data`` are the tile's whole arrays, indexed by the pointers.
Notation: D (rows x channels) the counts of those rows, s (rows,) pixel
weights, all float64 unless said.

``gram_apply(indptr, indices, data, s, Xh) -> Y``
    Y = D^T diag(s) D Xh, shape (channels, l) for Xh (channels, l).
``colsum_frob(indptr, indices, data, s, channels) -> stats``
    stats (2, channels): [D^T sqrt(s), (D * D)^T s] per channel.
``gram_block(indptr, indices, data, s, channels) -> G``
    G = D^T diag(s) D as a dense (channels, channels) array.
``csr_dense(indptr, indices, data, X) -> out``
    out = D X, shape (rows, l) for X (channels, l).
``kl_mu_step(indptr, indices, data, W, Ht, denom_w, *, with_loss, lam, sqrt_s, with_h) -> (W, num_ht, w_sum, w_root, loss)``
    One Lee-Seung KL multiplicative update of W (rows, k) with H = Ht.T
    fixed (WH only at the non-zeros, clipped below at float32 eps), then with
    the new W the H numerator num_ht = (D / WH)^T W (channels, k) and w_sum =
    column sums of W (k,). With ``lam`` > 0 the L1/2 abundance penalty
    lam sum sqrt(W_ic s_c) joins the W update and w_root = sum_i sqrt(W_ic)
    (k,) is returned. ``loss``: sum d log(d / WH) with the W on entry when
    ``with_loss``, else 0. ``with_h=False``: W only (num_ht, w_sum zero).
    ``W`` may be overwritten: use the returned one.
``fro_mu_step(indptr, indices, data, W, Ht, HHt) -> (W, num_ht, wtw, cross)``
    One Frobenius MU update of W; num_ht = D^T W_new (channels, k),
    wtw = W_new^T W_new (k, k), cross = <W_entry, D H^T>. ``W`` may be
    overwritten.
``nmf_loss_terms(indptr, indices, data, W, Ht) -> (kl, cross, sq)``
    sum d log(d / WH) (WH clipped at float32 eps), sum d WH, sum d^2 over
    the non-zeros.

Backends are chosen by name with ``xsi-dask.backend`` in dask config
(``"numba"``, the default; ``"scipy"``, a plain reference on SciPy sparse
products; ``"cupy"``, the GPU backend, whose passes run on workers offering the
resource ``GPU``) and registered lazily, so a backend's imports (numba, CuPy)
happen only when it is selected (dask's ``register_lazy`` pattern).
:func:`backend_resources` gives the worker resources a backend's tasks hold,
without importing it (a driver without CuPy can plan GPU passes).
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any

import dask.config

from ...errors import BackendError

__all__ = ["KERNELS", "get_backend", "register_backend", "register_lazy", "available_backends", "backend_name",
           "backend_options", "backend_resources"]

# the functions every backend provides
KERNELS = ("gram_apply", "colsum_frob", "gram_block", "csr_dense", "kl_mu_step", "fro_mu_step", "nmf_loss_terms")

_backends: dict[str, Any] = {}
_configured: dict[tuple, Any] = {}
_lazy: dict[str, str] = {}
_lock = threading.Lock()


def register_backend(name: str, backend: Any) -> None:
    """Register ``backend`` (an object or module with :data:`KERNELS`) under ``name``."""
    missing = [k for k in KERNELS if not callable(getattr(backend, k, None))]
    if missing:
        raise BackendError(f"kernel backend {name!r} lacks {missing}")
    with _lock:
        _backends[name] = backend


def register_lazy(name: str, module: str) -> None:
    """Register backend ``name`` as the module ``module``, imported on first use."""
    with _lock:
        _lazy[name] = module


def available_backends() -> list[str]:
    """Names of the registered backends (imported or not)."""
    return sorted(set(_backends) | set(_lazy))


def backend_name(name: str | None = None) -> str:
    """``name``, or the configured ``xsi-dask.backend``; checked against the registry."""
    name = name if name is not None else dask.config.get("xsi-dask.backend", "numba")
    if name not in _backends and name not in _lazy:
        raise BackendError(f"unknown kernel backend {name!r}; available: {available_backends()} (set xsi-dask.backend)")
    return name


def get_backend(name: str | None = None, options: tuple[tuple[str, Any], ...] = ()) -> Any:
    """The kernel backend ``name`` (default: ``xsi-dask.backend`` in dask config), imported on first use.

    ``options`` (from :func:`backend_options`, recorded in the plan) bind the
    backend's settings, such as the cupy backend's compute dtype: a worker
    computes as the driver's config said when the plan was made, whatever its
    own config says.

    Raises
    ------
    BackendError
        No backend of that name, or its module cannot be imported (e.g. CuPy missing).
    """
    name = backend_name(name)
    if options:
        key = (name, options)
        hit = _configured.get(key)
        if hit is None:
            hit = _configured.setdefault(key, get_backend(name).configured(**dict(options)))
        return hit
    hit = _backends.get(name)
    if hit is not None:
        return hit
    try:
        module: ModuleType = importlib.import_module(_lazy[name])
    except ImportError as exc:
        hint = _INSTALL.get(name, "")
        raise BackendError(f"kernel backend {name!r} cannot be imported ({exc}){hint}") from exc
    register_backend(name, module)
    return module


def backend_resources(name: str | None = None) -> dict[str, float]:
    """Worker resources one task of backend ``name`` holds ({} for the CPU backends).

    ``"cupy"``: ``{"GPU": 1 / xsi-dask.gpu-tasks}``, a share of one GPU, so that
    that many tasks use a GPU worker at once (one computes while the next reads).
    """
    name = backend_name(name)
    if name != "cupy":
        return {}
    n = dask.config.get("xsi-dask.gpu-tasks", 2)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BackendError(f"xsi-dask.gpu-tasks must be an integer >= 1 (tasks sharing one GPU), got {n!r}")
    return {"GPU": 1.0 / n}


def backend_options(name: str | None = None) -> tuple[tuple[str, Any], ...]:
    """The settings of backend ``name`` from dask config, checked, as a plan records them (() for the CPU backends).

    ``"cupy"``: ``(("dtype", "float64"),)`` or float32, from ``xsi-dask.gpu-dtype``.

    Raises
    ------
    BackendError
        A setting the backend cannot honour.
    """
    name = backend_name(name)
    if name != "cupy":
        return ()
    dt = str(dask.config.get("xsi-dask.gpu-dtype", "float64"))
    if dt not in ("float64", "float32"):
        raise BackendError(f"xsi-dask.gpu-dtype must be 'float64' or 'float32', got {dt!r}")
    return (("dtype", dt),)


_INSTALL = {"cupy": "; install CuPy for your CUDA with the gpu extra: pip install 'xsi-dask[gpu]' (cupy-cuda12x)"}

register_lazy("numba", "xsi_dask.engine.backends._numba")
register_lazy("scipy", "xsi_dask.engine.backends._scipy")
register_lazy("cupy", "xsi_dask.engine.backends._cupy")
