"""The active-learning experiment loop: fit, predict, acquire, measure, scalarize, until the budget.

The loop knows the model, the acquisition function and the scalarizer only by
the small protocol below, so the DKL model, a plain GP or a stand-in plug in
alike:

* ``model_factory(seed=int) -> model``, a picklable callable (a class, a
  module-level function, a ``functools.partial``); ``model.fit(X, y, *,
  warm_start=None) -> state`` trains on ``X (n_train, n_features)``,
  ``y (n_train,)``, given the previous step's ``state`` (None at the first
  fit; the model decides whether to start from it: the package's factories
  refit from their seeded start unless built with ``warm_steps``) and returns
  a picklable state; ``model.predict(Xc) -> (mean, std)``,
  each of shape ``(n_candidates,)``, after ``fit``.
* ``acquisition(mean, std, measured, rng) -> (index, values)``: ``mean``,
  ``std`` of shape ``(n_pixels,)`` (every candidate, measured ones included),
  ``measured`` a boolean mask of shape ``(n_pixels,)``, ``rng`` a
  ``numpy.random.Generator``; returns the row of the next pixel (not yet
  measured) and the acquisition values of every row (the acquisition map;
  NaN or -inf where measured).

  Optional extension: an acquisition may have an attribute ``requires``, a
  tuple of the extra keyword arguments it takes, from

  - ``"observed"``: ndarray of shape ``(n_pixels,)``, the measured scalar
    values, NaN where not measured (e.g. the best value for expected
    improvement);
  - ``"model_values"``: ndarray of shape ``(n_pixels,)``, the result of the
    acquisition's method ``model_values(model, X, train, seed)``, which the
    loop runs inside the training task, on the just-fitted model and all
    candidate features ``X`` (``train``: the measured rows, in order), so
    that a fitted model never leaves the training worker (e.g. a Thompson
    draw). ``seed`` is drawn from the acquisition's ``rng`` before the task.
    The acquisition object then travels to the training worker with each
    task: it must be picklable.

  Plain functions without ``requires`` are called with the four positional
  arguments only (:func:`xsi_dask.active.acquisition.make_acquisition`).
* ``scalarizer(signals) -> scalars``: a batch of signals (a leading pixel axis
  added to what ``measure`` returns: an ndarray or an xarray.DataArray with
  its energy axis) to one number per signal.

Each fit (and the prediction over the candidates that follows) runs as one
task on a worker offering ``GPU`` when the active dask.distributed cluster
has one (:func:`xsi_dask.engine.run_on_resource`), else in this process; the
candidate features are sent to that worker once. Measuring and scalarizing
run here: ``measure`` may drive a live instrument.

References
----------
Roccapriore, Ziatdinov & Kalinin, Adv. Sci. 9, 2203422 (2022),
doi:10.1002/advs.202203422 (the automated experiment this loop runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import xarray as xr

from .._dask import current_client
from ..engine.resources import run_on_resource, worker_resources
from ..errors import ParameterError
from .features import Features

__all__ = ["Acquisition", "Model", "ModelFactory", "Scalarizer", "run_experiment", "train_step"]


class Model(Protocol):
    """What :func:`run_experiment` needs of a model."""

    def fit(self, X: np.ndarray, y: np.ndarray, *, warm_start: Any = None) -> Any: ...

    def predict(self, Xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class ModelFactory(Protocol):
    def __call__(self, *, seed: int) -> Model: ...


Acquisition = Callable[[np.ndarray, np.ndarray, np.ndarray, np.random.Generator], tuple[int, np.ndarray]]
Scalarizer = Callable[[Any], Any]


def _where() -> str | None:
    """The address of the dask worker running this, or None outside a worker."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


_EXTRAS = ("observed", "model_values")


def _requires(acquisition: Any) -> tuple[str, ...]:
    """The extra keyword arguments an acquisition asks for (its ``requires``), checked."""
    req = getattr(acquisition, "requires", ())
    if isinstance(req, str) or not isinstance(req, tuple | list) or not all(isinstance(r, str) for r in req):
        raise ParameterError(f"the acquisition's requires must be a tuple of names from {_EXTRAS}, got {req!r}")
    unknown = [r for r in req if r not in _EXTRAS]
    if unknown:
        raise ParameterError(f"the acquisition requires {unknown}, which the loop does not provide (known: {_EXTRAS})")
    if "model_values" in req and not callable(getattr(acquisition, "model_values", None)):
        raise ParameterError("the acquisition requires 'model_values' but has no method model_values(model, X, train, seed)")
    return tuple(req)


