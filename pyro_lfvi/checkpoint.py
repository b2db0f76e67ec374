"""Saving and resuming LFVI training exactly where it stopped, safely.

A checkpoint holds only tensors and plain data (dicts, lists, tuples, str,
int, float, bool, None), so :func:`load_checkpoint` reads it with
``torch.load(path, weights_only=True)``: a file holding anything else, such as
a pickle crafted to run code when loaded, is refused before anything is
restored. The state that is not tensors (param constraints, numpy random
number generator states) is converted to plain data and back by
``pyro_lfvi.plain_state``.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Mapping
from typing import Any, NoReturn

import numpy as np
import pyro
import torch

from .contrastive import replay_from_state
from .diagnostics import TrainingMonitor
from .errors import CheckpointError
from .history import History
from .likelihood import LikelihoodEstimator
from .plain_state import (
    check_plain,
    decode_constraint,
    encode_constraint,
    numpy_to_plain,
    plain_to_numpy,
)

__all__ = ["load_checkpoint", "save_checkpoint"]

FORMAT = "pyro_lfvi.checkpoint"
"""The value of a checkpoint's ``"format"`` key."""
VERSION = 1
"""The layout version that :func:`save_checkpoint` writes and :func:`load_checkpoint` reads."""

_KEYS = ("format", "version", "params", "constraints", "optim", "lfvi", "rng", "generators")
_LFVI_KEYS = ("history", "monitor", "max_plate_nesting", "discriminator_optim")
_RNG_KEYS = ("torch", "numpy", "python")


def save_checkpoint(
    path: str | os.PathLike[str],
    optim: Any,
    lfvi: Any = None,
    *,
    generators: Mapping[str, np.random.Generator] | None = None,
) -> None:
    """
    Save everything a resumed run needs to continue as if never stopped: the
    param store (guide and discriminator weights, with their constraints),
    the optimiser's state, LFVI's own state (history, diagnostics, max plate
    nesting, the discriminator's own optimiser), the random number generators
    of torch, numpy (the global legacy one) and Python, and the state of any
    numpy :class:`~numpy.random.Generator` passed in ``generators``.

    The file holds only tensors and plain data, so that
    :func:`load_checkpoint` can read it with ``torch.load(...,
    weights_only=True)``.

    A simulator that owns a numpy ``Generator`` (``rng =
    np.random.default_rng(seed)`` drawing ``rng.normal(...)``) is resumable bit
    for bit only if its generator is passed here and to
    :func:`load_checkpoint` under the same name (or if the simulator draws its
    seeds from torch's generator, which is always saved). Simulators that use
    ``torch`` or numpy's global ``np.random`` functions need nothing.

    Example::

        rng = np.random.default_rng(0)  # the simulator draws rng.normal(...)
        save_checkpoint("run.pt", optim, elbo, generators={"simulator": rng})
        ...  # later, in a new process, after building model, guide, optim, elbo, rng
        load_checkpoint("run.pt", optim, elbo, generators={"simulator": rng})

    :param path: file to write.
    :type path: str or os.PathLike
    :param optim: the :class:`pyro.optim.PyroOptim` given to ``SVI``.
    :type optim: pyro.optim.PyroOptim
    :param lfvi: the :class:`~pyro_lfvi.LFVI` instance, if any.
    :type lfvi: ~pyro_lfvi.LFVI or None
    :param generators: numpy generators to save, by name.
    :type generators: mapping[str, numpy.random.Generator] or None
    :raises CheckpointError: if a param's constraint is not one of torch's or
        pyro's, or some state is not tensors and plain data.
    """
    named = _check_generators(generators)
    store = pyro.get_param_store().get_state()
    state = {
        "format": FORMAT,
        "version": VERSION,
        "params": dict(store["params"]),
        "constraints": {
            name: encode_constraint(constraint, name)
            for name, constraint in store["constraints"].items()
        },
        "optim": optim.get_state(),
        "lfvi": _lfvi_state(lfvi),
        **random_states(named),
    }
    check_plain(state, "the checkpoint")
    torch.save(state, path)


