r"""Proper scoring rules for training the ratio estimator.

Each takes the logits on the p-side (model samples, label 1) and the q-side
(data with guide samples, label 0) and returns a scalar to minimise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["RatioLoss", "hinge_loss", "log_loss", "resolve_ratio_loss"]

RatioLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def log_loss(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    r"""
    Logistic loss (paper Eq. 5), minimised by the true log ratio:

    .. math::

        \mathcal{D}_{\log} = \mathbb{E}_p[\mathrm{softplus}(-r)]
            + \mathbb{E}_q[\mathrm{softplus}(r)]
    """
    return F.softplus(-logits_p).mean() + F.softplus(logits_q).mean()


def hinge_loss(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    r"""
    Hinge loss (paper Appendix D):

    .. math::

        \mathcal{D}_{\mathrm{hinge}} = \mathbb{E}_p[\max(0, 1 - r)]
            + \mathbb{E}_q[\max(0, 1 + r)]

    It estimates the sign of the log ratio rather than its value, so prefer
    ``"log"`` when posterior spread matters.
    """
    return F.relu(1.0 - logits_p).mean() + F.relu(1.0 + logits_q).mean()


_LOSSES: dict[str, RatioLoss] = {"hinge": hinge_loss, "log": log_loss}


def resolve_ratio_loss(ratio_loss: str | RatioLoss) -> RatioLoss:
    """Turn ``"log"``, ``"hinge"`` or a callable into a loss function."""
    if callable(ratio_loss):
        return ratio_loss
    if isinstance(ratio_loss, str) and ratio_loss in _LOSSES:
        return _LOSSES[ratio_loss]
    raise ValueError(
        f"Expected ratio_loss to be 'log', 'hinge' or a callable "
        f"(logits_p, logits_q) -> scalar, actual {ratio_loss!r}"
    )