def train_step(model_factory: ModelFactory, seed: int, X: np.ndarray, train: np.ndarray, y: np.ndarray,
               warm_start: Any, acquisition: Any = None, acquisition_seed: int | None = None) -> dict[str, Any]:
    """One training step: build a model, fit it on the measured rows, predict every row.

    Runs as a task on the training worker (or in-process).

    Parameters
    ----------
    model_factory : ModelFactory
    seed : int
        Passed to ``model_factory(seed=seed)``.
    X : ndarray of shape (n_pixels, n_features), float64
        All candidate features (the scattered copy on a worker).
    train : ndarray of shape (n_train,), int
        Rows of ``X`` measured so far, in the order measured.
    y : ndarray of shape (n_train,), float64
        Their scalar values.
    warm_start : object or None
        The previous step's state.
    acquisition : object, optional
        An acquisition that requires ``"model_values"``: its
        ``model_values(model, X, train, acquisition_seed)`` is evaluated here, on the fitted model.
    acquisition_seed : int, optional
        The seed passed to it.

    Returns
    -------
    dict
        ``mean``, ``std`` (n_pixels,) float64, ``state``, ``fit_seconds``
        (fit only), ``predict_seconds``, ``worker`` (address or None), and
        ``model_values`` ((n_pixels,) float64, or None without ``acquisition``;
        its time is counted in ``predict_seconds``).
    """
    model = model_factory(seed=seed)
    t0 = time.perf_counter()
    state = model.fit(X[train], y, warm_start=warm_start)
    t1 = time.perf_counter()
    mean, std = model.predict(X)
    model_values = None
    if acquisition is not None:
        model_values = np.asarray(acquisition.model_values(model, X, train, acquisition_seed), dtype=np.float64)
    t2 = time.perf_counter()
    return {"mean": np.asarray(mean, dtype=np.float64), "std": np.asarray(std, dtype=np.float64), "state": state,
            "fit_seconds": t1 - t0, "predict_seconds": t2 - t1, "worker": _where(), "model_values": model_values}


def _count(value: Any, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ParameterError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ParameterError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_resources(resources: Any) -> dict[str, float] | None:
    if resources is None:
        return None
    if not isinstance(resources, dict) or not resources:
        raise ParameterError(f"resources must be None (a GPU worker when the cluster has one, else in-process) "
                             f"or a non-empty dict such as {{'GPU': 1}}, got {resources!r}")
    out = {}
    for k, v in resources.items():
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating) or not v > 0:
            raise ParameterError(f"resources[{k!r}] must be a positive amount, got {v!r}")
        out[str(k)] = float(v)
    return out


def _placement(resources: dict[str, float] | None) -> dict[str, float] | None:
    """The resources the training task asks for, or None to train in this process."""
    if resources is not None:
        return resources  # required: run_on_resource raises ResourceUnavailableError where no worker offers them
    if current_client() is None:
        return None
    gpu = {"GPU": 1.0}
    return gpu if any(r.get("GPU", 0.0) >= 1.0 for r in worker_resources().values()) else None


def _scalar(scalarizer: Scalarizer, signal: Any, y: int, x: int) -> float:
    batch = signal.expand_dims("pixel") if isinstance(signal, xr.DataArray) else np.asarray(signal)[None]
    out = np.asarray(scalarizer(batch), dtype=np.float64).reshape(-1)
    if out.size != 1:
        raise ParameterError(f"the scalarizer returned {out.size} values for the one signal measured at (y, x) = ({y}, {x})")
    if not np.isfinite(out[0]):
        raise ParameterError(f"the scalarizer returned {out[0]} for the signal measured at (y, x) = ({y}, {x})")
    return float(out[0])


def _check_prediction(res: dict[str, Any], n: int) -> None:
    for name in ("mean", "std"):
        a = res[name]
        if a.shape != (n,):
            raise ParameterError(f"the model's predict returned {name} of shape {a.shape}, expected ({n},) (one per candidate)")
        if not np.isfinite(a).all():
            raise ParameterError(f"the model's predict returned non-finite {name} values")
    if (res["std"] < 0).any():
        raise ParameterError("the model's predict returned a negative std")


