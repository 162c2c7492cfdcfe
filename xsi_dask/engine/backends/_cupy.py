"""The ``"cupy"`` kernel backend: the tile kernels on an NVIDIA GPU, with CuPy and cuSPARSE.

Selected with ``xsi-dask.backend: cupy`` (or ``--backend cupy``); imported only
then, so CuPy (the ``gpu`` extra, ``cupy-cuda12x``) is never needed otherwise.
The functions keep the interface of :mod:`xsi_dask.engine.backends` (NumPy
arrays in, float64 NumPy arrays out), so every algorithm runs on it unchanged;
the passes run as tasks on workers that offer the resource ``GPU``
(:attr:`Plan.resources <xsi_dask.engine.plan.Plan>`).

Per call, a tile's CSR arrays go to the device in their compact dtypes
(uint16 channel indices, uint8/uint16 counts) and are widened there (int32
indices, counts in the compute dtype). Read-only host arrays, which the
workers' tile cache hands out, are mirrored: their widened device copies stay
in a device cache (LRU, bounded by ``xsi-dask.gpu-cache``, a share of the GPU's
memory) for as long as the host array lives, so every pass after the first
runs from device memory. Writable arrays are uploaded for each call.

The products are cuSPARSE's through ``cupyx``: D X and D^T Y by
``cupyx.cusparse.spmm`` (the transpose by its flag, never an explicit D^T),
D^T v by ``spmv``, D^T diag(s) D by SpGEMM. WH at the stored values only (the
KL steps and the loss) is a sampled dense-dense product: one thread per stored
value computes the dot of W[row] and Ht[channel] (an ``ElementwiseKernel``;
CuPy does not expose cuSPARSE's SDDMM).

Precision: ``xsi-dask.gpu-dtype`` (recorded in the plan, :func:`configured`) ``float64`` (default) computes as the CPU
backends do and agrees with them to about 1e-15 per kernel (summation order);
``float32`` halves the device memory and the bytes moved, and agrees to about
1e-6 relative per kernel (reductions over the stored values are accumulated in
float64). Measured figures: ``docs/benchmarks-gpu.md``.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict
from types import SimpleNamespace

import cupy as cp
import dask.config
import numpy as np
from cupyx import cusparse
from cupyx.scipy import sparse as csp

from . import KERNELS

__all__ = ["colsum_frob", "configured", "csr_dense", "device_cache", "fro_mu_step", "gram_apply", "gram_block",
           "kl_mu_step", "nmf_loss_terms"]

name = "cupy"

# the clipping constant of the CPU backends (scikit-learn's MU solver)
EPSILON = float(np.finfo(np.float32).eps)

_F64 = np.dtype(np.float64)


def configured(dtype: str = "float64") -> SimpleNamespace:
    """The kernels computing in ``dtype`` ("float64" or "float32"), as a backend object."""
    dt = np.dtype(dtype)
    if dt not in (np.float64, np.float32):
        raise ValueError(f"the cupy backend computes in float64 or float32, not {dt}")
    return SimpleNamespace(name=name, dtype=dt, **{k: functools.partial(globals()[k], dtype=dt) for k in KERNELS})


# ---- the device cache ----

def _root(a: np.ndarray) -> np.ndarray:
    """The last ndarray of ``a``'s base chain: it keeps the memory ``a`` views alive."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class DeviceCache:
    """Device copies of read-only host arrays, LRU, bounded by ``xsi-dask.gpu-cache`` of the GPU's memory.

    An entry is keyed by the host array's address, length, dtype and the
    device form asked for; it is dropped when its host array is freed (so an
    address reused by a new array never hits a stale copy). Host arrays that
    are writable are never cached: their contents may change between calls.
    """

    def __init__(self) -> None:
        self._items: OrderedDict[tuple, cp.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def budget(self) -> int:
        """``xsi-dask.gpu-cache`` (this worker's config: a share of its GPU's memory, 0 to 1) in bytes."""
        share = dask.config.get("xsi-dask.gpu-cache", 0.6)
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            from ...errors import BackendError

            raise BackendError(f"xsi-dask.gpu-cache must be a share of the GPU's memory between 0 and 1, got {share!r}")
        return int(share * cp.cuda.Device().mem_info[1])

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, host: np.ndarray, form: str, build) -> cp.ndarray:
        """``build(host)`` on the device, cached while ``host`` is read-only and alive."""
        if host.flags.writeable:
            return build(host)
        key = (host.__array_interface__["data"][0], host.size, host.dtype.str, form)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return hit
        value = build(host)
        budget = self.budget()
        with self._lock:
            self.misses += 1
            if value.nbytes <= budget and key not in self._items:
                self._items[key] = value
                self._bytes += value.nbytes
                weakref.finalize(_root(host), self._drop, key)
                while self._bytes > budget and self._items:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return value

    def _drop(self, key: tuple) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


