"""Saving and resuming LFVI training exactly where it stopped."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import pyro
import torch

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | os.PathLike[str], optim: Any, lfvi: Any = None) -> None:
    """
    Save everything a resumed run needs to continue as if never stopped: the
    param store (guide and discriminator weights), the optimiser's state,
    LFVI's own state (history, diagnostics, max plate nesting, the
    discriminator's own optimiser) and the random
    number generators of torch, numpy and Python.

    Example::

        save_checkpoint("run.pt", optim, elbo)
        ...  # later, in a new process, after building model, guide, optim, elbo
        load_checkpoint("run.pt", optim, elbo)

    :param path: file to write.
    :param optim: the :class:`pyro.optim.PyroOptim` given to ``SVI``.
    :param lfvi: the :class:`~pyro_lfvi.LFVI` instance, if any.
    """
    state = {
        "params": pyro.get_param_store().get_state(),
        "optim": optim.get_state(),
        "lfvi": _lfvi_state(lfvi),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
    }
    torch.save(state, path)


def load_checkpoint(path: str | os.PathLike[str], optim: Any, lfvi: Any = None) -> None:
    """
    Restore a checkpoint written by :func:`save_checkpoint` into the param
    store, ``optim`` and ``lfvi``, and restore the random number generators.
    """
    state = torch.load(path, weights_only=False)
    pyro.get_param_store().set_state(state["params"])
    optim.set_state(state["optim"])
    if lfvi is not None and state["lfvi"] is not None:
        lfvi.history = list(state["lfvi"]["history"])
        lfvi.monitor = state["lfvi"]["monitor"]
        lfvi.max_plate_nesting = state["lfvi"]["max_plate_nesting"]
        if lfvi.discriminator_optim is not None and state["lfvi"]["discriminator_optim"]:
            lfvi.discriminator_optim.set_state(state["lfvi"]["discriminator_optim"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])


def _lfvi_state(lfvi: Any) -> dict[str, Any] | None:
    if lfvi is None:
        return None
    return {
        "history": list(lfvi.history),
        "monitor": lfvi.monitor,
        "max_plate_nesting": lfvi.max_plate_nesting,
        "discriminator_optim": (
            lfvi.discriminator_optim.get_state() if lfvi.discriminator_optim is not None else None
        ),
    }