def _acquire(acquisition: Acquisition, res: dict[str, Any], measured: np.ndarray, rng: np.random.Generator,
             requires: tuple[str, ...], observed: np.ndarray) -> tuple[int, np.ndarray]:
    extra: dict[str, np.ndarray] = {}
    if "observed" in requires:
        extra["observed"] = observed.copy()
    if "model_values" in requires:
        mv = res["model_values"]
        if mv is None or mv.shape != measured.shape:
            raise ParameterError(f"the acquisition's model_values returned shape {getattr(mv, 'shape', None)}, "
                                 f"expected ({measured.size},) (one per candidate)")
        extra["model_values"] = mv
    out = acquisition(res["mean"], res["std"], measured.copy(), rng, **extra)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ParameterError(f"the acquisition must return (index, values), got {type(out).__name__}")
    index, values = out
    values = np.asarray(values, dtype=np.float64)
    n = measured.size
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= int(index) < n:
        raise ParameterError(f"the acquisition returned index {index!r}, expected an integer in [0, {n})")
    if measured[int(index)]:
        raise ParameterError(f"the acquisition chose row {int(index)}, which is already measured")
    if values.shape != (n,):
        raise ParameterError(f"the acquisition returned values of shape {values.shape}, expected ({n},)")
    return int(index), values


def _map(features: Features, values: np.ndarray) -> np.ndarray:
    """Row values of the candidates on the (y, x) grid; NaN where no candidate."""
    out = np.full(features.shape, np.nan)
    out[features.yx[:, 0], features.yx[:, 1]] = values
    return out


