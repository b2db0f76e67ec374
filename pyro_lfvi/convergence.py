r"""Whether the guide's globals settled: their moves and their jitter over a window.

:class:`~pyro_lfvi.TrainingMonitor` records, at every step, the mean
:math:`c_t` and the spread :math:`s_t` over particles of each global latent
component drawn from the guide. At the end of training it asks two questions
of the last window of steps, both in units of the guide's own sd:

- **Did the globals still move?** :func:`largest_move` compares the mean of
  :math:`c_t` over the window's first quarter with that over its last quarter.
- **Did they jitter?** With minibatches, or a learning rate too large for a
  narrow posterior, the guide's parameters never settle: they wander around
  the optimum, and the final parameters are one draw of that wander, off by
  about its sd however long one trains at that rate. :func:`jitter` measures
  it from the means of :math:`c_t` over blocks of :data:`BLOCK` steps, with
  their linear trend removed (a trend is a move), less the part that comes
  from drawing finitely many particles at each step:

  .. math::

      j^2 = \frac{1}{\bar s^{\,2}}\Big(\operatorname{Var}_{\text{blocks}}\big[\bar c_b
      - \text{trend}\big] - \frac{\sigma_p^2}{L}\Big),
      \qquad \sigma_p^2 = \tfrac12\,\overline{(c_t - c_{t-1})^2},

  for blocks of :math:`L` steps, where :math:`\bar s^{\,2}` is the mean of
  :math:`s_t^2` (the mean of :math:`s_t` is biased low with few particles:
  0.80 of the sd with two). The particles' noise is independent from
  step to step, so half the mean squared step-to-step change estimates its
  variance; a wander that lasts many steps adds little to it.

References

[1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
    Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017)
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence

__all__ = [
    "BLOCK",
    "JITTER_SDS",
    "POINT_MASS_SD",
    "UNCONVERGED_SDS",
    "column_means",
    "jitter",
    "largest_move",
    "pooled_sds",
    "quarter_means",
]

UNCONVERGED_SDS = 1.0
"""At the end of training, a guide whose globals' mean moved by more than this
many of their sds over the last window warns that training has not converged."""

JITTER_SDS = 0.25
"""At the end of training, a guide whose globals' mean jittered by more than this
many of their sds over the last window warns: a final parameter drawn from a
jitter of sd 0.25 misses the accuracy target of the issue "Posteriors you can
trust on real simulators", means within 0.5 sd, with probability 5%."""

BLOCK = 10
"""Steps per block in :func:`jitter` (the monitor keeps 200 to 399 steps: 20 to 39 blocks)."""

POINT_MASS_SD = 1e-6
"""A global whose guide sd is below this times ``max(1, |mean|)`` is a point mass,
which the convergence checks (end of training, and "at chance while moving") do not judge."""


def column_means(rows: Sequence[Sequence[float]]) -> list[float]:
    """The mean of each column of ``rows``."""
    return [statistics.mean(col) for col in zip(*rows, strict=False)]


def pooled_sds(spread: Sequence[Sequence[float]]) -> list[float]:
    """
    Per column of ``spread`` (per step, sds over the particles), the square
    root of the mean variance. Unlike the mean of the sds it is not biased by
    few particles: two particles' sd is on average 0.80 of the sd.
    """
    return [math.sqrt(statistics.fmean(s * s for s in col)) for col in zip(*spread, strict=False)]


def _judged(value: float, sd: float) -> bool:
    """Whether a component is not a point mass (``Delta`` guides have no sd to judge by)."""
    return sd > POINT_MASS_SD * max(1.0, abs(value))


def largest_move(
    before: Sequence[float], after: Sequence[float], sd: Sequence[float]
) -> float | None:
    """The largest move from ``before`` to ``after`` in units of ``sd``, over the
    components that are not point masses (``sd`` at most :data:`POINT_MASS_SD`
    times the value); None when every component is one."""
    moves = [abs(b - a) / s for a, b, s in zip(before, after, sd, strict=True) if _judged(b, s)]
    return max(moves) if moves else None


def quarter_means(
    centre: Sequence[Sequence[float]], spread: Sequence[Sequence[float]]
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per component, the means of the guide's globals' centre over the first and
    the last quarter of the given steps, then their spread pooled over those
    quarters (:func:`pooled_sds`): single steps' particle means are noisy."""
    q = max(1, len(centre) // 4)
    return (
        column_means(centre[:q]),
        column_means(centre[-q:]),
        pooled_sds(spread[:q]),
        pooled_sds(spread[-q:]),
    )


def _detrended_variance(values: Sequence[float]) -> float:
    """The residual variance of ``values`` about their least-squares line."""
    n = len(values)
    mid = (n - 1) / 2
    xs = [i - mid for i in range(n)]
    mean = statistics.mean(values)
    slope = sum(x * v for x, v in zip(xs, values, strict=True)) / sum(x * x for x in xs)
    residuals = [v - mean - slope * x for x, v in zip(xs, values, strict=True)]
    return sum(r * r for r in residuals) / (n - 2)


def jitter(
    centre: Sequence[Sequence[float]], spread: Sequence[Sequence[float]], block: int = BLOCK
) -> list[float | None]:
    """
    The jitter of each global component's guide mean over the given steps, in
    units of its spread pooled over the steps (:func:`pooled_sds`; see
    :mod:`pyro_lfvi.convergence`).

    :param centre: per step, the particle means of the global components.
    :param spread: per step, their particle sds.
    :param int block: steps per block (the last ``block * (len(centre) // block)``
        steps are used, of those that recorded as many components as the last).
    :returns: per component, the jitter in sds; None for a point mass, and for
        every component when there are fewer than 4 blocks.
    :rtype: list
    """
    width = len(centre[-1]) if centre else 0
    same = 0  # the trailing steps that recorded as many components as the last one
    while same < len(centre) and len(centre[-1 - same]) == width == len(spread[-1 - same]):
        same += 1
    centre, spread = centre[len(centre) - same :], spread[len(spread) - same :]
    blocks = len(centre) // block
    if blocks < 4:
        return [None] * width
    steps = blocks * block
    out: list[float | None] = []
    sds = pooled_sds(spread[-steps:])
    for j in range(width):
        c = [row[j] for row in centre[-steps:]]
        if not _judged(c[-1], sds[j]):
            out.append(None)
            continue
        means = [statistics.mean(c[b * block : (b + 1) * block]) for b in range(blocks)]
        noise = statistics.mean((b - a) ** 2 for a, b in itertools.pairwise(c)) / 2
        wander = _detrended_variance(means) - noise / block
        out.append(math.sqrt(max(wander, 0.0)) / sds[j])
    return out
