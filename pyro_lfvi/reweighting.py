r"""What a change of the learned likelihood would do to the posterior of the globals.

:func:`~pyro_lfvi.check_ratio_estimator` trains a copy of the ratio estimator
further at the final guide. A copy that fits its simulations better does not
by itself mean a wrong posterior: more training at one guide keeps finding
small improvements that the posterior hardly sees (on sbibm's ``two_moons``
the likelihood estimator's copy gains 0.07-0.12 nats on fits whose C2ST is
0.54-0.61). :func:`posterior_shift` measures what the difference would do to
the posterior. It reweights the guide's draws of the globals
:math:`\beta_s` by how much the copy raises the log likelihood of the
observed data over the online estimator,

.. math::

    \log w_s = \frac{N}{M} \sum_{n=1}^{M} \big[\log r_{\text{refined}}(x_n, z_{ns}, \beta_s)
        - \log r_{\text{online}}(x_n, z_{ns}, \beta_s)\big],
    \qquad \bar w_s = w_s \big/ \textstyle\sum_t w_t,

(:math:`M` data points in the minibatch of :math:`N`), and reports, for each
coordinate of each global, the reweighted mean's move in the guide's sds and
the reweighted sd's ratio to the guide's:

.. math::

    \text{shift}_k = \frac{\sum_s \bar w_s \beta_{sk} - \bar\beta_k}
        {\operatorname{sd}_s \beta_{sk}},
    \qquad \text{sd factor}_k = \frac{\big(\sum_s \bar w_s (\beta_{sk}
        - \textstyle\sum_t \bar w_t \beta_{tk})^2\big)^{1/2}}{\operatorname{sd}_s \beta_{sk}}.

That is the posterior under the refined likelihood by importance sampling
with the guide as proposal, to first order in the difference: where the copy
differs from the online estimator only by a function of the data alone
(which the posterior does not see) every weight is equal and nothing moves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from .contrastive import ContrastiveNetwork
from .curvature import coordinate_names
from .pairing import PairedJoints

__all__ = ["PosteriorShift", "posterior_shift"]

LogRatio = Callable[[PairedJoints], torch.Tensor]
"""A log ratio (or log likelihood) at a pairing's observed data and the guide's
draws, one value per particle and data point."""


class PosteriorShift(NamedTuple):
    """How one coordinate of a global would move (see :func:`posterior_shift`).

    :param float mean: the reweighted mean's move, in the guide's sds.
    :param float sd_factor: the reweighted sd over the guide's.
    :param float effective: the weights' effective sample size, as a fraction of
        the draws (the same for every coordinate; near 0, a few draws carry all
        the weight: the two log ratios differ by far more than this measures).
    """

    mean: float
    sd_factor: float
    effective: float


@torch.no_grad()
def posterior_shift(
    before: LogRatio, after: LogRatio, pairs: Sequence[PairedJoints]
) -> dict[str, PosteriorShift]:
    """
    The move of each global coordinate's posterior when the log ratio ``before``
    is replaced by ``after``, by reweighting the guide's draws in ``pairs``
    (see :mod:`pyro_lfvi.reweighting`).

    :param callable before: the log ratio the guide followed, at a pairing's
        observed data and the guide's draws (``P`` particles times ``M`` data
        points' values).
    :param callable after: the one to compare it with.
    :param pairs: pairings drawn at the guide (their ``q_global`` draws and
        ``q_observed`` data are used).
    :returns: a :class:`PosteriorShift` by coordinate name (``"a"``, or
        ``"theta[3]"`` for a vector site); empty without global latents or with
        fewer than two draws whose log ratios are finite.
    :rtype: dict
    """
    if not pairs or not pairs[0].q_global:
        return {}
    draws, log_w = [], []
    for pair in pairs:
        scale = pair.roles.full_size / max(1, pair.roles.num_points)
        particles = pair.num_particles
        diff = (after(pair) - before(pair)).double().reshape(particles, -1)
        log_w.append(scale * diff.sum(-1))
        rows = ContrastiveNetwork.theta({}, pair.q_global, torch.Size([particles, 1]))
        draws.append(rows.detach().reshape(particles, -1).double())
    beta, lw = torch.cat(draws), torch.cat(log_w)
    keep = torch.isfinite(lw)
    beta, lw = beta[keep], lw[keep]
    if beta.shape[0] < 2:
        return {}
    weights = torch.softmax(lw, 0).unsqueeze(-1)
    loc, sd = beta.mean(0), beta.std(0, unbiased=False).clamp_min(1e-30)
    moved = (weights * beta).sum(0)
    moved_sd = (weights * (beta - moved) ** 2).sum(0).sqrt()
    effective = float(1.0 / weights.pow(2).sum() / weights.shape[0])
    return {
        name: PosteriorShift(
            float((moved[j] - loc[j]) / sd[j]), float(moved_sd[j] / sd[j]), effective
        )
        for j, name in enumerate(coordinate_names(pairs[0].q_global))
    }
