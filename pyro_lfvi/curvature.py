r"""Bartlett's identities on the ratio estimator's log likelihood, against the guide's width.

An exact log likelihood :math:`\ell(x, \theta) = \log p(x \mid \theta)`
satisfies, at every latent value :math:`\theta` and for data simulated there,

.. math::

    A = \mathbb{E}_{x \sim p(x \mid \theta)}\big[(\partial_j \ell)^2\big]
      = -\mathbb{E}_{x \sim p(x \mid \theta)}\big[\partial_j^2 \ell\big] = B

(Bartlett's second identity: the score's variance is the Fisher information).
The contrastive estimator's logit :math:`s(x, z, \beta)` differs from
:math:`\ell` by a function of :math:`x` alone when it is exact, so its
derivatives in the latents obey the same identity (the likelihood
estimator's density, :mod:`pyro_lfvi.likelihood`, is a log likelihood itself
and is measured as it is). A trained logit also
carries a function of the latents alone, which the classifier's loss barely
constrains and the self-normaliser takes off (:class:`~pyro_lfvi.ContrastiveRatioEstimator`);
where the ELBO self-normalises, :func:`curvature` therefore measures the
self-normalised logit, the one the guide follows. (On the raw logit, such a
term broke the identity on fits that met every target: with antithetic
particles on the conjugate example, seed 2, a curvature of -0.26 against a score
variance of 0.75 per data point, and 0.80 against 0.73 once normalised; sds
1.00x the exact ones.)

:func:`curvature` measures both sides for each latent coordinate on
simulations at the guide, and compares the estimator's curvature with the
guide's own precision:

- ``ratio`` :math:`= B_j / A_j`. A classifier whose logit is shrunk to
  :math:`c\,\ell` gives :math:`1/c`, and a posterior whose sds are about
  :math:`\sqrt{1/c}` times too wide; a classifier whose curvature is
  negative, or far from its score's variance, has not resolved how the data
  move with that coordinate.
- ``width`` :math:`= \sqrt{n_j B_j / \Lambda_j}`, with :math:`\Lambda_j` the
  guide's precision in the coordinate and :math:`n_j` the number of data
  points informing it (all :math:`N` for a global, one for a local). The prior
  only adds precision, so a guide that has converged on the estimator's
  logit is at most as wide as :math:`(n_j B_j)^{-1/2}`. It is reported, not
  warned on: measured on the raw logit, before the check measured the
  self-normalised one, it flagged the conjugate example's seed 2 (1.25) where
  the posterior sds were 0.88x the exact ones; it has not been re-measured since.

References

[1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
    Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017)
[2] `Theory of Point Estimation`, E. L. Lehmann, George Casella (Springer,
    1998), §2.6 (the information identity)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from .contrastive import finite_simulations, zero_nonfinite
from .pairing import PairedJoints

__all__ = [
    "Curvature",
    "LOCAL_ROWS",
    "LogLikelihood",
    "MAX_COORDINATES",
    "Normalizer",
    "RELEVANT",
    "coordinate_names",
    "curvature",
]

RELEVANT = 0.25
"""Likelihood share of the guide's precision (:attr:`Curvature.relevance`) from
which a curvature that is not positive counts as a failure."""

LOCAL_ROWS = 4
"""With local latents and a self-normalised ratio, the data points per pair
(drawn at random) at which the identity is measured: each costs the
normaliser's simulations in network evaluations, with second derivatives."""

MAX_COORDINATES = 64
"""Latent coordinates per data point beyond which :func:`curvature` is not
measured (one backward pass per coordinate)."""


