"""The training history: one row of figures per step, in bounded memory.

:attr:`LFVI.history <pyro_lfvi.LFVI.history>` reads like a list of dicts
(``history[-1]["elbo"]``, ``len(history)``, iteration, slices), but it stores
each figure as a column of float64 values, about 8 bytes a figure a step
instead of a few hundred for a dict, and it is bounded: once it holds
``max_rows`` rows it keeps every second one and from then on records every
second step (then every fourth, and so on), so a run of :math:`10^6` steps
holds between ``max_rows / 2`` and ``max_rows`` evenly spaced rows. The
newest step is always its last row. :attr:`History.steps` gives the training
step of each row.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np
import torch

from .validation import check_positive_int

__all__ = ["History"]

_ROWS_SAVED = "steps"


class History(Sequence[dict[str, float]]):
    """
    Columnar, bounded record of the training steps: a sequence of dicts.

    Example::

        >>> from pyro_lfvi import History
        >>> history = History(max_rows=4)
        >>> for step in range(10):
        ...     history.append({"elbo": float(step)})
        >>> [row["elbo"] for row in history]  # thinned to every 4th step, and the last
        [0.0, 4.0, 8.0, 9.0]
        >>> history.steps.tolist(), history.num_steps
        ([0, 4, 8, 9], 10)

    :param int max_rows: the most rows kept (at least 2; default 100,000):
        beyond it, older rows are thinned to every second one.
    """

    def __init__(self, max_rows: int = 100_000) -> None:
        self.max_rows = check_positive_int("max_rows", max_rows)
        if self.max_rows < 2:
            raise ValueError(f"Expected max_rows >= 2, actual {max_rows!r}")
        self.clear()

    def clear(self) -> None:
        """Forget every row."""
        self._columns: dict[str, np.ndarray] = {}
        self._present: dict[str, np.ndarray] = {}
        self._steps = np.zeros(0, dtype=np.int64)
        self._size = 0  # rows kept for good; a newest off-stride row may follow
        self._pending = False
        self._stride = 1
        self._num_steps = 0

    # -- writing ----------------------------------------------------------------

    def _reserve(self, rows: int) -> None:
        capacity = self._steps.shape[0]
        if rows <= capacity:
            return
        new = min(max(2 * capacity, 64, rows), self.max_rows + 1)
        self._steps = np.resize(self._steps, new)
        for key in self._columns:
            self._columns[key] = np.resize(self._columns[key], new)
            self._present[key] = np.resize(self._present[key], new)
            self._present[key][capacity:] = False

    def _add_column(self, key: str) -> None:
        capacity = self._steps.shape[0]
        self._columns[key] = np.full(capacity, np.nan)
        self._present[key] = np.zeros(capacity, dtype=bool)

    def _thin(self) -> None:
        """Keep every second row (those on the doubled stride), and the newest."""
        n = self._size
        keep = np.flatnonzero(self._steps[:n] % (2 * self._stride) == 0)
        newest_dropped = keep.size == 0 or int(keep[-1]) != n - 1
        if newest_dropped:  # it stays, as the pending row, until the next step
            keep = np.append(keep, n - 1)
        for values in self._columns.values():
            values[: keep.size] = values[keep]
        for present in self._present.values():
            present[: keep.size] = present[keep]
            present[keep.size :] = False
        self._steps[: keep.size] = self._steps[keep]
        self._size = int(keep.size) - int(newest_dropped)
        self._pending = newest_dropped
        self._stride *= 2

    def append(self, entry: Mapping[str, float]) -> None:
        """Record the figures of the next step (a dict of numbers)."""
        step = self._num_steps
        self._num_steps += 1
        self._reserve(self._size + 1)
        row = self._size
        for key, value in entry.items():
            if key not in self._columns:
                self._add_column(key)
            self._columns[key][row] = float(value)
        for key, present in self._present.items():
            present[row] = key in entry
        self._steps[row] = step
        self._pending = step % self._stride != 0
        if not self._pending:
            self._size += 1
            if self._size == self.max_rows:
                self._thin()

    # -- reading ----------------------------------------------------------------

    def __len__(self) -> int:
        return self._size + int(self._pending)

    def _row(self, i: int) -> dict[str, float]:
        return {
            key: float(values[i]) for key, values in self._columns.items() if self._present[key][i]
        }

    @overload
    def __getitem__(self, index: int) -> dict[str, float]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, float]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, float] | list[dict[str, float]]:
        if isinstance(index, slice):
            return [self._row(i) for i in range(len(self))[index]]
        try:
            i = range(len(self))[index]
        except IndexError as err:
            raise IndexError(f"History index {index} out of range for {len(self)} rows") from err
        except TypeError as err:
            raise TypeError(
                f"Expected an int or a slice as the history index, actual {type(index).__name__}"
            ) from err
        return self._row(i)

    def __iter__(self) -> Iterator[dict[str, float]]:
        return (self._row(i) for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"History({len(self)} rows of {self.num_steps} steps, figures {self.keys()})"

    def keys(self) -> list[str]:
        """The figures recorded, in the order they first appeared."""
        return list(self._columns)

    @property
    def num_steps(self) -> int:
        """The number of steps appended, rows kept or not."""
        return self._num_steps

    @property
    def steps(self) -> np.ndarray:
        """The training step (from 0) of each row."""
        return self._steps[: len(self)].copy()

    def column(self, key: str) -> np.ndarray:
        """
        One figure over the rows, NaN where a row lacks it.

        :param str key: the figure, e.g. ``"elbo"``.
        :rtype: numpy.ndarray
        """
        if key not in self._columns:
            raise KeyError(f"History has no figure {key!r}; it has {self.keys()}")
        n = len(self)
        return np.where(self._present[key][:n], self._columns[key][:n], np.nan)

    # -- checkpoints -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain data and tensors, for :func:`~pyro_lfvi.save_checkpoint`."""
        n = len(self)
        return {
            "max_rows": self.max_rows,
            "num_steps": self.num_steps,
            "stride": self._stride,
            _ROWS_SAVED: torch.from_numpy(self._steps[:n].copy()),
            "columns": {k: torch.from_numpy(v[:n].copy()) for k, v in self._columns.items()},
            "present": {k: torch.from_numpy(v[:n].copy()) for k, v in self._present.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; raises ``ValueError`` on a malformed one."""
        try:
            max_rows = int(state["max_rows"])
            num_steps = int(state["num_steps"])
            stride = int(state["stride"])
            steps = np.asarray(state[_ROWS_SAVED], dtype=np.int64)
            columns = {str(k): np.asarray(v, dtype=float) for k, v in state["columns"].items()}
            present = {str(k): np.asarray(v, dtype=bool) for k, v in state["present"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"Expected a History state_dict, actual one failing ({err})") from err
        n = steps.shape[0]
        shapes_ok = all(v.shape == (n,) for v in (*columns.values(), *present.values()))
        if set(columns) != set(present) or not shapes_ok or n > max_rows or n > num_steps:
            raise ValueError(
                f"Expected a History state_dict with {n} rows in every column, at most "
                f"max_rows={max_rows} and num_steps={num_steps}, actual another layout"
            )
        self.max_rows = check_positive_int("max_rows", max_rows)
        self.clear()
        self._stride = stride
        self._num_steps = num_steps
        self._reserve(n + 1)
        self._steps[:n] = steps
        for key in columns:
            self._add_column(key)
            self._columns[key][:n] = columns[key]
            self._present[key][:n] = present[key]
        self._pending = bool(n) and int(steps[-1]) % stride != 0
        self._size = n - int(self._pending)

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, float]], max_rows: int = 100_000) -> History:
        """A history holding ``rows``, one per step (an older list-of-dicts history)."""
        history = cls(max_rows)
        for row in rows:
            history.append(row)
        return history