device_cache = DeviceCache()


class _Tile:
    """The rows ``indptr`` addresses on the device: the cuSPARSE CSR of the counts, its row of each stored value."""

    __slots__ = ("A", "rows", "cols", "vals", "n", "channels", "dtype")

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, channels: int, dtype: np.dtype):
        ptr_host = np.asarray(indptr)
        lo, hi = int(ptr_host[0]), int(ptr_host[-1])
        self.n = ptr_host.size - 1
        self.channels = int(channels)
        self.dtype = dtype
        # widened on the device from the compact dtypes: a third of the bytes over the bus
        ind = device_cache.get(indices, "int32", lambda h: cp.asarray(h).astype(cp.int32))
        val = device_cache.get(data, dtype.str, lambda h: cp.asarray(h).astype(dtype))
        ptr = device_cache.get(ptr_host, "ptr", lambda h: (cp.asarray(h).astype(cp.int64) - lo).astype(cp.int32))
        self.cols = ind[lo:hi]
        self.vals = val[lo:hi]
        self.rows = device_cache.get(
            ptr_host, "rows", lambda h: (cp.searchsorted(ptr, cp.arange(hi - lo, dtype=cp.int32), side="right") - 1)
            .astype(cp.int32))
        self.A = self.matrix(self.vals, ptr)

    def matrix(self, values: cp.ndarray, ptr: cp.ndarray | None = None) -> csp.csr_matrix:
        """The CSR (rows, channels) of these rows with ``values`` at the stored positions."""
        ptr = self.A.indptr if ptr is None else ptr
        m = csp.csr_matrix((values, self.cols, ptr), shape=(self.n, self.channels))
        # canonical by construction: ingest and the view's transform write each pixel's channels increasing, once.
        # cupyx assumes not for arrays handed in (its spmm refuses them; its products would sort and sum
        # duplicates first, a pass over the tile per call), and has no public way to say so
        m._has_canonical_format = True
        m._has_sorted_indices = True
        return m

    @property
    def nnz(self) -> int:
        return int(self.vals.size)


def _dev(x, dtype: np.dtype) -> cp.ndarray:
    return cp.asarray(np.asarray(x), dtype=dtype)


def _weights(s, dt: np.dtype) -> cp.ndarray:
    """Pixel weights on the device: a slice of the tile cache's read-only weights stays there with the tile."""
    return device_cache.get(np.asarray(s), dt.str, lambda h: cp.asarray(h, dtype=dt))


def _host(x: cp.ndarray) -> np.ndarray:
    """A float64 C-ordered host copy (the CPU backends' layout; cuSPARSE's outputs are column-major)."""
    return cp.asnumpy(cp.ascontiguousarray(x)).astype(np.float64, copy=False)


def _spmm(A: csp.csr_matrix, X: cp.ndarray, transa: bool = False) -> cp.ndarray:
    """op(A) X with cuSPARSE's SpMM, op = transpose by the flag; X (channels or rows, l)."""
    m = A.shape[1] if transa else A.shape[0]
    if A.nnz == 0 or X.shape[1] == 0:
        return cp.zeros((m, X.shape[1]), dtype=X.dtype)
    return cusparse.spmm(A, cp.asfortranarray(X), transa=transa)


def _spmv(A: csp.csr_matrix, x: cp.ndarray, transa: bool = False) -> cp.ndarray:
    m = A.shape[1] if transa else A.shape[0]
    if A.nnz == 0:
        return cp.zeros(m, dtype=x.dtype)
    return cusparse.spmv(A, x, transa=transa)


# WH at the stored values: one thread per stored value, the dot of W[row] and Ht[channel], clipped below at eps
_sddmm = cp.ElementwiseKernel(
    "int32 r, int32 c, raw T W, raw T Ht, int32 k, T eps",
    "T wh",
    """
    const long long a = (long long) r * k, b = (long long) c * k;
    T acc = 0;
    for (int j = 0; j < k; ++j) acc += W[a + j] * Ht[b + j];
    wh = acc < eps ? eps : acc;
    """,
    "xsi_dask_sddmm",
)


def _wh(t: _Tile, W: cp.ndarray, Ht: cp.ndarray, clip: bool = True) -> cp.ndarray:
    eps = EPSILON if clip else -np.inf
    return _sddmm(t.rows, t.cols, W, Ht, np.int32(W.shape[1]), t.dtype.type(eps))


