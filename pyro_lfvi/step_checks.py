"""Per-step figures that LFVI records and :class:`~pyro_lfvi.TrainingMonitor` judges.

Each step, whatever the ratio estimator, :func:`pair_checks` measures from
the step's pairing of the model's and the guide's joints how the
simulations compare with the observations (a posterior predictive check),
and how wide the guide's locals and globals are against their priors;
:func:`global_variances` gives the globals' figures per component, which the
monitor pools over its window. With few particles one step's spread is a
rough estimate, so these figures are built from variances (unbiased) rather
than standard deviations, and a median of variances is corrected by
:func:`chi2_median_ratio`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # torch and the pairing are imported when first needed
    import torch

    from .compat import Site
    from .pairing import PairedJoints

__all__ = [
    "CHECK_DRAWS",
    "GlobalSpreads",
    "chi2_median_ratio",
    "discriminator_accuracy",
    "global_variances",
    "pair_checks",
    "spread_ratios",
]

CHECK_DRAWS = 8
"""Prior draws per step for the spread checks of :func:`pair_checks`."""


def discriminator_accuracy(
    logits_p: Sequence[float] | object, logits_q: Sequence[float] | object
) -> float:
    """Balanced accuracy of the classifier, counting a zero logit as half right."""
    import torch

    p = torch.as_tensor(logits_p)
    q = torch.as_tensor(logits_q)
    right_p = (p > 0).float() + 0.5 * (p == 0).float()
    right_q = (q < 0).float() + 0.5 * (q == 0).float()
    return float(0.5 * (right_p.mean() + right_q.mean()))


def _unconstrained_draws(
    site: Site, value: torch.Tensor, draws: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The guide's value and ``draws`` prior draws, unconstrained."""
    import torch
    from torch.distributions import biject_to

    from .roles import dist_of

    fn = dist_of(site)
    transform = biject_to(fn.support)
    prior = transform.inv(fn.sample(torch.Size([draws])))
    return transform.inv(value), prior


@functools.cache
def chi2_median_ratio(dof: int) -> float:
    r"""
    The median of :math:`\chi^2_k / k` for ``k = dof``: that of a variance
    from ``dof + 1`` normal draws, in units of the true variance (0.455 for
    two draws, 0.907 for eight). Dividing a median of such variances by it
    removes the bias that few particles give it.
    """
    import torch

    shape = torch.tensor(dof / 2, dtype=torch.float64)
    low, high = 0.0, 10.0 * dof + 10.0
    for _ in range(60):  # bisection on the regularised incomplete gamma function
        mid = 0.5 * (low + high)
        cdf = float(torch.special.gammainc(shape, torch.tensor(mid / 2, dtype=torch.float64)))
        low, high = (mid, high) if cdf < 0.5 else (low, mid)
    return 0.5 * (low + high) / dof


class GlobalSpreads(NamedTuple):
    """Per component of the guide's global latents, unconstrained (see
    :func:`global_variances`)."""

    guide_var: list[float]
    """The variance of the guide's draws over the particles."""
    prior_var: list[float]
    """That of the prior's draws."""
    beyond_prior: list[float]
    """The fraction of the guide's draws outside the range of the prior's,
    over the fraction a draw of the prior itself would have there,
    :math:`2 / (n + 1)` for :math:`n` prior draws: near 1 for a guide like
    the prior, near 0 for one inside the prior's bulk, whatever its spread."""