def load_checkpoint(
    path: str | os.PathLike[str],
    optim: Any,
    lfvi: Any = None,
    *,
    generators: Mapping[str, np.random.Generator] | None = None,
) -> None:
    """
    Restore a checkpoint written by :func:`save_checkpoint` into the param
    store, ``optim`` and ``lfvi``, restore the random number generators of
    torch, numpy and Python, and set each generator in ``generators`` (in
    place) to its saved state.

    The file is read with ``torch.load(path, weights_only=True)``, which
    unpickles nothing but tensors and plain data; its whole content is checked
    before anything is restored, so a refused checkpoint leaves the param
    store, ``optim``, ``lfvi`` and every random number generator as they were.

    A simulator that owns a numpy ``Generator`` resumes bit for bit when the
    same generator object (or a new one built the same way) is passed here
    under the name it was saved with; see :func:`save_checkpoint`.

    :param path: file to read.
    :type path: str or os.PathLike
    :param optim: the :class:`pyro.optim.PyroOptim` given to ``SVI``.
    :type optim: pyro.optim.PyroOptim
    :param lfvi: the :class:`~pyro_lfvi.LFVI` instance, if any.
    :type lfvi: ~pyro_lfvi.LFVI or None
    :param generators: numpy generators to restore, by the names they were
        saved under.
    :type generators: mapping[str, numpy.random.Generator] or None
    :raises CheckpointError: if the file holds objects other than tensors and
        plain data (it may come from an untrusted source), was not written by
        this version of :func:`save_checkpoint`, or does not match the run
        (e.g. other generator names).
    """
    named = _check_generators(generators)
    try:
        state = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"Refusing to load checkpoint {os.fspath(path)!r}: it holds objects other than "
            f"tensors and plain data, which pyro_lfvi.save_checkpoint never writes. It may "
            f"come from an untrusted source, and unpickling it could run arbitrary code; "
            f"nothing was restored."
        ) from err
    restore = _Restore(path, state, lfvi, named)
    restore.apply(optim, lfvi, named)