@dataclass
class Curvature:
    """Bartlett's identity for one latent coordinate (see :mod:`pyro_lfvi.curvature`).

    :param float score_variance: :math:`A_j`, per data point.
    :param float curvature: :math:`B_j`, per data point.
    :param float guide_precision: the guide's precision in the coordinate
        (of the coordinate as the estimator sees it: globals in their
        constrained space).
    :param int points: data points that inform the coordinate.
    """

    score_variance: float
    curvature: float
    guide_precision: float
    points: int

    @property
    def ratio(self) -> float:
        """:math:`B_j / A_j`: 1 for an exact log likelihood."""
        return self.curvature / self.score_variance if self.score_variance > 0 else 1.0

    @property
    def relevance(self) -> float:
        """:math:`n_j \\hat I_j / \\Lambda_j`: the likelihood's share of the guide's
        precision (near 0: the prior decides this coordinate), with the information
        :math:`\\hat I_j = B_j^2 / A_j` (exact for a logit shrunk by any factor;
        :math:`A_j` where the curvature is not positive)."""
        if self.curvature > 0 and self.score_variance > 0:
            info = self.curvature**2 / self.score_variance
        else:
            info = self.score_variance
        return self.points * info / self.guide_precision

    @property
    def sd_factor(self) -> float:
        r"""The factor by which the estimator's misscaled curvature widens (above 1)
        or narrows the posterior sd of this coordinate: a logit shrunk to
        :math:`\ell / \rho` on a likelihood share :math:`f` (``relevance``, at
        most 1) gives :math:`(1 - f + f / \rho)^{-1/2}`; infinite when the
        curvature is not positive on a coordinate whose likelihood matters
        (``relevance`` at least :data:`RELEVANT`)."""
        share = min(self.relevance, 1.0)
        if self.ratio <= 0:
            return float("inf") if share >= RELEVANT else 1.0
        return (1.0 - share + share / self.ratio) ** -0.5

    @property
    def width(self) -> float:
        """The guide's sd over the sd of the estimator's likelihood alone, :math:`n_j B_j`
        (a prior only narrows the posterior further); 0 where the curvature is not positive."""
        return max(self.points * self.curvature / self.guide_precision, 0.0) ** 0.5


