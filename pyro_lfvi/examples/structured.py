r"""Building blocks of guides that let local latents move with the globals.

A mean-field guide on a hierarchical model cannot let the locals move with the
globals, so it underestimates the spread of population scales, whatever the
likelihood (0.57-0.77x NUTS's on :class:`~pyro_lfvi.examples.LocalSeries`
with an exact likelihood too). The guides of the examples built from these
blocks are Gaussian in the unconstrained space with the posterior's dependence
structure: the globals :math:`u` full-rank (a chain of conditional Normals),
and each local

.. math::

    z_n \mid u \sim N\big(m_n + w_n^\top (u - \bar u),\;
        s_n \exp(v_n^\top (u - \bar u))\big),

independent given the globals, as in the model. The scale's dependence on the
globals is the funnel of hierarchical models: where the population scale is
small, every local is pinned near the population mean. Without it (:math:`v_n
= 0`) the guide can underestimate the population scale's spread even at its
optimum and with the exact likelihood (README, "Guides", has the figures on
:class:`~pyro_lfvi.examples.LocalSeries`). LFVI needs only that each local's
guide density is explicit given the globals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

__all__ = ["coupled_locals", "gaussian_chain", "guide_moments"]


def gaussian_chain(
    prefix: str, sites: Sequence[tuple[str, bool]], init_loc: Sequence[float], init_scale: float
) -> torch.Tensor:
    r"""
    Sample global sites as a chain of conditional Normals (a full-rank
    Gaussian in the unconstrained space).

    :param str prefix: prefix of the param names.
    :param sites: ``(name, positive)`` per site; a positive site is LogNormal.
    :param init_loc: initial unconstrained means.
    :param float init_scale: initial conditional sds.
    :returns: the deviations :math:`u - \bar u`, shape ``batch + (len(sites),)``.
    """
    center = pyro.param(f"{prefix}_loc", torch.tensor(list(init_loc)))
    spread = pyro.param(
        f"{prefix}_scale", torch.full((len(sites),), init_scale), constraint=constraints.positive
    )
    coupling = pyro.param(f"{prefix}_coupling", torch.zeros(len(sites), len(sites)))
    deviations: list[torch.Tensor] = []
    for i, (name, positive) in enumerate(sites):
        shift = sum((coupling[i, j] * deviations[j] for j in range(i)), torch.zeros(()))
        loc = center[i] + shift
        if positive:
            value = pyro.sample(name, dist.LogNormal(loc, spread[i])).log()
        else:
            value = pyro.sample(name, dist.Normal(loc, spread[i]))
        deviations.append(value - center[i])
    return torch.stack(torch.broadcast_tensors(*deviations), -1)


def coupled_locals(
    name: str, deviation: torch.Tensor, size: int, init_loc: float, init_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    The location and scale of ``size`` local Normals
    :math:`m_n + w_n^\top (u - \bar u)` and :math:`s_n \exp(v_n^\top (u - \bar
    u))`, for use inside the data plate (params ``{name}_loc``,
    ``{name}_scale``, ``{name}_coupling`` for :math:`w` and
    ``{name}_scale_coupling`` for :math:`v`, both starting at zero).
    """
    loc = pyro.param(f"{name}_loc", torch.full((size,), init_loc))
    scale = pyro.param(
        f"{name}_scale", torch.full((size,), init_scale), constraint=constraints.positive
    )
    weights = pyro.param(f"{name}_coupling", torch.zeros(size, deviation.shape[-1]))
    scale_weights = pyro.param(f"{name}_scale_coupling", torch.zeros(size, deviation.shape[-1]))
    return loc + (deviation * weights).sum(-1), scale * (deviation * scale_weights).sum(-1).exp()


def guide_moments(
    guide: Callable[[torch.Tensor], None],
    data: torch.Tensor,
    sites: dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]],
    num_samples: int = 4000,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """
    Means and sds of functions of ``guide``'s draws (on a forked random stream).

    :param dict sites: output name to a function of the draws by site name,
        e.g. ``{"log_tau": lambda d: d["tau"].log()}``.
    """
    predictive = pyro.infer.Predictive(guide, num_samples=num_samples, parallel=True)
    with torch.no_grad(), torch.random.fork_rng():
        draws = predictive(data)
    out = {}
    for key, fn in sites.items():
        value = fn(draws).reshape(num_samples, -1).double()
        out[key] = (value.mean(0).squeeze(), value.std(0).squeeze())
    return out