class _Restore:
    """A checkpoint's content, checked whole and converted before anything is restored."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        state: Any,
        lfvi: Any,
        generators: dict[str, np.random.Generator],
    ) -> None:
        self.path = os.fspath(path)
        if not isinstance(state, dict) or not _is_str(state.get("format"), FORMAT):
            self._fail(f"it is not a pyro_lfvi checkpoint (no 'format': {FORMAT!r})")
        if "version" not in state:
            self._fail("it has no format 'version'")
        version = state["version"]
        if type(version) is not int or version != VERSION:
            self._fail(f"its format version is {version!r}, expected {VERSION}")
        missing = [key for key in _KEYS if key not in state]
        if missing:
            self._fail(f"it lacks the key(s) {missing}")
        self.params, self.constraints = self._params(state["params"], state["constraints"])
        self.optim = self._dict(state["optim"], "'optim'")
        self.lfvi = self._lfvi(state["lfvi"]) if lfvi is not None else None
        self.rng = self._rng(state["rng"])
        self.generators = self._generators(state["generators"], generators)

    def _fail(self, problem: str, err: BaseException | None = None) -> NoReturn:
        raise CheckpointError(
            f"Cannot load checkpoint {self.path!r}: {problem}. It was not written by this "
            f"version of pyro_lfvi.save_checkpoint, is damaged, or comes from an untrusted "
            f"source; nothing was restored."
        ) from err

    def _dict(self, value: Any, where: str) -> dict[Any, Any]:
        if not isinstance(value, dict):
            self._fail(f"its {where} is a {type(value).__name__}, expected a dict")
        return value

    def _params(
        self, params: Any, constraints: Any
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        params = self._dict(params, "'params'")
        constraints = self._dict(constraints, "'constraints'")
        for name, value in params.items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                self._fail(f"its param {name!r} is not a tensor named by a str")
        if set(constraints) != set(params):
            self._fail(
                f"its 'constraints' name {sorted(map(str, constraints))}, but its 'params' "
                f"name {sorted(params)}"
            )
        decoded = {}
        for name, code in constraints.items():
            try:
                decoded[name] = decode_constraint(code)
            except Exception as err:  # whatever a constructor raises on bad arguments
                self._fail(f"the constraint of param {name!r} cannot be rebuilt ({err})", err)
        return params, decoded

    def _lfvi(self, state: Any) -> dict[str, Any]:
        if state is None:
            self._fail(
                "it was saved without an LFVI object (save_checkpoint(path, optim)); load it "
                "with load_checkpoint(path, optim), without the LFVI object"
            )
        state = self._dict(state, "'lfvi'")
        missing = [key for key in _LFVI_KEYS if key not in state]
        if missing:
            self._fail(f"its 'lfvi' lacks the key(s) {missing}")
        history = History()
        if isinstance(history_state := state["history"], list):  # written before History
            if not all(isinstance(e, dict) for e in history_state):
                self._fail("its LFVI history is not a list of dicts")
            try:
                history = History.from_rows(history_state, max(len(history_state) + 1, 100_000))
            except (TypeError, ValueError) as err:
                self._fail(f"its LFVI history cannot be restored ({err})", err)
        else:
            try:
                history.load_state_dict(self._dict(history_state, "LFVI history"))
            except ValueError as err:
                self._fail(f"its LFVI history cannot be restored ({err})", err)
        monitor = None
        if state["monitor"] is not None:
            monitor = TrainingMonitor()
            try:
                monitor.load_state_dict(self._dict(state["monitor"], "LFVI monitor"))
            except (TypeError, ValueError, KeyError) as err:
                self._fail(f"its LFVI monitor cannot be restored ({err})", err)
        nesting = state["max_plate_nesting"]
        if isinstance(nesting, bool) or not isinstance(nesting, (int, float)):
            self._fail(f"its LFVI max_plate_nesting is {nesting!r}, expected a number")
        discriminator_optim = state["discriminator_optim"]
        if discriminator_optim is not None:
            self._dict(discriminator_optim, "LFVI discriminator_optim")
        # Absent from checkpoints written before the estimator had state.
        estimator = state.get("estimator")
        if estimator:
            try:
                estimator = self._dict(estimator, "ratio estimator state")
                if "refiner" in estimator:  # a LikelihoodEstimator's: checked on a fresh one
                    LikelihoodEstimator().load_state_dict(estimator)
                else:
                    replay_from_state(estimator)
            except ValueError as err:
                self._fail(f"its ratio estimator state cannot be restored ({err})", err)
        return {
            "history": history,
            "monitor": monitor,
            "max_plate_nesting": nesting,
            "discriminator_optim": discriminator_optim,
            "estimator": estimator or {},
        }

    def _rng(self, state: Any) -> dict[str, Any]:
        state = self._dict(state, "'rng'")
        missing = [key for key in _RNG_KEYS if key not in state]
        if missing:
            self._fail(f"its 'rng' lacks the key(s) {missing}")
        # Each state is tried on a scratch generator, so that a bad one fails here.
        try:
            torch.Generator().set_state(state["torch"])
        except (TypeError, ValueError, RuntimeError) as err:
            self._fail(f"its torch RNG state is not valid ({err})", err)
        numpy_state = None
        try:
            numpy_state = plain_to_numpy(state["numpy"])
            np.random.RandomState(_global_bit_generator_type()()).set_state(numpy_state)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            self._fail(f"its numpy RNG state is not valid ({err})", err)
        try:
            random.Random().setstate(state["python"])
        except (TypeError, ValueError) as err:
            self._fail(f"its Python RNG state is not valid ({err})", err)
        return {"torch": state["torch"], "numpy": numpy_state, "python": state["python"]}

    def _generators(self, saved: Any, generators: dict[str, np.random.Generator]) -> dict[str, Any]:
        saved = self._dict(saved, "'generators'")
        if set(saved) != set(generators):
            unsaved = sorted(set(generators) - set(saved))
            unloaded = sorted(map(str, set(saved) - set(generators)))
            raise CheckpointError(
                f"Cannot load checkpoint {self.path!r}: its numpy generators do not match "
                f"generators=: "
                + "; ".join(
                    [f"{name!r} was not saved in it" for name in unsaved]
                    + [f"{name!r} was saved but not passed" for name in unloaded]
                )
                + ". Pass the same names to save_checkpoint and load_checkpoint; nothing was "
                "restored."
            )
        states = {}
        for name, rng in generators.items():
            kind = type(rng.bit_generator)
            try:
                states[name] = plain_to_numpy(saved[name])
                kind().state = states[name]  # a scratch generator of the same kind
            except (TypeError, ValueError, KeyError, AttributeError) as err:
                raise CheckpointError(
                    f"Cannot load checkpoint {self.path!r}: its state of numpy generator "
                    f"{name!r} does not fit the {kind.__name__} generator passed under that "
                    f"name ({err}); nothing was restored."
                ) from err
        return states

    def apply(self, optim: Any, lfvi: Any, generators: dict[str, np.random.Generator]) -> None:
        """Restore everything (the checks are done: nothing here raises on bad content)."""
        pyro.get_param_store().set_state({"params": self.params, "constraints": self.constraints})
        optim.set_state(self.optim)
        if lfvi is not None and self.lfvi is not None:
            lfvi.history = self.lfvi["history"]
            lfvi.monitor = self.lfvi["monitor"]
            lfvi.max_plate_nesting = self.lfvi["max_plate_nesting"]
            if lfvi.discriminator_optim is not None and self.lfvi["discriminator_optim"]:
                lfvi.discriminator_optim.set_state(self.lfvi["discriminator_optim"])
            lfvi.load_estimator_state(self.lfvi["estimator"])
        restore_random_states(self.rng, self.generators, generators)


def random_states(generators: Mapping[str, np.random.Generator]) -> dict[str, Any]:
    """
    As plain data: ``rng``, the states of torch's, numpy's and Python's global
    generators, and ``generators``, those of the given numpy generators.
    """
    return {
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": numpy_to_plain(np.random.get_state(legacy=False)),
            "python": random.getstate(),
        },
        "generators": {
            name: numpy_to_plain(rng.bit_generator.state) for name, rng in generators.items()
        },
    }


def restore_random_states(
    rng: Mapping[str, Any],
    states: Mapping[str, Any],
    generators: Mapping[str, np.random.Generator],
) -> None:
    """Set the global generators from ``rng`` and each of ``generators`` from
    ``states``, both decoded (numpy states as numpy's own objects)."""
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    for name, generator in generators.items():
        generator.bit_generator.state = states[name]


def _is_str(value: Any, expected: str) -> bool:
    return isinstance(value, str) and value == expected


def _lfvi_state(lfvi: Any) -> dict[str, Any] | None:
    if lfvi is None:
        return None
    return {
        "history": lfvi.history.state_dict(),
        "monitor": lfvi.monitor.state_dict() if lfvi.monitor is not None else None,
        "max_plate_nesting": lfvi.max_plate_nesting,
        "discriminator_optim": (
            lfvi.discriminator_optim.get_state() if lfvi.discriminator_optim is not None else None
        ),
        "estimator": lfvi.estimator.state_dict() if lfvi.estimator is not None else {},
    }


def _check_generators(
    generators: Mapping[str, np.random.Generator] | None,
) -> dict[str, np.random.Generator]:
    if generators is None:
        return {}
    if not isinstance(generators, Mapping):
        raise CheckpointError(
            f"Expected generators to be a mapping from names to numpy.random.Generator, "
            f"actual {type(generators).__name__}"
        )
    for name, rng in generators.items():
        if not isinstance(name, str) or not isinstance(rng, np.random.Generator):
            raise CheckpointError(
                f"Expected generators to map str names to numpy.random.Generator, actual "
                f"{name!r}: {type(rng).__name__}"
            )
    return dict(generators)


def _global_bit_generator_type() -> type:
    """The kind of bit generator behind numpy's global ``np.random`` functions."""
    get = getattr(np.random, "get_bit_generator", None)  # numpy >= 1.25
    return type(get()) if get is not None else np.random.MT19937