def _name(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or getattr(getattr(obj, "func", None), "__qualname__", None) or repr(obj)


def run_experiment(
    features: Features,
    measure: Callable[[int, int], Any],
    *,
    scalarizer: Scalarizer,
    acquisition: Acquisition,
    model_factory: ModelFactory,
    n_init: int,
    budget: int,
    seed: int,
    record_every: int | None = None,
    resources: dict[str, float] | None = None,
) -> xr.Dataset:
    """Run an automated experiment: measure ``n_init`` random pixels, then let the model choose until ``budget``.

    Each step fits the model on the pixels measured so far (given the previous
    step's state, which the model may start from), predicts every candidate, lets ``acquisition``
    choose an unmeasured pixel, measures it and scalarizes the signal. After
    the last measurement the model is fitted once more, on all of them, for
    the final maps.

    Parameters
    ----------
    features : Features
        The candidate pixels and their features (:mod:`xsi_dask.active.features`).
    measure : callable
        ``measure(y, x)`` -> the signal at pixel ``(y, x)`` of ``features.shape``:
        a lookup into pre-acquired data (a simulated experiment) or a live
        instrument. Called exactly ``budget`` times, each pixel at most once.
    scalarizer, acquisition, model_factory
        See the module's protocol (:mod:`xsi_dask.active.loop`).
    n_init : int
        Pixels measured first, drawn uniformly without replacement, 1 <= n_init < budget.
    budget : int
        Total measurements, n_init < budget <= features.n_pixels.
    seed : int
        Seeds one ``numpy.random.SeedSequence`` whose three children drive the
        initial draw, the acquisition's ``rng`` and the model seeds (one per
        fit): a run is reproducible exactly when the model and the
        acquisition are deterministic for their seeds.
    record_every : int, optional
        Also keep the maps of every ``record_every``-th fit (the first fit,
        on ``n_init`` points, included); default none.
    resources : dict, optional
        Worker resources the training task needs, e.g. ``{"GPU": 1}``: given,
        they are required (ResourceUnavailableError when no worker of the
        active cluster offers them, before the first measurement). Default:
        ``{"GPU": 1}`` when a worker of the active cluster offers a GPU, else
        the training runs in this process.

    Returns
    -------
    xarray.Dataset
        Dim ``step`` (``budget``, in measurement order): ``visited_y``,
        ``visited_x`` (int, the pixel; ``y``/``x`` name the maps' dims),
        ``value`` (the scalar), ``initial`` (bool: one of the random start),
        ``fit_seconds`` (the fit before the step's choice, on the training
        worker), ``predict_seconds``, ``train_wall_seconds`` (the training
        task seen from here: fit, prediction, scheduling and transfers),
        ``acquire_seconds`` (all NaN for initial steps), ``fit_worker`` (address, "" in-process or initial).
        Dims ``(y, x)`` of ``features.shape`` (coordinates: pixel indices): ``prediction``, ``uncertainty``
        (the predictive std) and ``acquisition`` of the final fit (NaN at
        pixels that are not candidates; all NaN when ``budget`` measured
        every candidate), ``order`` (the step at which a pixel
        was measured, -1 if never). With ``record_every``: ``prediction_at``,
        ``uncertainty_at``, ``acquisition_at`` on dims ``(fit, y, x)`` and
        ``n_measured (fit)``, the training-set size of each kept fit.
        Attributes: the parameters, the training placement, the names of
        the callables, and ``noise_variance``, the final fit's noise variance in the
        squared units of the scalar when its state reports one
        (:class:`~xsi_dask.active.model.ModelState` does; NaN otherwise), so that a
        new measurement's predictive std is ``sqrt(uncertainty**2 + noise_variance)``.

    Raises
    ------
    ParameterError
        ``features`` not a Features; ``n_init < 1``; ``budget <= n_init``;
        ``budget`` above the number of candidates; ``record_every < 1``;
        invalid ``resources``; an acquisition whose ``requires`` names an
        unknown extra; a callable that breaks the protocol (a
        prediction of the wrong shape or not finite, an acquisition choosing
        a measured pixel, a scalarizer returning several or non-finite values).
    ResourceUnavailableError
        ``resources`` given and no worker of the active cluster offers them
        (or no cluster is active).
    """
    if not isinstance(features, Features):
        raise ParameterError(f"features must be an xsi_dask.active.features.Features, got {type(features).__name__}")
    n = features.n_pixels
    n_init = _count(n_init, "n_init")
    budget = _count(budget, "budget")
    seed = _count(seed, "seed")
    if n_init < 1:
        raise ParameterError(f"n_init must be >= 1, got {n_init}")
    if budget <= n_init:
        raise ParameterError(f"budget ({budget}) must exceed n_init ({n_init}): the model would choose no pixel")
    if budget > n:
        raise ParameterError(f"budget ({budget}) exceeds the {n} candidate pixels")
    if seed < 0:
        raise ParameterError(f"seed must be >= 0, got {seed}")
    if record_every is not None and _count(record_every, "record_every") < 1:
        raise ParameterError(f"record_every must be >= 1, got {record_every}")
    for name, fn in (("measure", measure), ("scalarizer", scalarizer), ("acquisition", acquisition),
                     ("model_factory", model_factory)):
        if not callable(fn):
            raise ParameterError(f"{name} must be callable, got {fn!r}")
    requires = _requires(acquisition)
    want = _placement(_check_resources(resources))

    init_ss, acq_ss, model_ss = np.random.SeedSequence(seed).spawn(3)
    acq_rng = np.random.default_rng(acq_ss)
    n_fits = budget - n_init + 1
    model_seeds = np.random.default_rng(model_ss).integers(0, 2**31 - 1, size=n_fits)

    X = features.values
    if want is not None:  # the features go to the training worker once; each step passes the future
        from distributed import get_client

        worker = run_on_resource(_where, resources=want)
        X_ref: Any = get_client().scatter(X, workers=[worker], broadcast=False, hash=False)
        placement = f"worker {worker} (resources {want})"
    else:
        X_ref = X
        placement = "in-process"

    def train(k: int, train_rows: list[int], y: list[float], warm: Any) -> dict[str, Any]:
        args: tuple[Any, ...] = (model_factory, int(model_seeds[k]), X_ref, np.asarray(train_rows, dtype=np.int64),
                                 np.asarray(y, dtype=np.float64), warm)
        if "model_values" in requires and len(train_rows) < n:  # seeded from the acquisition's stream, so a run stays reproducible
            args += (acquisition, int(acq_rng.integers(0, 2**31 - 1)))
        res = run_on_resource(train_step, *args, resources=want) if want is not None else train_step(*args)
        _check_prediction(res, n)
        return res

    rows: list[int] = []
    values: list[float] = []
    timing = {k: np.full(budget, np.nan) for k in ("fit_seconds", "predict_seconds", "train_wall_seconds", "acquire_seconds")}
    fit_worker = [""] * budget
    measured = np.zeros(n, dtype=bool)
    observed = np.full(n, np.nan)

    def take(row: int) -> None:
        y, x = (int(v) for v in features.yx[row])
        signal = measure(y, x)
        values.append(_scalar(scalarizer, signal, y, x))
        rows.append(row)
        measured[row] = True
        observed[row] = values[-1]

    for row in np.random.default_rng(init_ss).choice(n, size=n_init, replace=False):
        take(int(row))

    kept: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    state = None
    for k in range(n_fits):
        t0 = time.perf_counter()
        res = train(k, rows, values, state)
        train_wall = time.perf_counter() - t0
        state = res["state"]
        t0 = time.perf_counter()
        if measured.all():  # the final fit after every candidate was measured: nothing left to choose
            index, acq = -1, np.full(n, np.nan)
        else:
            index, acq = _acquire(acquisition, res, measured, acq_rng, requires, observed)
        acquire_seconds = time.perf_counter() - t0
        if record_every is not None and k % record_every == 0:
            kept.append((len(rows), res["mean"], res["std"], acq))
        if k == n_fits - 1:  # the final fit, on all `budget` measurements: its choice is not measured
            final = (res, acq)
            break
        step = len(rows)
        timing["fit_seconds"][step] = res["fit_seconds"]
        timing["predict_seconds"][step] = res["predict_seconds"]
        timing["train_wall_seconds"][step] = train_wall
        timing["acquire_seconds"][step] = acquire_seconds
        fit_worker[step] = res["worker"] or ""
        take(index)

    res, acq = final
    yx = features.yx[np.asarray(rows)]
    order = np.full(features.shape, -1, dtype=np.int64)
    order[yx[:, 0], yx[:, 1]] = np.arange(budget)
    ds = xr.Dataset(
        {
            "visited_y": ("step", yx[:, 0]),
            "visited_x": ("step", yx[:, 1]),
            "value": ("step", np.asarray(values)),
            "initial": ("step", np.arange(budget) < n_init),
            **{k: ("step", v, {"units": "s"}) for k, v in timing.items()},
            "fit_worker": ("step", np.array(fit_worker, dtype=object)),
            "prediction": (("y", "x"), _map(features, res["mean"])),
            "uncertainty": (("y", "x"), _map(features, res["std"])),
            "acquisition": (("y", "x"), _map(features, acq)),
            "order": (("y", "x"), order),
        },
        coords={"step": np.arange(budget), "y": np.arange(features.shape[0]), "x": np.arange(features.shape[1])},
        attrs={
            "n_init": n_init, "budget": budget, "seed": seed, "n_candidates": n,
            "record_every": 0 if record_every is None else int(record_every),
            "training": placement, "final_fit_seconds": res["fit_seconds"],
            "noise_variance": float(getattr(res["state"], "noise_variance", np.nan)),
            "scalarizer": _name(scalarizer), "acquisition_function": _name(acquisition), "model_factory": _name(model_factory),
            "features": ", ".join(features.names[:3]) + (f", ... ({len(features.names)} columns)" if len(features.names) > 3 else ""),
        },
    )
    ds["prediction"].attrs["description"] = "predictive mean of the final fit (on all measurements)"
    ds["uncertainty"].attrs["description"] = "predictive standard deviation of the final fit"
    ds["acquisition"].attrs["description"] = "acquisition values of the final fit (the next choice is not measured)"
    ds["order"].attrs["description"] = "step at which the pixel was measured; -1: never"
    if kept:
        ds = ds.assign(
            n_measured=("fit", np.array([m for m, *_ in kept])),
            prediction_at=(("fit", "y", "x"), np.stack([_map(features, m) for _, m, _, _ in kept])),
            uncertainty_at=(("fit", "y", "x"), np.stack([_map(features, s) for _, _, s, _ in kept])),
            acquisition_at=(("fit", "y", "x"), np.stack([_map(features, a) for _, _, _, a in kept])),
        )
    return ds
