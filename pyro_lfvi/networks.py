"""Networks for implicit variational families."""

from __future__ import annotations

import torch
from torch import nn

from .discriminator import mlp
from .validation import check_nonnegative_int, check_positive_int

__all__ = ["NoiseNetwork"]


class NoiseNetwork(nn.Module):
    r"""
    An inference network fed with noise, for implicit guides:
    :math:`z = T(\delta, \text{inputs})`, :math:`\delta \sim N(0, I)`. Its
    draws have no density; wrap it in an :class:`~pyro_lfvi.ImplicitSite`
    with ``reparameterized=True``.

    ``forward(*inputs)`` takes tensors of one common batch shape and returns
    one scalar draw per batch element. With ``location_scale=True`` the first
    two inputs are a location and a positive scale, and the draw is
    ``loc + scale * T(delta, other inputs)``.

    Example::

        net = NoiseNetwork(inputs=2)  # z_n = T(delta, x_n, beta)
        with pyro.plate("data", N):
            pyro.sample("z", ImplicitSite(pyro.module("net", net), x, beta.expand(N),
                                          reparameterized=True))

    :param int inputs: number of scalar inputs besides the noise (and
        besides ``loc`` and ``scale`` when ``location_scale``).
    :param int noise_dim: dimension of the noise.
    :param int hidden: width of the two hidden layers.
    :param bool location_scale: see above.
    """

    def __init__(
        self, inputs: int, noise_dim: int = 2, hidden: int = 32, location_scale: bool = False
    ) -> None:
        super().__init__()
        self.inputs = check_nonnegative_int("inputs", inputs)
        self.noise_dim = check_positive_int("noise_dim", noise_dim)
        hidden = check_positive_int("hidden", hidden)
        self.location_scale = location_scale
        self.net = mlp(self.inputs + self.noise_dim, (hidden, hidden))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        loc_scale, rest = (inputs[:2], inputs[2:]) if self.location_scale else ((), inputs)
        if len(rest) != self.inputs or len(loc_scale) < (2 if self.location_scale else 0):
            raise ValueError(
                f"Expected {self.inputs} input tensor(s)"
                f"{' after the location and scale' if self.location_scale else ''} "
                f"(NoiseNetwork(inputs={self.inputs})), actual {len(inputs)} in all"
            )
        shape = torch.broadcast_shapes(*(t.shape for t in inputs))
        noise = torch.randn((*shape, self.noise_dim))
        features = torch.cat([*(t.expand(shape).unsqueeze(-1) for t in rest), noise], -1)
        out = self.net(features).squeeze(-1)
        if loc_scale:
            return loc_scale[0] + loc_scale[1] * out
        return out
