"""The handler that names implicit sites and checks their observed values."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .compat import Messenger
from .errors import ModelStructureError
from .implicit import ImplicitSite

__all__ = ["NameImplicitSitesMessenger", "name_implicit_sites", "observed_value"]


class NameImplicitSitesMessenger(Messenger):
    """
    Tells each :class:`ImplicitSite` the name of its sample site, so that
    simulator errors name the site, and checks the observed value of each
    implicit site: lists, numpy arrays, integers and booleans become tensors of
    the default float dtype, and a value whose shape does not fit the site's
    batch and event shapes is refused, naming the site. It never changes a
    latent value.

    :param bool allow_nonfinite: let simulators return NaN or inf (LFVI's
        simulation side drops such rows from the ratio estimator's training)
        instead of raising :class:`~pyro_lfvi.SimulatorError`.
    """

    def __init__(self, allow_nonfinite: bool = False) -> None:
        super().__init__()
        self.allow_nonfinite = allow_nonfinite

    def _pyro_sample(self, msg: Any) -> None:
        fn = msg["fn"]
        if not isinstance(fn, ImplicitSite):
            return
        if fn.site_name != msg["name"] or fn.allow_nonfinite != self.allow_nonfinite:
            fn = copy.copy(fn)
            fn.site_name = msg["name"]
            fn.allow_nonfinite = self.allow_nonfinite
            msg["fn"] = fn
        if msg["is_observed"]:
            msg["value"] = observed_value(msg["name"], msg["value"], fn)


def name_implicit_sites(fn: Callable[..., Any] | None = None, allow_nonfinite: bool = False) -> Any:
    """
    Handler of :class:`NameImplicitSitesMessenger`, in the form of Pyro's own
    handlers: ``name_implicit_sites(model)`` wraps a callable,
    ``name_implicit_sites()`` returns the messenger.

    :param callable fn: the model or guide to wrap, if any.
    :param bool allow_nonfinite: see :class:`NameImplicitSitesMessenger`.
    """
    messenger = NameImplicitSitesMessenger(allow_nonfinite)
    return messenger if fn is None else messenger(fn)


def observed_value(name: str, value: Any, fn: ImplicitSite) -> torch.Tensor:
    """
    The observed value of implicit site ``name`` as a tensor of the default
    float dtype, checked against the site's batch and event shapes.

    :raises ModelStructureError: for a value that is empty, not numeric, or
        whose shape does not fit the site.
    """
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ModelStructureError(
                f"Expected the observed value of site '{name}' to be a tensor, numpy "
                f"array or list of numbers, actual {type(value).__name__}"
            ) from err
    if value.dtype != torch.get_default_dtype():
        if value.is_complex():
            raise ModelStructureError(
                f"Expected real observed values at site '{name}', actual {value.dtype}"
            )
        value = value.to(torch.get_default_dtype())
    if value.numel() == 0:
        raise ModelStructureError(
            f"Expected at least one observed value at site '{name}', actual an empty "
            f"tensor of shape {tuple(value.shape)}"
        )
    expected = fn.batch_shape + fn.event_shape
    try:
        fits = torch.broadcast_shapes(value.shape, expected) == expected
    except RuntimeError:
        fits = False
    if not fits:
        batch = tuple(fn.batch_shape)[-1:]
        hint = (
            f"; if each data point is a vector of {tuple(value.shape[len(batch) :])}, "
            f"pass event_shape={tuple(value.shape[len(batch) :])} to ImplicitSite"
            if value.dim() > len(batch) and tuple(value.shape[: len(batch)]) == batch
            else "; check that the data plate's size is the number of data points "
            "(and that a subsampled plate's indices select the observations)"
        )
        raise ModelStructureError(
            f"Expected the observed value of site '{name}' to have shape "
            f"{tuple(expected)} (batch_shape {tuple(fn.batch_shape)} from its plates "
            f"and parameters + event_shape {tuple(fn.event_shape)}), actual "
            f"{tuple(value.shape)}{hint}"
        )
    return value
