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

:func:`reweighted_globals` uses the same weights to resample the guide's draws
(:func:`systematic_resample`): a posterior that follows the copy's likelihood
rather than the lagging estimator's, for
:func:`~pyro_lfvi.to_inference_data` with ``reweight=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from .curvature import coordinate_names
from .pairing import PairedJoints
from .validation import check_positive_int

if TYPE_CHECKING:
    from .elbo import LFVI

__all__ = [
    "PosteriorShift",
    "effective_fraction",
    "log_weights",
    "posterior_shift",
    "reweighted_globals",
    "systematic_resample",
]

POOL_FACTOR = 4
""":func:`~pyro_lfvi.reweighted_globals` resamples from this many times as many guide draws
as it returns."""

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
def log_weights(
    before: LogRatio, after: LogRatio, pairs: Sequence[PairedJoints]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    r"""
    The guide's draws of the globals in ``pairs`` and their importance log
    weights :math:`\log w_s` when the log ratio ``before`` is replaced by
    ``after`` (see :mod:`pyro_lfvi.reweighting`); draws whose log weight is not
    finite are dropped.

    :param callable before: the log ratio the guide followed, at a pairing's
        observed data and the guide's draws (``P`` particles times ``M`` data
        points' values).
    :param callable after: the one to compare it with.
    :param pairs: pairings drawn at the guide (their ``q_global`` draws and
        ``q_observed`` data are used).
    :returns: the draws by global site, ``(S, d)`` each (the site's value
        flattened, as in ``q_global``), and their log weights, ``(S,)``.
    :rtype: tuple
    """
    draws: dict[str, list[torch.Tensor]] = {name: [] for name in pairs[0].q_global}
    log_w = []
    for pair in pairs:
        scale = pair.roles.full_size / max(1, pair.roles.num_points)
        particles = pair.num_particles
        diff = (after(pair) - before(pair)).double().reshape(particles, -1)
        log_w.append(scale * diff.sum(-1))
        for name, value in pair.q_global.items():
            draws[name].append(value.detach().reshape(particles, -1))
    lw = torch.cat(log_w)
    keep = torch.isfinite(lw)
    return {name: torch.cat(parts)[keep] for name, parts in draws.items()}, lw[keep]


def effective_fraction(log_w: torch.Tensor) -> float:
    """The effective sample size of importance log weights, as a fraction of
    their number: :math:`1 / (S \\sum_s \bar w_s^2)`, 1 for equal weights."""
    weights = torch.softmax(log_w.double(), 0)
    return float(1.0 / weights.pow(2).sum() / weights.numel())


def systematic_resample(log_w: torch.Tensor, num_samples: int) -> torch.Tensor:
    r"""
    Indices of ``num_samples`` draws resampled in proportion to
    ``exp(log_w)`` by systematic resampling (one uniform offset from torch's
    random stream): a draw of normalised weight :math:`\bar w_s` is picked
    :math:`\lfloor K \bar w_s \rfloor` or one more times for :math:`K` picks, so
    that equal weights keep evenly spaced draws without repeats.

    :param torch.Tensor log_w: log weights, ``(S,)``, at least one finite.
    :param int num_samples: how many indices.
    :rtype: torch.Tensor
    """
    cumulative = torch.cumsum(torch.softmax(log_w.double(), 0), 0)
    grid = (torch.arange(num_samples, dtype=torch.float64) + torch.rand(())) / num_samples
    return torch.searchsorted(cumulative, grid).clamp_max(log_w.numel() - 1)


@torch.no_grad()
def posterior_shift(
    before: LogRatio, after: LogRatio, pairs: Sequence[PairedJoints]
) -> dict[str, PosteriorShift]:
    """
    The move of each global coordinate's posterior when the log ratio ``before``
    is replaced by ``after``, by reweighting the guide's draws in ``pairs``
    (see :mod:`pyro_lfvi.reweighting` and :func:`log_weights`).

    :param callable before: the log ratio the guide followed.
    :param callable after: the one to compare it with.
    :param pairs: pairings drawn at the guide.
    :returns: a :class:`PosteriorShift` by coordinate name (``"a"``, or
        ``"theta[3]"`` for a vector site); empty without global latents or with
        fewer than two draws whose log ratios are finite.
    :rtype: dict
    """
    if not pairs or not pairs[0].q_global:
        return {}
    draws, lw = log_weights(before, after, pairs)
    beta = torch.cat(list(draws.values()), -1).double()
    if beta.shape[0] < 2:
        return {}
    weights = torch.softmax(lw, 0).unsqueeze(-1)
    loc, sd = beta.mean(0), beta.std(0, unbiased=False).clamp_min(1e-30)
    moved = (weights * beta).sum(0)
    moved_sd = (weights * (beta - moved) ** 2).sum(0).sqrt()
    effective = effective_fraction(lw)
    return {
        name: PosteriorShift(
            float((moved[j] - loc[j]) / sd[j]), float(moved_sd[j] / sd[j]), effective
        )
        for j, name in enumerate(coordinate_names(pairs[0].q_global))
    }


def reweighted_globals(
    elbo: LFVI,
    model: Callable[..., object],
    guide: Callable[..., object],
    *args: Any,
    num_samples: int,
    **kwargs: Any,
) -> tuple[dict[str, torch.Tensor], float]:
    r"""
    Draws of the global latents from the guide, importance-resampled by how
    much the copy of the ratio estimator that the last
    :func:`~pyro_lfvi.check_ratio_estimator` trained raises the log likelihood of the
    observed data over the online estimator that the guide followed:

    .. math::

        \log w_s = \frac{N}{M} \sum_{n=1}^{M} \big[\log r_{\text{refined}}(x_n, z_{ns}, \beta_s)
            - \log r_{\text{online}}(x_n, z_{ns}, \beta_s)\big]

    (see :mod:`pyro_lfvi.reweighting`). Where the estimator lagged, the guide
    followed a blurred likelihood; the reweighted draws follow the copy's,
    trained to convergence at the final guide (sbibm's ``two_moons``: README,
    "A single observation"). Where it kept up, the weights are equal and the draws are the
    guide's. The guide's draws of the local latents are not reweighted.
    :func:`~pyro_lfvi.to_inference_data` calls it with ``reweight=True`` when
    the check found a lag (a gain above its threshold); this function reweights
    whatever the gain.

    It draws :data:`~pyro_lfvi.reweighting.POOL_FACTOR` times ``num_samples`` draws from the guide,
    with the simulations a training step makes for each (so the cost is that
    many particles' worth of training steps), and resamples ``num_samples`` of
    them systematically (:func:`~pyro_lfvi.reweighting.systematic_resample`).

    :param LFVI elbo: the LFVI instance, checked by :func:`~pyro_lfvi.check_ratio_estimator`
        (:func:`~pyro_lfvi.fit` checks by default).
    :param callable model: the model, as given to SVI.
    :param callable guide: the guide, as given to SVI.
    :param args: arguments of model and guide.
    :param int num_samples: how many draws to return.
    :param kwargs: keyword arguments of model and guide.
    :returns: the draws by global site, ``(num_samples, d)`` each (the site's
        value flattened), and the effective sample size of the pool's weights
        as a fraction of its draws.
    :rtype: tuple
    """
    num_samples = check_positive_int("num_samples", num_samples)
    check = getattr(elbo, "estimator_check", None)
    if check is None:
        raise ValueError(
            "Expected an LFVI instance checked by check_ratio_estimator, actual one never "
            "checked; train with pyro_lfvi.fit(..., check=True) (the default) or call "
            "check_ratio_estimator after training, then reweight"
        )
    if check.log_ratios is None:
        raise ValueError(
            "Expected the contrastive or the likelihood ratio estimator, actual the joint "
            "classifier, whose logit is not a log likelihood of the data to reweight by; "
            "draw from the guide (reweight=False)"
        )
    before, after = check.log_ratios()
    draws: dict[str, list[torch.Tensor]] = {}
    log_w: list[torch.Tensor] = []
    drawn = 0
    with torch.no_grad():
        while drawn < POOL_FACTOR * num_samples:
            for pair in elbo._pair(model, guide, args, kwargs):
                if not pair.q_global:
                    raise ValueError(
                        "Expected a model with global latents to reweight, actual only "
                        f"local ones ({', '.join(pair.roles.local)}); draw from the guide "
                        "(reweight=False)"
                    )
                values, lw = log_weights(before, after, [pair])
                for name, value in values.items():
                    draws.setdefault(name, []).append(value)
                log_w.append(lw)
                drawn += pair.num_particles
    weights = torch.cat(log_w)
    if weights.numel() == 0:
        raise ValueError(
            "Expected finite log ratios at the observed data, actual none finite at any of "
            f"{drawn} draws of the guide; the estimator cannot reweight this posterior"
        )
    picks = systematic_resample(weights, num_samples)
    return {n: torch.cat(v)[picks] for n, v in draws.items()}, effective_fraction(weights)
