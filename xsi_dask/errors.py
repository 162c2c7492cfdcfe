"""Exception hierarchy of xsi_dask.

Every error the package raises on purpose derives from :class:`XSIError`, so a
caller can catch them all in one place; each also derives from the built-in
exception a Python user would expect (``FileNotFoundError``, ``ValueError``),
so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CalibrationMismatchError",
    "ClusterStalledError",
    "ClusterUnavailableError",
    "CorruptFileError",
    "CorruptStoreError",
    "CountsError",
    "DecompositionError",
    "InputFileNotFoundError",
    "InsufficientMemoryError",
    "LayoutError",
    "NoSpectrumImageError",
    "NotOurOutputError",
    "OptionalDependencyError",
    "OutputWriteError",
    "ParameterError",
    "ResourceUnavailableError",
    "StoreExistsError",
    "StoreFormatError",
    "TileShapeMismatchError",
    "UnsupportedFormatError",
    "ViewError",
    "WorkerLostError",
    "XSIError",
    "XSIWarning",
]


class XSIError(Exception):
    """Base class of every error raised by xsi_dask."""


class InputFileNotFoundError(XSIError, FileNotFoundError):
    """An input file (tile, manifest) does not exist."""


class UnsupportedFormatError(XSIError, ValueError):
    """The file extension has no RosettaSciIO reader registered in xsi_dask."""


class CorruptFileError(XSIError, OSError):
    """RosettaSciIO failed to read the file (truncated, corrupt, wrong content)."""


class NoSpectrumImageError(XSIError, ValueError):
    """The file holds no 3-D spectrum image (y, x, channels)."""


class CountsError(XSIError, ValueError):
    """The data are not counts: negative or non-integer values."""


class CalibrationMismatchError(XSIError, ValueError):
    """Tiles of one montage disagree on the energy calibration."""


class TileShapeMismatchError(XSIError, ValueError):
    """Tiles of one montage do not have the same (y, x) shape."""


class LayoutError(XSIError, ValueError):
    """The montage layout is invalid: grid, manifest or split definition."""


class StoreExistsError(XSIError, FileExistsError):
    """The output store exists and overwriting was not requested."""


class StoreFormatError(XSIError, ValueError):
    """A path is not an xsi_dask store, or has an unsupported format version."""


class CorruptStoreError(XSIError, OSError):
    """A montage store is damaged: a chunk that does not decode or whose checksum does not match,
    a missing tile, array or chunk, or CSR arrays that break the format's invariants.

    The message names the store, the tile and what is wrong; ``xsi-dask verify STORE`` lists
    every fault. The message is the only argument, so the error pickles to and from dask workers.
    """


class DecompositionError(XSIError, ValueError):
    """Invalid decomposition request (component count, solver, montage view)."""


class XSIWarning(UserWarning):
    """Warnings issued by xsi_dask (treated as errors in the test suite)."""


class ConvergenceWarning(XSIWarning):
    """An iterative method stopped at its iteration limit before meeting its tolerance (the result is returned)."""


class LowCountWarning(XSIWarning):
    """Too few counts per pixel for the Poisson-scaled decomposition to separate components from the noise."""


class BackendError(XSIError, ValueError):
    """A kernel backend is unknown or cannot be loaded (``xsi-dask.backend``)."""


class ViewError(DecompositionError):
    """The montage view asks for something the engine cannot honour (arithmetic, an energy slice, binning, ...)."""


class ResourceUnavailableError(XSIError, RuntimeError):
    """A task needs a worker resource (e.g. ``GPU``) that no worker of the cluster offers."""


class ParameterError(XSIError, ValueError):
    """A run parameter is invalid (checked when the parameter object is built, before any work)."""


class NotOurOutputError(StoreExistsError):
    """An output path holds something xsi_dask did not write (user files, a plain file, another kind of store).

    ``overwrite`` replaces only the package's own output of the same kind; this
    is raised, before any computation, for anything else, naming the path and
    what it holds.
    """


class OptionalDependencyError(XSIError, ImportError):
    """A feature needs an optional dependency that is not installed; the message names the extra to install."""


class OutputWriteError(XSIError, OSError):
    """An output cannot be written: an unwritable or vanished folder, a full disk; nothing was left behind."""


class ClusterUnavailableError(XSIError, ConnectionError):
    """The Dask scheduler given (``--scheduler``) cannot be reached, or the LocalCluster could not start."""


class ClusterStalledError(XSIError, RuntimeError):
    """No task of a pass finished for ``xsi-dask.stall-timeout`` while the cluster's workers were paused or gone."""


class WorkerLostError(XSIError, RuntimeError):
    """A task's workers died while running it too often (a crash or a memory kill, e.g. by the nanny)."""


class InsufficientMemoryError(XSIError, MemoryError):
    """The workers' memory limit is below what one task of the plan needs (checked before the first pass)."""
