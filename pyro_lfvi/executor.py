"""Simulating an :class:`~pyro_lfvi.ImplicitSite` row by row on an executor.

With ``ImplicitSite(..., executor=pool)`` each batch element is simulated by
``simulator(*row, rng=numpy.random.Generator(seed))`` on any
``concurrent.futures.Executor`` (a process pool, Dask's ``Client.get_executor()``),
in chunks. The seeds come from one torch draw per simulation, made before
anything is sent, so the results do not depend on the number of workers.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .errors import SimulatorError

__all__ = ["map_rows", "param_rows"]

# With an executor and no chunksize, one simulation is sent as at most this many tasks.
_MAX_TASKS = 256


class _RowError(Exception):
    """A simulator's exception in a worker, with the row it failed on (``args``: row, error)."""


def _run_rows(
    simulator: Callable[..., Any], rows: list[tuple[Any, ...]], seeds: list[int], start: int
) -> list[Any]:
    """The task an executor runs: ``simulator(*row, rng=default_rng(seed))`` for each row."""
    out = []
    for j, (args, seed) in enumerate(zip(rows, seeds, strict=True)):
        try:
            out.append(simulator(*args, rng=np.random.default_rng(seed)))
        except Exception as err:
            try:  # the error travels back to the caller's process
                pickle.dumps(err)
            except Exception:
                err = RuntimeError(f"{type(err).__name__}: {err}")
            raise _RowError(start + j, err) from err
    return out


def param_rows(param: torch.Tensor, event_dims: int, n: int) -> torch.Tensor:
    """A parameter broadcast to a batch of ``n`` elements, one row per element."""
    event = param.shape[param.dim() - event_dims :] if event_dims else ()
    return param.reshape((n, *event))


def map_rows(
    executor: Any,
    simulator: Callable[..., Any],
    params: list[Any],
    param_event_dims: tuple[int, ...],
    batch: torch.Size,
    chunksize: int | None,
    describe: str,
) -> list[Any]:
    """
    The simulator's raw output for every element of ``batch``, in order.

    :param executor: a ``concurrent.futures.Executor`` (anything with ``submit``).
    :param callable simulator: called as ``simulator(*row, rng=generator)``.
    :param list params: the parameters, broadcast to ``batch`` (plus their event dims).
    :param tuple param_event_dims: event dims of each parameter.
    :param torch.Size batch: the batch simulated, one row per element.
    :param int chunksize: rows per task (default: at most 256 tasks).
    :param str describe: the site, for error messages.
    :raises SimulatorError: naming the site and the row that failed, or saying
        why the executor could not run the simulator.
    """
    n = batch.numel()
    # One draw for the whole batch, before anything is sent: the torch stream
    # consumed and each row's seed depend on neither the workers nor the chunks.
    seeds = torch.randint(0, 2**63 - 1, (n,), dtype=torch.int64).tolist()
    if n == 0:
        return []
    columns: list[list[Any]] = []
    for p, d in zip(params, param_event_dims, strict=False):
        if isinstance(p, torch.Tensor):
            array = param_rows(p.detach(), d, n).cpu().numpy()
            columns.append(array.tolist() if d == 0 else [row.copy() for row in array])
        else:
            columns.append([p] * n)
    rows = list(zip(*columns, strict=True)) if columns else [()] * n
    size = chunksize or -(-n // _MAX_TASKS)
    futures = []
    values: list[Any] = []
    try:
        for start in range(0, n, size):
            end = start + size
            futures.append(
                executor.submit(_run_rows, simulator, rows[start:end], seeds[start:end], start)
            )
        for future in futures:
            values.extend(future.result())
    except _RowError as failure:
        for future in futures:
            future.cancel()
        row, err = failure.args
        cause = failure.__cause__
        if err.__traceback__ is None and err.__cause__ is None and cause is not err:
            err.__cause__ = cause  # a process pool's remote traceback
        index = tuple(int(i) for i in np.unravel_index(row, tuple(batch)))
        hint = (
            "; with an executor the simulator is called as simulator(*params, "
            "rng=numpy.random.Generator) and must accept the rng keyword"
            if isinstance(err, TypeError) and "rng" in str(err)
            else ""
        )
        raise SimulatorError(
            f"The simulator of {describe} raised {type(err).__name__}: {err} "
            f"in a worker, at batch element {index} (row {row} of {n}; parameters "
            f"{[type(a).__name__ for a in rows[row]]}){hint}"
        ) from err
    except Exception as err:
        for future in futures:
            future.cancel()
        raise SimulatorError(_executor_failure(simulator, describe, err)) from err
    return values


def _executor_failure(simulator: Callable[..., Any], describe: str, err: Exception) -> str:
    """The message for an executor that failed outside the simulator."""
    try:
        pickle.dumps(simulator)
    except Exception as why:
        seen, reason = f"{type(err).__name__}: {err}", f"{type(why).__name__}: {why}"
        detail = reason if seen == reason else f"{seen}; pickling the simulator: {reason}"
        return (
            f"The executor could not run the simulator of {describe}: it cannot "
            f"be pickled ({detail}). Define the simulator at module level (not a "
            f"lambda, a nested function or a method of an unpicklable object) so that "
            f"worker processes can import it"
        )
    return (
        f"The executor failed to run the simulator of {describe}: "
        f"{type(err).__name__}: {err}. With a process pool or a cluster, the "
        f"simulator, its parameters and its results must be picklable"
    )
