r"""Learned summaries (embedding networks) of the observed data points.

The default ratio estimator (:class:`~pyro_lfvi.ContrastiveRatioEstimator`)
feeds a long data point to its classifier through learned features, trained
with the classifier. The network is chosen
from the shape of one data point of each observed site:

* a scalar or a vector (``event_shape=()`` or ``(d,)``): nothing for at
  most :data:`SMALL` (16) features, else an MLP to ``min(d, 32)`` features.
  Fewer would lose information: with 8 features for sbibm's 10-dimensional
  ``gaussian_linear``, the posterior means came out 0.7 sds off, against 0.11
  without an embedding;
* a time series, ``event_shape=(T, C)``: a 1-D convolution over time with
  ``C`` channels, then global average and max pooling;
* an exchangeable set, a :class:`pyro.plate` nested inside the data plate: a
  permutation-invariant network (a deep set, the mean of a per-element MLP).

Each module maps a batch of standardised data points ``(B, *point_shape)`` to
``(B, k)``. Pass your own :class:`torch.nn.Module` with that signature to
``ContrastiveRatioEstimator(embedding=...)`` (or a dict of them by site name).

References

[1] `Deep Sets`, Manzil Zaheer et al. (NeurIPS 2017)

[2] `Automatic Posterior Transformation for Likelihood-Free Inference`, David
    Greenberg, Marcel Nonnenmacher, Jakob Macke (ICML 2019): embedding networks
    trained jointly with the estimator, as in the ``sbi`` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .validation import check_positive_int

__all__ = [
    "SMALL",
    "WIDE",
    "ConvEmbedding",
    "DeepSetEmbedding",
    "MLPEmbedding",
    "PointShape",
    "default_embedding",
]

SMALL = 16
"""Data points with at most this many features reach the classifier as they are."""

WIDE = 32
"""The most features a default embedding hands to the classifier."""


@dataclass(frozen=True)
class PointShape:
    """The layout of one data point of an observed site.

    ``set_size`` is the number of elements of plates nested inside the data
    plate (1 if none), ``event_shape`` the site's event shape.
    """

    set_size: int
    event_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape to which a flattened row is reshaped."""
        if self.set_size > 1:
            return (self.set_size, max(1, _numel(self.event_shape)))
        return self.event_shape or (1,)

    @property
    def numel(self) -> int:
        return self.set_size * max(1, _numel(self.event_shape))


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


class MLPEmbedding(nn.Module):
    """An ELU MLP from a flattened data point to ``out_size`` features."""

    def __init__(self, in_size: int, out_size: int, hidden: int = 64) -> None:
        super().__init__()
        in_size, out_size, hidden = _sizes(in_size=in_size, out_size=out_size, hidden=hidden)
        self.out_size = out_size
        self.net = nn.Sequential(
            nn.Linear(in_size, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU()
        )
        self.out = nn.Linear(hidden, out_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x.flatten(1)))


class ConvEmbedding(nn.Module):
    """
    A 1-D convolution over a time series ``(B, T, C)``: two convolutions of
    width 5, then average and max pooling over time, then a linear map.
    """

    def __init__(self, channels: int, out_size: int, hidden: int = 32) -> None:
        super().__init__()
        channels, out_size, hidden = _sizes(channels=channels, out_size=out_size, hidden=hidden)
        self.out_size = out_size
        self.conv = nn.Sequential(
            nn.Conv1d(channels, hidden, 5, padding=2),
            nn.ELU(),
            nn.Conv1d(hidden, hidden, 5, padding=2),
            nn.ELU(),
        )
        self.out = nn.Linear(2 * hidden, out_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.transpose(-1, -2))
        return self.out(torch.cat([h.mean(-1), h.amax(-1)], -1))


class DeepSetEmbedding(nn.Module):
    """A permutation-invariant network on a set ``(B, S, e)``: mean of an MLP."""

    def __init__(self, element_size: int, out_size: int, hidden: int = 64) -> None:
        super().__init__()
        element_size, out_size, hidden = _sizes(
            element_size=element_size, out_size=out_size, hidden=hidden
        )
        self.out_size = out_size
        self.phi = nn.Sequential(
            nn.Linear(element_size, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU()
        )
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, out_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rho(self.phi(x).mean(-2))


def default_embedding(point: PointShape) -> nn.Module:
    """
    The default embedding for one data point of the given layout (see the
    module docstring); :class:`torch.nn.Identity` for small points.
    """
    size = point.numel
    if point.set_size > 1:
        return DeepSetEmbedding(max(1, _numel(point.event_shape)), min(WIDE, max(8, size // 2)))
    if len(point.event_shape) == 2 and point.event_shape[0] >= 8:
        return ConvEmbedding(point.event_shape[1], min(WIDE, size))
    if size <= SMALL:
        return nn.Identity()
    return MLPEmbedding(size, min(WIDE, size))


def _sizes(**sizes: Any) -> list[int]:
    """The given layer sizes as ints >= 1, or a ValueError naming the first bad one."""
    return [check_positive_int(name, value) for name, value in sizes.items()]