def coordinate_names(*parts: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the coordinates of latents ``(..., d)`` by site, in the order
    in which the contrastive network's ``theta`` joins them: ``"a"`` for a
    site of one coordinate, ``"theta[3]"`` for one of a vector site."""
    names: list[str] = []
    for part in parts:
        for name, value in part.items():
            size = value.shape[-1]
            names += [name] if size == 1 else [f"{name}[{i}]" for i in range(size)]
    return names


def _coordinates(pair: PairedJoints) -> tuple[list[str], int]:
    """The names of the latent coordinates, in the order of
    :meth:`~pyro_lfvi.contrastive.ContrastiveNetwork.theta` (locals, then
    globals), and the number of local ones."""
    names = coordinate_names(pair.p_local, pair.p_global)
    return names, sum(v.shape[-1] for v in pair.p_local.values())


class LogLikelihood(Protocol):
    """What :func:`curvature` needs of an estimator's network: the ``theta``,
    ``embed`` and ``classify`` of a :class:`~pyro_lfvi.contrastive.ContrastiveNetwork`,
    whose value is a log likelihood in the latents up to a function of the data
    alone (the contrastive network's logit, or a learned density)."""

    def theta(
        self,
        local: Mapping[str, torch.Tensor],
        global_: Mapping[str, torch.Tensor],
        lead: torch.Size,
    ) -> torch.Tensor: ...

    def embed(self, observed: Mapping[str, torch.Tensor]) -> torch.Tensor: ...

    def classify(
        self,
        embedded: torch.Tensor,
        local: Mapping[str, torch.Tensor],
        global_: Mapping[str, torch.Tensor],
    ) -> torch.Tensor: ...


Normalizer = Callable[
    [PairedJoints, torch.Tensor, Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]],
    torch.Tensor,
]
"""The estimator's self-normaliser at given latents (local, global), as
:meth:`~pyro_lfvi.ContrastiveRatioEstimator.log_normalizer` computes it."""


def _derivatives(
    value: torch.Tensor, leaf: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """First and (per coordinate) second derivatives of ``value.sum()`` in ``leaf``,
    whose rows each ``value`` entry depends on alone."""
    (grad,) = torch.autograd.grad(value.sum(), leaf, create_graph=True)
    second = torch.stack(
        [
            torch.autograd.grad(grad[..., j].sum(), leaf, retain_graph=True)[0][..., j]
            for j in range(k)
        ],
        -1,
    )
    return grad.detach(), second.detach()


def _normalizer_derivatives(
    normalizer: Normalizer, pair: PairedJoints, valid: torch.Tensor, sim: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Derivatives of the self-normaliser at the simulating latents ``sim`` (P, R, k),
    broadcast to them: per row with local latents, per particle without."""
    if not bool(valid.any()):
        return torch.zeros_like(sim), torch.zeros_like(sim)
    # The normaliser draws its simulations at random: leave the global stream as it was.
    with torch.random.fork_rng(), torch.enable_grad():
        if pair.p_local:
            leaf = sim.detach().clone().requires_grad_(True)
            return _derivatives(normalizer(pair, valid, {"theta": leaf}, {}), leaf, k)
        leaf = sim[:, 0].detach().clone().requires_grad_(True)  # globals: one row per particle
        grad, second = _derivatives(normalizer(pair, valid, {}, {"theta": leaf}), leaf, k)
    return grad.unsqueeze(1), second.unsqueeze(1)


def curvature(
    net: LogLikelihood, pairs: list[PairedJoints], normalizer: Normalizer | None = None
) -> dict[str, Curvature]:
    """
    Bartlett's identity for each latent coordinate of the estimator's network
    ``net``, on the simulations of ``pairs`` (each drawn at the guide, as a
    training step draws them), against the guide's precision.

    :param LogLikelihood net: the estimator's network (a
        :class:`~pyro_lfvi.contrastive.ContrastiveNetwork`, or any object with its
        ``theta``, ``embed`` and ``classify``).
    :param list pairs: paired joints drawn as training steps draw them.
    :param callable normalizer: the estimator's self-normaliser (see
        :data:`Normalizer`), if the ELBO subtracts it from the logit: the
        identity is then measured on the self-normalised logit, the one the
        guide follows. A logit may carry any function of the latents alone
        (the normaliser takes it off), and its curvature would break the
        identity of the raw logit with a ratio that is right. With local
        latents it is then measured at :data:`LOCAL_ROWS` data points per pair.
    :returns: a :class:`Curvature` by coordinate name (``"a"``, or
        ``"theta[3]"`` for a vector site); empty when there are more than
        :data:`MAX_COORDINATES` latent coordinates per data point, or fewer than
        two particles.
    :rtype: dict
    """
    A = B = None
    count = 0
    guide_var: list[torch.Tensor] = []
    names, num_local = _coordinates(pairs[0])
    k = len(names)
    points = pairs[0].roles.full_size
    if k == 0 or k > MAX_COORDINATES or pairs[0].num_particles < 2:
        return {}
    subsets = torch.Generator().manual_seed(0)  # leaves the global random stream alone
    for pair in pairs:
        valid = finite_simulations(pair)
        obs = {n: v.detach() for n, v in zero_nonfinite(pair.p_observed).items()}
        sim = net.theta(pair.p_local, pair.p_global, valid.shape)
        guide = net.theta(pair.q_local, pair.q_global, valid.shape).detach()
        guide_var.append(guide.var(0).mean(0))  # over particles, then data points
        measured = valid
        if normalizer is not None and pair.p_local and valid.shape[1] > LOCAL_ROWS:
            rows = torch.randperm(valid.shape[1], generator=subsets)[:LOCAL_ROWS]
            obs = {n: v[:, rows] for n, v in obs.items()}
            sim, measured = sim[:, rows], valid[:, rows]
        leaf = sim.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logit = net.classify(net.embed(obs), {"theta": leaf}, {})
            grad, second = _derivatives(logit, leaf, k)
        if normalizer is not None:
            grad_c, second_c = _normalizer_derivatives(normalizer, pair, valid, sim, k)
            grad, second = grad - grad_c, second - second_c
        w = measured.unsqueeze(-1).to(grad.dtype)
        a = (grad**2 * w).sum((0, 1))
        b = -(second * w).sum((0, 1))
        A, B = (a, b) if A is None or B is None else (A + a, B + b)
        count += int(measured.sum())
    if A is None or B is None or count == 0:
        return {}
    A, B = A / count, B / count
    precision = 1.0 / torch.stack(guide_var).mean(0).clamp_min(1e-30)
    return {
        name: Curvature(
            float(A[j]), float(B[j]), float(precision[j]), 1 if j < num_local else points
        )
        for j, name in enumerate(names)
    }