# ---- the kernels ----

def gram_apply(indptr, indices, data, s, Xh, *, dtype=_F64):
    dt = dtype
    t = _Tile(indptr, indices, data, Xh.shape[0], dt)
    Z = _spmm(t.A, _dev(Xh, dt))
    Z *= _weights(s, dt)[:, None]
    return _host(_spmm(t.A, Z, transa=True))


def colsum_frob(indptr, indices, data, s, channels, *, dtype=_F64):
    dt = dtype
    t = _Tile(indptr, indices, data, channels, dt)
    sd = _weights(s, dt)
    first = _spmv(t.A, cp.sqrt(sd), transa=True)
    second = _spmv(t.matrix(t.vals * t.vals), sd, transa=True)
    return _host(cp.stack([first, second]))


def gram_block(indptr, indices, data, s, channels, *, dtype=_F64):
    dt = dtype
    t = _Tile(indptr, indices, data, channels, dt)
    if t.nnz == 0:
        return np.zeros((channels, channels))
    sd = _weights(s, dt)
    At = t.A.T.tocsr()
    As = t.matrix(t.vals * sd[t.rows])
    return _host((At @ As).toarray())


def csr_dense(indptr, indices, data, X, *, dtype=_F64):
    dt = dtype
    t = _Tile(indptr, indices, data, X.shape[0], dt)
    return _host(_spmm(t.A, _dev(X, dt)))


def kl_mu_step(indptr, indices, data, W, Ht, denom_w, *, with_loss=False, lam=0.0, sqrt_s=None, with_h=True,
               dtype=_F64):
    dt = dtype
    channels, k = Ht.shape
    t = _Tile(indptr, indices, data, channels, dt)
    W0 = cp.ascontiguousarray(_dev(W, dt))
    Hd = cp.ascontiguousarray(_dev(Ht, dt))
    den = _dev(denom_w, dt)

    # W update with H fixed: W <- W * ((D / WH) H^T) / denom
    wh = _wh(t, W0, Hd)
    loss = float(cp.sum(t.vals * cp.log(t.vals / wh), dtype=cp.float64)) if with_loss else 0.0
    num = _spmm(t.matrix(t.vals / wh), Hd)
    w_root = np.zeros(k)
    if lam > 0.0:
        ss = _dev(np.zeros(k) if sqrt_s is None else sqrt_s, dt)
        pos = W0 > 0
        safe = cp.where(pos, W0, 1.0)
        Wn = cp.where(pos, W0 * num / (den + 0.5 * lam * ss / cp.sqrt(safe)), W0)
        w_root = _host(cp.sqrt(Wn).sum(axis=0, dtype=cp.float64))
    else:
        Wn = W0 * (num / den)
    Wn = cp.ascontiguousarray(Wn)

    num_ht = np.zeros((channels, k))
    w_sum = np.zeros(k)
    if with_h:
        # the H numerator (D / WH)^T W with the new W
        wh = _wh(t, Wn, Hd)
        num_ht = _host(_spmm(t.matrix(t.vals / wh), Wn, transa=True))
        w_sum = _host(Wn.sum(axis=0, dtype=cp.float64))
    return _host(Wn), num_ht, w_sum, w_root, loss


def fro_mu_step(indptr, indices, data, W, Ht, HHt, *, dtype=_F64):
    dt = dtype
    channels, k = Ht.shape
    t = _Tile(indptr, indices, data, channels, dt)
    W0 = _dev(W, dt)
    xht = _spmm(t.A, _dev(Ht, dt))
    cross = float(cp.sum(W0 * xht, dtype=cp.float64))
    den = W0 @ _dev(HHt, dt)
    den[den == 0] = EPSILON
    Wn = cp.ascontiguousarray(W0 * (xht / den))
    num_ht = _host(_spmm(t.A, Wn, transa=True))
    return _host(Wn), num_ht, _host(Wn.T @ Wn), cross


def nmf_loss_terms(indptr, indices, data, W, Ht, *, dtype=_F64):
    dt = dtype
    t = _Tile(indptr, indices, data, Ht.shape[0], dt)
    if t.nnz == 0:
        return 0.0, 0.0, 0.0
    wh = _wh(t, cp.ascontiguousarray(_dev(W, dt)), cp.ascontiguousarray(_dev(Ht, dt)), clip=False)
    v = t.vals
    kl = cp.sum(v * cp.log(v / cp.maximum(wh, EPSILON)), dtype=cp.float64)
    cross = cp.sum(v * wh, dtype=cp.float64)
    sq = cp.sum(v * v, dtype=cp.float64)
    return float(kl), float(cross), float(sq)
