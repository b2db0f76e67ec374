"""Training state that is not tensors, as plain data and back, for checkpoints.

A checkpoint holds only tensors and plain data (dicts, lists, tuples, str,
int, float, bool, None), so that it can be read with
``torch.load(path, weights_only=True)``. This module converts the rest of the
state a resumed run needs to plain data and back:

- the torch and pyro constraints of Pyro's param store
  (:func:`encode_constraint`, :func:`decode_constraint`), by name for a
  module-level constraint object, else by class and constructor arguments;
- numpy random number generator states, both the global legacy one and those
  of :class:`numpy.random.Generator` bit generators (:func:`numpy_to_plain`,
  :func:`plain_to_numpy`), whose arrays become tagged dicts of Python ints;

and checks that a whole state is plain data (:func:`check_plain`), naming
the spot that is not.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from functools import cache
from typing import Any

import numpy as np
import pyro.distributions.constraints as pyro_constraints
import torch
import torch.distributions.constraints as torch_constraints
from torch import nn

from .errors import CheckpointError

__all__ = [
    "check_plain",
    "decode_constraint",
    "encode_constraint",
    "numpy_to_plain",
    "plain_to_numpy",
]

_SCALARS = (str, int, float, bool, type(None))
_NDARRAY = "__ndarray__"  # tags a numpy array stored as plain data
_CONSTRAINT = "__constraint__"  # tags a constraint among another constraint's arguments

# Pyro's param store keeps a torch constraint object per parameter. Those are
# stored as plain data and rebuilt on load, rather than allow-listing their
# classes for the unpickler with torch.serialization.safe_globals: a named
# constraint (``constraints.positive``) comes back as the very same object,
# which pyro relies on for ``constraints.real``, and the unpickler keeps
# accepting nothing but tensors and plain data, whatever classes torch or pyro
# add later. Any other constraint of torch or pyro is stored as its class
# name and its constructor's arguments.
_CONSTRAINT_MODULES = {"torch": torch_constraints, "pyro": pyro_constraints}


def check_plain(value: Any, where: str) -> None:
    """
    Raise unless ``value`` is what ``torch.load(weights_only=True)`` reads as
    is: tensors, and dicts (with str, int, float, bool or None keys), lists,
    tuples, str, int, float, bool and None, nested to any depth.

    :param object value: the state to check.
    :param str where: what ``value`` is, for the error message (e.g.
        ``"the checkpoint"``); nested spots are named after it, as in
        ``the checkpoint['rng']['python'][1]``.
    :raises CheckpointError: naming the first spot that is not a tensor or
        plain data, or whose key is not a scalar.
    """
    if type(value) in _SCALARS or type(value) in (torch.Tensor, nn.Parameter):
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in _SCALARS:
                raise CheckpointError(
                    f"Cannot save a checkpoint: {where} has a key of type {type(key).__name__}; "
                    f"a checkpoint holds only tensors and plain data"
                )
            check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"Cannot save a checkpoint: {where} is a {type(value).__name__}, which "
        f"torch.load(weights_only=True) refuses; a checkpoint holds only tensors and plain data "
        f"(dicts, lists, tuples, str, int, float, bool, None)"
    )


def numpy_to_plain(value: Any) -> Any:
    """
    A numpy random number generator state as plain data: each array becomes a
    dict tagged ``"__ndarray__"`` (its dtype) holding its shape and its data
    as a (nested) list of Python ints, each numpy scalar a Python scalar;
    dicts, lists and tuples are converted item by item.

    :param object value: a state, such as ``np.random.get_state(legacy=False)``
        or ``rng.bit_generator.state``.
    :returns: the state as plain data, undone by :func:`plain_to_numpy`.
    :rtype: object
    """
    if isinstance(value, np.ndarray):
        return {_NDARRAY: value.dtype.str, "shape": list(value.shape), "data": value.tolist()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: numpy_to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(numpy_to_plain(item) for item in value)
    return value


def plain_to_numpy(value: Any) -> Any:
    """
    Undo :func:`numpy_to_plain`: each dict tagged ``"__ndarray__"`` becomes a
    numpy array again; other dicts and lists are converted item by item.

    :param object value: a state as written by :func:`numpy_to_plain` (and
        read back from a file).
    :returns: the state, to give to ``np.random.set_state`` or
        ``rng.bit_generator.state``.
    :rtype: object
    :raises ValueError: if a tagged array's dtype is not a bool, integer or
        float type. Malformed data may raise ``TypeError``, ``ValueError`` or
        ``KeyError`` as well.
    """
    if isinstance(value, dict) and _NDARRAY in value:
        dtype = np.dtype(value[_NDARRAY])
        if dtype.kind not in "biuf":
            raise ValueError(f"unexpected array dtype {dtype}")
        return np.asarray(value["data"], dtype=dtype).reshape(value["shape"])
    if isinstance(value, dict):
        return {key: plain_to_numpy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_to_numpy(item) for item in value]
    return value


@cache
def _named_constraints() -> dict[str, torch_constraints.Constraint]:
    """pyro's (and so torch's) module-level constraint objects, by name."""
    return {
        name: obj
        for name in sorted(dir(pyro_constraints))
        if isinstance(obj := getattr(pyro_constraints, name), torch_constraints.Constraint)
    }


def encode_constraint(constraint: torch_constraints.Constraint, param: str) -> dict[str, Any]:
    """
    A torch or pyro constraint as plain data: ``{"name": name}`` for a
    module-level constraint object of :mod:`pyro.distributions.constraints`
    (which holds torch's too), else ``{"class": ..., "module": "torch" or
    "pyro", "args": {...}}`` with the constructor's arguments, a constraint
    among them encoded in turn.

    :param torch.distributions.constraints.Constraint constraint: the
        constraint to encode.
    :param str param: the name of the param it constrains, for the error
        message.
    :returns: the constraint as plain data, undone by :func:`decode_constraint`.
    :rtype: dict
    :raises CheckpointError: if the constraint is not one of torch's or
        pyro's, or its attributes are not exactly its constructor's arguments.
    """
    for name, obj in _named_constraints().items():
        if obj is constraint:
            return {"name": name}
    cls = type(constraint)
    module = next(
        (
            key
            for key, mod in _CONSTRAINT_MODULES.items()
            if cls.__module__ == mod.__name__ and getattr(mod, cls.__name__, None) is cls
        ),
        None,
    )
    names = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]
    # Only constraints whose attributes are exactly their constructor's arguments
    # can be rebuilt from those arguments.
    if module is None or sorted(vars(constraint)) != sorted(names):
        raise CheckpointError(
            f"Cannot save the constraint {constraint!r} of param {param!r}: a checkpoint "
            f"stores constraints as plain data, which works for the constraints of "
            f"torch.distributions.constraints and pyro.distributions.constraints only"
        )
    args = {name: _encode_argument(getattr(constraint, name), param) for name in names}
    return {"class": cls.__name__, "module": module, "args": args}


def _encode_argument(value: Any, param: str) -> Any:
    if isinstance(value, torch_constraints.Constraint):
        return {_CONSTRAINT: encode_constraint(value, param)}
    if isinstance(value, (list, tuple)):
        return type(value)(_encode_argument(item, param) for item in value)
    return value


def decode_constraint(code: Any) -> torch_constraints.Constraint:
    """
    Rebuild a constraint encoded by :func:`encode_constraint`: a named one
    comes back as the very same object, any other is constructed anew from
    its class and arguments.

    :param object code: the constraint as plain data (read from a file, so
        possibly malformed).
    :returns: the constraint.
    :rtype: torch.distributions.constraints.Constraint
    :raises TypeError: if ``code`` is not a dict.
    :raises ValueError: if ``code`` names no constraint of torch or pyro, or
        its arguments are not a dict by name.
    :raises Exception: whatever the constraint's constructor raises on bad
        arguments.
    """
    if not isinstance(code, dict):
        raise TypeError(f"expected a dict, actual {type(code).__name__}")
    if set(code) == {"name"}:
        if code["name"] not in _named_constraints():
            raise ValueError(f"unknown constraint name {code['name']!r}")
        return _named_constraints()[code["name"]]
    if set(code) != {"class", "module", "args"}:
        raise ValueError(f"unexpected keys {sorted(map(str, code))}")
    if code["module"] not in _CONSTRAINT_MODULES:
        raise ValueError(f"unknown constraint module {code['module']!r}")
    cls = getattr(_CONSTRAINT_MODULES[code["module"]], str(code["class"]), None)
    if not (isinstance(cls, type) and issubclass(cls, torch_constraints.Constraint)):
        raise ValueError(f"{code['module']} has no constraint class {code['class']!r}")
    args = code["args"]
    if not isinstance(args, dict) or not all(isinstance(key, str) for key in args):
        raise ValueError("expected the constraint's arguments as a dict by name")
    return cls(**{name: _decode_argument(value) for name, value in args.items()})


def _decode_argument(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {_CONSTRAINT}:
        return decode_constraint(value[_CONSTRAINT])
    if isinstance(value, (list, tuple)):
        return type(value)(_decode_argument(item) for item in value)
    return value
