r"""The paper's joint classifier as a :class:`~pyro_lfvi.RatioEstimator`.

A discriminator :math:`D` is trained to tell the model's simulations
:math:`(x'_n, z'_n, \beta)` (label 1) from the data with the guide's draws
:math:`(x_n, z_n, \beta)` (label 0) with a proper scoring rule (Eq. 5 of [1]).
Its logit estimates :math:`\log p(x_n, z_n \mid \beta) - \log q(x_n, z_n
\mid \beta)`, the ratio that the ELBO needs. Where the local latents have
explicit densities, their log ratio enters as a known offset and :math:`D`
only learns the rest.

Unlike the contrastive default, :math:`D` sees the observations themselves: with
few, high-dimensional or single observations it can memorise them and saturate.
LFVI chooses it where the contrastive estimator cannot run (implicit local
priors or guides, one particle, point-mass globals, adversarial model
parameters); ask for it with ``LFVI(estimator="joint")``.

References

[1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
    Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .discriminator import MLPDiscriminator, Summary, checked_summary, concat_features
from .pairing import PairedJoints
from .ratio import (
    RatioEstimator,
    RatioObjectives,
    checked_per_point,
    frozen_weights,
    register_network,
    stored_module,
)
from .ratio_losses import RatioLoss, resolve_ratio_loss
from .step_checks import discriminator_accuracy
from .validation import check_sizes

__all__ = ["JointRatioEstimator"]


class JointRatioEstimator(RatioEstimator):
    r"""
    The paper's ratio estimator: one classifier of the model's joint against
    the data's joint with the guide, whose logit is the ELBO's log ratio.

    .. math::

        \max_D \; \mathbb{E}_{p(x, z \mid \beta)}[\log \sigma(D)]
            + \mathbb{E}_{q(x, z \mid \beta)}[\log(1 - \sigma(D))]

    With ``self_normalize`` the estimated ratio is normalised over the
    minibatch, since the true ratio's exponential averages to one under the
    guide's joint for every :math:`\beta` (see :class:`~pyro_lfvi.LFVI`).

    Example::

        >>> import pyro
        >>> from pyro_lfvi import LFVI, JointRatioEstimator, MLPDiscriminator
        >>> from pyro_lfvi.examples import ConjugateNormal
        >>> pyro.set_rng_seed(0)
        >>> pyro.clear_param_store()
        >>> problem = ConjugateNormal()  # model, guide and data
        >>> elbo = LFVI(estimator=JointRatioEstimator(hidden_sizes=(32, 32)))
        >>> optim = pyro.optim.Adam({"lr": 0.01})
        >>> svi = pyro.infer.SVI(problem.model, problem.guide, optim, elbo)
        >>> loss = svi.step(problem.data)  # builds the discriminator
        >>> isinstance(elbo.discriminator, MLPDiscriminator)
        True

    :param discriminator: your own network, with ``forward(observed, local,
        global_)`` returning ``(P, M)`` logits; default an
        :class:`~pyro_lfvi.MLPDiscriminator` built at the first step.
    :type discriminator: torch.nn.Module or None
    :param hidden_sizes: hidden widths of the default discriminator.
    :type hidden_sizes: sequence of int
    :param ratio_loss: ``"log"`` (Eq. 5), ``"hinge"`` or a callable
        ``(logits_p, logits_q) -> scalar``.
    :type ratio_loss: str or callable
    :param str name: the param-store name of the discriminator's weights.
    :param bool self_normalize: normalise the ratio over the minibatch.
    :param callable summary: summary statistics of the observed rows, for the
        default discriminator.

    References

    [1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
        Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017)
    """

    includes_offsets = True

    def __init__(
        self,
        discriminator: nn.Module | None = None,
        hidden_sizes: Sequence[int] = (64, 64),
        ratio_loss: str | RatioLoss = "log",
        name: str = "lfvi_discriminator",
        self_normalize: bool = True,
        summary: Summary | None = None,
    ) -> None:
        if discriminator is not None and not isinstance(discriminator, nn.Module):
            raise ValueError(
                f"Expected discriminator to be a torch.nn.Module or None, actual "
                f"{type(discriminator).__name__}"
            )
        if not isinstance(name, str) or not name:
            raise ValueError(f"Expected name to be a non-empty str, actual {name!r}")
        self.discriminator = discriminator
        self.hidden_sizes = check_sizes("hidden_sizes", hidden_sizes)
        self.ratio_loss: RatioLoss = resolve_ratio_loss(ratio_loss)
        self.name = name
        self.self_normalize = bool(self_normalize)
        self.summary = summary

    def modules(self) -> dict[str, nn.Module]:
        return {} if self.discriminator is None else {self.name: self.discriminator}

    # -- the network -----------------------------------------------------------

    @staticmethod
    def _inputs(pair: PairedJoints, side: str) -> tuple[dict[str, torch.Tensor], ...]:
        """Discriminator inputs: ``"q"`` for the ELBO, ``"p"``/``"t"`` for training."""
        if side == "p":
            return pair.p_observed, pair.p_local, pair.p_global
        if side == "t":
            return pair.q_observed, pair.t_local, pair.p_global
        return pair.q_observed, pair.q_local, pair.q_global

    def _build(self, pair: PairedJoints) -> nn.Module:
        # Standardise on the first batch of both sides: the data with the
        # guide's own draws, and the model's simulations.
        def features(side: str) -> torch.Tensor:
            observed, local, global_ = self._inputs(pair, side)
            rows: Mapping[str, torch.Tensor] = observed
            if self.summary is not None:
                rows = checked_summary(self.summary, observed)
            return concat_features(rows, local, global_).detach()

        feats_q, feats_p = features("q"), features("p")
        net = MLPDiscriminator(feats_q.shape[-1], self.hidden_sizes, summary=self.summary)
        net.fit_standardization(feats_q, feats_p)
        return net

    def network(self, pair: PairedJoints) -> nn.Module:
        """The discriminator, built at the first call and registered with Pyro."""
        stored = stored_module(self.name)
        if self.discriminator is None:
            # Weights already in the store (a resumed run) replace the fresh
            # ones: build without drawing from the global RNG, so that the
            # resumed run draws exactly what an uninterrupted run would.
            with torch.random.fork_rng(enabled=stored):
                net = self._build(pair)
            # Check the output before anything reaches the param store.
            with torch.no_grad():
                self.logits(net, pair, "q", detach_weights=True)
            self.discriminator = net
        elif not stored:
            with torch.no_grad():
                self.logits(self.discriminator, pair, "q", detach_weights=True)
        return register_network(self.name, self.discriminator, ("standardization",))

    def logits(
        self,
        net: nn.Module,
        pair: PairedJoints,
        side: str,
        detach_weights: bool,
        detach_locals: bool = False,
    ) -> torch.Tensor:
        """The discriminator's ``(P, M)`` logits on one side, checked."""
        obs, loc, glob = self._inputs(pair, side)
        if detach_locals:
            loc = {k: v.detach() for k, v in loc.items()}
        if detach_weights:
            with frozen_weights(net):
                out = net(obs, loc, glob)
        else:
            detach = lambda d: {k: v.detach() for k, v in d.items()}  # noqa: E731
            out = net(detach(obs), detach(loc), detach(glob))
        note = (
            " Its forward receives observed/local values of shape (P, M, d) and globals "
            "of shape (P, d)"
        )
        return checked_per_point(out, pair, "discriminator", note)

    # -- objectives ------------------------------------------------------------

    def training_logits(
        self, net: nn.Module, pair: PairedJoints
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The scoring rule's inputs: logits on simulations and on data, offsets added."""
        logits_p = self.logits(net, pair, "p", detach_weights=False) + pair.p_offset
        logits_t = self.logits(net, pair, "t", detach_weights=False) + pair.t_offset
        return logits_p, logits_t

    def objectives(self, pair: PairedJoints, update: bool = True) -> RatioObjectives:
        net = self.network(pair)
        logits_p, logits_t = self.training_logits(net, pair)
        loss = self.ratio_loss(logits_p, logits_t)
        log_ratio = self._log_ratio(net, pair)
        with torch.no_grad():
            stats = {
                "discriminator_accuracy": discriminator_accuracy(logits_p, logits_t),
                "mean_logit_p": float(logits_p.mean()),
                "mean_logit_q": float(logits_t.mean()),
            }
        return RatioObjectives(log_ratio=log_ratio, loss=loss, stats=stats)

    def generator_loss(self, pair: PairedJoints) -> torch.Tensor:
        """The estimated :math:`\\mathrm{KL}(p \\,\\|\\, q)` of the simulated joints,
        differentiable in the simulations (adversarial model parameters)."""
        assert self.discriminator is not None
        frozen = self.logits(self.discriminator, pair, "p", detach_weights=True) + pair.p_offset
        return (pair.scale.expand(frozen.shape) * frozen).sum() / pair.num_particles

    def _log_ratio(self, net: nn.Module, pair: PairedJoints) -> torch.Tensor:
        """The ELBO's per-point log ratio ``r(x_n, z_n, beta)``, shape ``(P, M)``."""
        logits = self.logits(net, pair, "q", detach_weights=True)
        num_points = pair.roles.num_points
        if not self.self_normalize or num_points < 2:
            return logits + pair.q_offset
        log_m = math.log(num_points)
        if pair.explicit_locals:
            # s estimates log p(x | z, beta) - log q(x), whose exponential
            # averages to one over the data for every (z, beta): normalise s
            # over the minibatch's x for each point's own z.
            # Grid (particle, z of point k) x (x of point m), as P*M "particles".
            def repeat(values: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
                return {
                    k: v.unsqueeze(dim)
                    .expand((*v.shape[:dim], num_points, *v.shape[dim:]))
                    .flatten(0, 1)
                    for k, v in values.items()
                }

            obs = repeat(pair.q_observed, 1)
            loc = repeat(pair.q_local, 2)
            glob = repeat(pair.q_global, 1)
            with frozen_weights(net):
                grid = net(obs, loc, glob)
            grid = grid.reshape(pair.num_particles, num_points, num_points)
            log_norm = torch.logsumexp(grid, -1) - log_m
            return logits - log_norm + pair.q_offset
        # r estimates log p(x, z | beta) - log q(x, z | beta), whose exponential
        # averages to one under the q-side for every beta: normalise per beta.
        base = logits
        if pair.q_local:
            base = self.logits(net, pair, "q", detach_weights=True, detach_locals=True)
        log_norm = torch.logsumexp(base, -1, keepdim=True) - log_m
        return logits - log_norm
