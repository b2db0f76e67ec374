"""The ratio estimators inside :class:`~pyro_lfvi.LFVI`: building, calling, normalising.

:class:`RatioEstimation` is the part of LFVI that owns the discriminator
(lazily built, registered in Pyro's param store), turns a
:class:`~pyro_lfvi.pairing.PairedJoints` into its inputs and logits, and turns
logits into the ELBO's per-point log ratio (with the self-normalisation that
LFVI's docstring explains). It also owns the shape classifiers of implicit
global priors (:mod:`pyro_lfvi.global_ratio`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyro
import torch
from torch import nn

from .discriminator import MLPDiscriminator, Summary, checked_summary, concat_features
from .global_ratio import PriorShapeClassifier
from .pairing import PairedJoints
from .ratio import frozen_weights, stored_module
from .validation import DiscriminatorError

__all__ = ["RatioEstimation"]


class RatioEstimation:
    """Mixin of :class:`~pyro_lfvi.LFVI`: the discriminator and its logits."""

    discriminator: nn.Module | None
    discriminator_name: str
    hidden_sizes: tuple[int, ...]
    prior_classifiers: dict[str, nn.Module]
    self_normalize: bool
    summary: Summary | None

    def _inputs(self, pair: PairedJoints, side: str) -> tuple[dict[str, torch.Tensor], ...]:
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
                rows = self._summarize(observed)
            return concat_features(rows, local, global_).detach()

        feats_q, feats_p = features("q"), features("p")
        net = MLPDiscriminator(feats_q.shape[-1], self.hidden_sizes, summary=self.summary)
        net.fit_standardization(feats_q, feats_p)
        return net

    def _summarize(self, observed: dict[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        assert self.summary is not None
        return checked_summary(self.summary, observed)

    def _logits(
        self,
        net: nn.Module,
        pair: PairedJoints,
        side: str,
        detach_weights: bool,
        detach_locals: bool = False,
    ) -> torch.Tensor:
        obs, loc, glob = self._inputs(pair, side)
        if detach_locals:
            loc = {k: v.detach() for k, v in loc.items()}
        if detach_weights:
            with frozen_weights(net):
                out = net(obs, loc, glob)
        else:
            detach = lambda d: {k: v.detach() for k, v in d.items()}  # noqa: E731
            out = net(detach(obs), detach(loc), detach(glob))
        expected = (pair.num_particles, pair.roles.num_points)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DiscriminatorError(
                f"Expected the discriminator to return one logit per data point, shape "
                f"{expected} (particles, points), actual {shape}. Its forward receives "
                f"observed/local values of shape (P, M, d) and globals of shape (P, d)"
            )
        if not bool(torch.isfinite(out).all()):
            raise DiscriminatorError(
                "The discriminator returned NaN or inf logits; lower the learning rate "
                "or clip gradients (e.g. pyro.optim.ClippedAdam)"
            )
        return out

    def _training_logits(
        self, net: nn.Module, pair: PairedJoints
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The scoring rule's inputs: logits on simulations and on data, offsets added."""
        logits_p = self._logits(net, pair, "p", detach_weights=False) + pair.p_offset
        logits_t = self._logits(net, pair, "t", detach_weights=False) + pair.t_offset
        return logits_p, logits_t

    def _discriminator(self, pair: PairedJoints) -> nn.Module:
        stored = stored_module(self.discriminator_name)
        if self.discriminator is None:
            # Weights already in the store (a resumed run) replace the fresh
            # ones: build without drawing from the global RNG, so that the
            # resumed run draws exactly what an uninterrupted run would.
            with torch.random.fork_rng(enabled=stored):
                net = self._build(pair)
            # Check the output before anything reaches the param store.
            with torch.no_grad():
                self._logits(net, pair, "q", detach_weights=True)
            self.discriminator = net
        elif not stored:
            with torch.no_grad():
                self._logits(self.discriminator, pair, "q", detach_weights=True)
        return pyro.module(self.discriminator_name, self.discriminator, update_module_params=True)

    def _prior_classifier(self, name: str, size: int) -> nn.Module:
        """The shape classifier of an implicit global prior (see global_ratio)."""
        if name not in self.prior_classifiers:
            self.prior_classifiers[name] = PriorShapeClassifier(size)
        module_name = f"{self.discriminator_name}_prior_{name}"
        return pyro.module(module_name, self.prior_classifiers[name], update_module_params=True)

    def _log_ratio(self, net: nn.Module, pair: PairedJoints) -> torch.Tensor:
        """The ELBO's per-point log ratio ``r(x_n, z_n, beta)``, shape ``(P, M)``."""
        logits = self._logits(net, pair, "q", detach_weights=True)
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
            base = self._logits(net, pair, "q", detach_weights=True, detach_locals=True)
        log_norm = torch.logsumexp(base, -1, keepdim=True) - log_m
        return logits - log_norm
