"""The interface between :class:`~pyro_lfvi.LFVI` and a ratio estimator.

A ratio estimator turns a :class:`~pyro_lfvi.pairing.PairedJoints` (the
guide's draws, the observations and fresh simulations of the model) into

* the per-point log ratio that enters the ELBO, with gradients to the guide
  only, and
* the loss that trains the estimator itself, with gradients to its own
  weights only,

returned together as :class:`RatioObjectives` (as Pyro's ``rws.py`` returns
its two objectives). Implementations: :class:`~pyro_lfvi.ContrastiveRatioEstimator`
(the default, trained on simulations alone) and the paper's joint classifier,
:class:`~pyro_lfvi.JointRatioEstimator` (``LFVI(estimator="joint")``).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.params import module_from_param_with_module_name, param_with_module_name
from torch import nn

from .errors import DiscriminatorError, ModelStructureError
from .pairing import PairedJoints

__all__ = [
    "RatioEstimator",
    "RatioObjectives",
    "checked_per_point",
    "frozen_weights",
    "private_updates",
    "register_network",
    "stored_module",
]


def checked_per_point(
    out: object, pair: PairedJoints, network: str, note: str = ""
) -> torch.Tensor:
    """``out`` if it is a finite ``(P, M)`` tensor (one value per particle and data
    point), else a :class:`~pyro_lfvi.DiscriminatorError` naming ``network``."""
    expected = (pair.num_particles, pair.roles.num_points)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DiscriminatorError(
            f"Expected the {network} to return one value per data point, shape {expected} "
            f"(particles, points), actual {shape}.{note}"
        )
    if not bool(torch.isfinite(out).all()):
        raise DiscriminatorError(
            f"The {network} returned NaN or inf; lower the learning rate or clip gradients "
            f"(pyro.optim.ClippedAdam(clip_norm=...))"
        )
    return out


def stored_module(name: str) -> bool:
    """Whether Pyro's param store already holds weights of the module ``name``
    (a resumed run): a network built then must not draw from the global RNG."""
    return any(module_from_param_with_module_name(k) == name for k in pyro.get_param_store())


def register_network(name: str, net: nn.Module, untrained: Sequence[str] = ()) -> nn.Module:
    """
    ``pyro.module(name, net, update_module_params=True)``, with the parameters
    named in ``untrained`` (never trained: an input standardisation kept as a
    parameter so that the param store saves and restores it) hidden from the
    trace, so that SVI's optimiser does not step them.
    """
    if _CHECKED.get(net) != name:
        _check_stored_shapes(name, net)
        _CHECKED[net] = name
    hidden = [param_with_module_name(name, n) for n in untrained]
    with poutine.block(hide=hidden):
        return pyro.module(name, net, update_module_params=True)


_CHECKED: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
"""Networks whose stored weights :func:`register_network` has checked, by name."""


def _check_stored_shapes(name: str, net: nn.Module) -> None:
    """A ``ModelStructureError`` if the param store holds weights of module
    ``name`` that do not fit ``net``: another model's estimator, left there
    because the store was not cleared between fits."""
    store = pyro.get_param_store()
    for param_name, param in net.named_parameters():
        key = param_with_module_name(name, param_name)
        if key in store and tuple(store[key].shape) != tuple(param.shape):
            raise ModelStructureError(
                f"Expected the param store's '{key}' to have this model's shape "
                f"{tuple(param.shape)}, actual {tuple(store[key].shape)}: the store holds "
                f"the ratio estimator of another model (a previous fit). Call "
                f"pyro.clear_param_store() before fitting a new model"
            )


def private_updates(
    optim: torch.optim.Optimizer, loss: Callable[[], torch.Tensor], steps: int
) -> None:
    """``steps`` updates by an estimator's private optimiser ``optim`` on
    ``loss()`` (its ``refine_steps``), leaving its parameters' gradients, which
    the SVI step will use, as they were."""
    params = [p for group in optim.param_groups for p in group["params"]]
    saved = [p.grad for p in params]
    for _ in range(steps):
        for p in params:
            p.grad = None
        loss().backward()
        optim.step()
    for p, grad in zip(params, saved, strict=True):
        p.grad = grad


@contextlib.contextmanager
def frozen_weights(net: nn.Module) -> Iterator[None]:
    """Evaluate ``net`` with its weights as constants: inputs still get gradients."""
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass
class RatioObjectives:
    """What a ratio estimator returns for one :class:`~pyro_lfvi.pairing.PairedJoints`.

    :ivar torch.Tensor log_ratio: ``(P, M)``, the estimated
        :math:`\\log p(x_n \\mid z_n, \\beta)` up to a function of
        :math:`x_n` alone, plus whatever part of the local ratio the estimator
        learns; LFVI adds the known local offsets ``pair.q_offset``.
    :ivar torch.Tensor loss: the estimator's own training loss (a scalar).
    :ivar dict stats: per-step figures for :attr:`~pyro_lfvi.LFVI.history`.
    """

    log_ratio: torch.Tensor
    loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


class RatioEstimator:
    """Base class of ratio estimators (see the module docstring)."""

    #: Whether the estimator learns the known local offsets too (the joint
    #: classifier does; the contrastive estimator leaves them to LFVI).
    includes_offsets: bool = False

    def objectives(self, pair: PairedJoints, update: bool = True) -> RatioObjectives:
        """
        :param PairedJoints pair: one pairing of model and guide.
        :param bool update: whether running statistics (input standardisation)
            may follow this batch; ``False`` inside ``LFVI.loss``, which has no
            side effects.
        """
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        """The estimator's networks by param-store name (for checkpoints and modules)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """State outside the param store that a resumed run needs (tensors and
        plain data; default: none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        :raises ValueError: if ``state`` is not such a state.
        """
        if state:
            raise ValueError(
                f"Expected no state for {type(self).__name__}, actual keys {sorted(state)}"
            )