def global_variances(pair: PairedJoints) -> GlobalSpreads:
    """
    Per component of the guide's global latents, unconstrained: the variance
    of its draws over the particles, that of ``4 * CHECK_DRAWS`` prior draws
    per particle, and how often the guide's draws fall beyond the prior's
    (empty lists with fewer than two particles).

    With few particles one step's variance is a rough estimate; the monitor
    pools them over its window before it takes ratios of spreads.
    """
    from .roles import value_of

    spreads = GlobalSpreads([], [], [])
    if pair.num_particles < 2:
        return spreads
    for name in pair.roles.global_:
        site = pair.q_trace.nodes[name]
        try:
            value, prior = _unconstrained_draws(site, value_of(site).detach(), 4 * CHECK_DRAWS)
        except NotImplementedError:
            continue
        if value.dim() != prior.dim() - 1:
            continue
        value = value.reshape(pair.num_particles, -1)
        prior = prior.reshape(prior.shape[0] * pair.num_particles, -1)
        beyond = (value < prior.min(0).values) | (value > prior.max(0).values)
        spreads.guide_var.extend(value.var(0).tolist())
        spreads.prior_var.extend(prior.var(0).tolist())
        spreads.beyond_prior.extend((beyond.double().mean(0) * (prior.shape[0] + 1) / 2).tolist())
    return spreads


def spread_ratios(guide_var: Sequence[float], prior_var: Sequence[float]) -> list[float]:
    """Per component, the guide's sd over the prior's, from their variances."""
    return [(g / max(p, 1e-24)) ** 0.5 for g, p in zip(guide_var, prior_var, strict=True)]


def pair_checks(pair: PairedJoints, variances: GlobalSpreads | None = None) -> dict[str, float]:
    """
    Per-step checks of one pairing, whatever the ratio estimator:

    * ``ppc_outside``: the fraction of observed values (data points times
      features) outside the range of this step's simulations, widened by 10%:
      a posterior predictive check. When the model can produce the data it
      stays near ``2 / (S + 1)`` for ``S`` exchangeable simulations; per
      value rather than per point, so that a long series is not flagged for
      one day that happens to beat every simulation;
    * ``local_sd_ratio``: the square root of the median over data points of
      the variance of the guide's local draws over the particles, divided by
      that of the local prior at the guide's globals, and by
      :func:`chi2_median_ratio` (few particles bias a median of variances
      low); above 1 the local posteriors are wider than their prior;
    * ``prior_sd_ratio``: the smallest, over global latents, spread of the
      guide's draws divided by the prior's (unconstrained); near 1 the guide
      has learned nothing from the data;
    * ``wide_global_ratio``: the largest such ratio; well above 1 the guide is
      wider than the prior, which data cannot make a posterior.

    :param PairedJoints pair: one step's pairing.
    :param tuple variances: :func:`global_variances`
        of ``pair``, if already computed (they are drawn when not).
    """
    import torch

    from .pairing import _to_rows
    from .roles import dist_of

    out: dict[str, float] = {}
    sims = torch.cat(list(pair.p_observed.values()), -1).flatten(0, 1).detach()
    sims = sims[sims.isfinite().all(-1)]
    obs = torch.cat(list(pair.q_observed.values()), -1)[0].detach()
    if sims.shape[0] >= 20:
        low, high = sims.min(0).values, sims.max(0).values
        pad = 0.1 * (high - low)
        outside = (obs < low - pad) | (obs > high + pad)
        out["ppc_outside"] = float(outside.float().mean())
    if pair.num_particles < 2:
        return out
    ratios = []
    for name, rows in pair.q_local.items():
        site = pair.q_trace.nodes[name]
        try:
            draws = dist_of(site).sample(torch.Size([CHECK_DRAWS]))
        except NotImplementedError:
            continue
        prior = torch.stack([_to_rows(d, site["fn"], site, pair.lead) for d in draws])
        q_var = rows.detach().var(0)
        p_var = prior.flatten(0, 1).var(0).clamp_min(1e-24)
        ratios.append((q_var / p_var).flatten())
    if ratios:
        median = float(torch.cat(ratios).median()) / chi2_median_ratio(pair.num_particles - 1)
        out["local_sd_ratio"] = median**0.5
    guide_var, prior_var, _ = global_variances(pair) if variances is None else variances
    if guide_var:
        spreads = spread_ratios(guide_var, prior_var)
        out["prior_sd_ratio"] = min(spreads)
        out["wide_global_ratio"] = max(spreads)
    return out
