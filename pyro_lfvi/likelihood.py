r"""A neural likelihood estimator: the simulator's density, learned from simulations alone.

Where the contrastive estimator (:mod:`pyro_lfvi.contrastive`) learns the log
ratio :math:`\log p(x \mid z, \beta) - \log p_\pi(x)` with a classifier, this
estimator learns the simulator's conditional density itself, as sequential
neural likelihood does [2]: a mixture of ``components`` full-covariance
Normals over a data point's features, whose weights, means and the Cholesky
factors :math:`P_k` of their precisions an MLP computes from the latents,

.. math::

    q_\phi(x \mid z, \beta) = \sum_{k=1}^K \pi_k(z, \beta)\,
        \mathcal{N}\big(x;\ \mu_k(z, \beta),\ (P_k(z, \beta) P_k(z, \beta)^\top)^{-1}\big),

fitted by maximum likelihood to the step's simulations
:math:`(x', z', \beta')` (and, with ``replay``, to the latest steps'):

.. math::

    \min_\phi\; -\mathbb{E}_{(x', z', \beta')} \log q_\phi(x' \mid z', \beta').

It never sees the observations while it trains, so it cannot memorise them;
its log density is a log ratio up to a function of :math:`x` alone (any
normalised density is), so the ELBO takes :math:`\log q_\phi(x_n \mid z_n,
\beta)` at the observed data with frozen weights, and its gradient flows
through the guide's draws only, as with the contrastive estimator:

.. math::

    \mathcal{L} = \mathbb{E}_{q}[\log p(\beta) - \log q(\beta)]
        + \sum_n \mathbb{E}_{q}\big[\log p(z_n \mid \beta)
        - \log q(z_n \mid x_n, \beta) + \log q_\phi(x_n \mid z_n, \beta)\big].

No self-normaliser is needed: a density is normalised in :math:`x` for every
latent. It suits simulators whose data points have a few to a few tens of
features with a smooth density (sbibm's ``slcp``: four draws of a correlated
bivariate Normal, whose posterior the contrastive estimator misses); for long
series or images, give it summaries (``summary=``). Features and latents are
standardised with robust running statistics, as in the contrastive estimator,
and standardised features beyond 4 are squashed logarithmically: the density
is learned for that transform of the data, whose Jacobian depends on the data
alone and leaves the ELBO's gradients unchanged. Features that are
integer-valued in the first step's simulations and in the data (counts) are
dequantised: the density is fitted to them plus uniform noise on
:math:`[0, 1)` and evaluated at :math:`x + 1/2`; a density fitted to the
integers themselves piles onto them without bound (on sbibm's ``sir``, whose
data are survey counts, it lagged by 7 nats and put the posterior 0.55 sds off).

References

[1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
    Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017)
[2] `Sequential Neural Likelihood`, George Papamakarios, David Sterratt,
    Iain Murray (AISTATS 2019)
[3] `Mixture Density Networks`, Christopher M. Bishop, technical report
    NCRG/94/004, Aston University (1994)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .contrastive import (
    ContrastiveNetwork,
    StandardizedInputs,
    _shift,
    count_nonfinite,
    finite_simulations,
    squash,
    zero_nonfinite,
)
from .discriminator import Summary
from .errors import DiscriminatorError, ModelStructureError
from .pairing import PairedJoints
from .ratio import (
    RatioEstimator,
    RatioObjectives,
    checked_per_point,
    frozen_weights,
    private_updates,
    register_network,
    stored_module,
)
from .validation import (
    check_nonnegative_int,
    check_positive_int,
    check_positive_number,
    check_sizes,
)

__all__ = ["LikelihoodEstimator", "MixtureDensityNetwork"]

_LOG_PRECISION_RANGE = (-5.0, 7.0)  # of each component's precision factor's diagonal
_LATENT_CLAMP = 8.0  # standardised latents beyond this many scales are clamped
_SQUASH_LIMIT = 4.0  # standardised data beyond this many scales are squashed


class MixtureDensityNetwork(StandardizedInputs):
    r"""
    :math:`\log q_\phi(x \mid \theta)`: a mixture of ``components``
    full-covariance Normals over ``x_size`` features, whose weights, means and
    precisions' Cholesky factors an ELU MLP computes from ``theta_size`` latent
    features.
    Both are standardised first by robust running statistics kept as
    parameters (detached, never trained) so that the param store saves them.

    :param int theta_size: latent features per data point.
    :param int x_size: data features per data point.
    :param int components: mixture components.
    :param hidden_sizes: hidden widths of the MLP.
    """

    def __init__(
        self, theta_size: int, x_size: int, components: int, hidden_sizes: Sequence[int]
    ) -> None:
        super().__init__()
        self.components, self.x_size = components, x_size
        self._rows, self._cols = torch.tril_indices(x_size, x_size, -1)  # below the diagonal
        outputs = components * (1 + 2 * x_size + x_size * (x_size - 1) // 2)
        layers: list[nn.Module] = []
        size = theta_size
        for width in hidden_sizes:
            layers += [nn.Linear(size, int(width)), nn.ELU()]
            size = int(width)
        layers.append(nn.Linear(size, outputs))
        self.net = nn.Sequential(*layers)
        self.x_standardization = nn.Parameter(
            torch.stack([torch.zeros(x_size), torch.ones(x_size)])
        )
        self.theta_standardization = nn.Parameter(
            torch.stack([torch.zeros(theta_size), torch.ones(theta_size)])
        )
        self.fitted = False

    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``log q(x | theta)`` for ``(..., x_size)`` data and ``(..., theta_size)``
        latents: ``(...)``. The density is that of the standardised data, squashed
        logarithmically beyond 4 scales (:func:`~pyro_lfvi.contrastive.squash`), so
        that an exploding simulation cannot dominate the fit; it differs from that
        of ``x`` by the transform's Jacobian, a function of ``x`` alone, which the
        ELBO's gradients do not see."""
        x_loc, x_scale = self.x_standardization.detach()
        t_loc, t_scale = self.theta_standardization.detach()
        x = squash((x - x_loc) / x_scale, _SQUASH_LIMIT)
        theta = ((theta - t_loc) / t_scale).clamp(-_LATENT_CLAMP, _LATENT_CLAMP)
        out = self.net(theta)
        lead, k, d = out.shape[:-1], self.components, self.x_size
        logits, means, rest = out.split([k, k * d, out.shape[-1] - k - k * d], -1)
        log_diag, off = rest.split([k * d, rest.shape[-1] - k * d], -1)
        # Each component by the Cholesky factor of its precision, lower triangular:
        # its log density needs a product, not a triangular solve, so an
        # ill-conditioned factor cannot overflow it in many dimensions.
        log_diag = log_diag.reshape(*lead, k, d).clamp(*_LOG_PRECISION_RANGE)
        factor = torch.diag_embed(log_diag.exp())
        if d > 1:
            lower = torch.zeros_like(factor)
            lower[..., self._rows, self._cols] = off.reshape(*lead, k, -1)
            factor = factor + lower
        centred = x.unsqueeze(-2) - means.reshape(*lead, k, d)
        whitened = (factor.transpose(-1, -2) @ centred.unsqueeze(-1)).squeeze(-1)
        log_normal = (
            log_diag.sum(-1) - 0.5 * whitened.pow(2).sum(-1) - 0.5 * d * math.log(2 * math.pi)
        )
        log_joint = log_normal + F.log_softmax(logits, -1)
        return torch.logsumexp(log_joint, -1)


class LikelihoodEstimator(RatioEstimator):
    r"""
    Neural likelihood estimator of the simulator's log density, trained on
    simulations alone (see :mod:`pyro_lfvi.likelihood` for the objective):
    a :class:`~pyro_lfvi.RatioEstimator` for :class:`~pyro_lfvi.LFVI`, opt-in.

    Example::

        >>> import pyro
        >>> from pyro_lfvi import LFVI, LikelihoodEstimator
        >>> from pyro_lfvi.examples import AR1Series
        >>> pyro.set_rng_seed(0)
        >>> pyro.clear_param_store()
        >>> problem = AR1Series()
        >>> elbo = LFVI(estimator=LikelihoodEstimator(components=2))
        >>> svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        >>> loss = svi.step(problem.data)

    :param int components: mixture components of the density (default 4).
    :param hidden_sizes: hidden widths of its MLP (default ``(64, 64)``).
    :param int replay: also fit each update to the latest steps' simulations,
        up to ``replay`` in all (default 2,048; 0: this step's only). Their
        latents were drawn a few steps earlier, which a conditional density
        allows: it does not depend on the latents' distribution.
    :param int refine_steps: extra updates of the density in each step, on the
        same simulations, by a private Adam (default 2; 0: only the SVI
        optimiser's one).
    :param float refine_lr: learning rate of those updates (default 1e-3).
    :param float momentum: how far the input standardisation moves towards
        each step's simulations (default 0.02).
    :param str nan_policy: ``"drop"`` (default) trains on the finite
        simulations only and counts the others; ``"raise"`` stops.
    :param callable summary: optional summary statistics of the observed
        sites (see :class:`~pyro_lfvi.LFVI`).

    References

    [1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
        Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017)
    [2] `Sequential Neural Likelihood`, George Papamakarios, David Sterratt,
        Iain Murray (AISTATS 2019)
    """

    name = "lfvi_likelihood"

    def __init__(
        self,
        components: int = 4,
        hidden_sizes: Sequence[int] = (64, 64),
        replay: int = 2048,
        refine_steps: int = 2,
        refine_lr: float = 1e-3,
        momentum: float = 0.02,
        nan_policy: str = "drop",
        summary: Summary | None = None,
    ) -> None:
        self.components = check_positive_int("components", components)
        self.hidden_sizes = check_sizes("hidden_sizes", hidden_sizes)
        self.replay = check_nonnegative_int("replay", replay)
        self.refine_steps = check_nonnegative_int("refine_steps", refine_steps)
        self.refine_lr = check_positive_number("refine_lr", refine_lr)
        if not (isinstance(momentum, float | int) and 0.0 < float(momentum) <= 1.0):
            raise ValueError(f"Expected momentum in (0, 1], actual {momentum!r}")
        self.momentum = float(momentum)
        if nan_policy not in ("drop", "raise"):
            raise ValueError(f"Expected nan_policy 'drop' or 'raise', actual {nan_policy!r}")
        self.nan_policy = nan_policy
        if summary is not None and not callable(summary):
            raise ValueError(f"Expected summary to be callable or None, actual {summary!r}")
        self.summary = summary
        self.network: MixtureDensityNetwork | None = None
        self.discrete: torch.Tensor | None = None
        """Which features are integer-valued (in the first step's simulations and
        the data); the density is fitted to them plus uniform noise in
        :math:`[0, 1)` (dequantisation), and evaluated at the middle of their
        unit bin."""
        self._replay: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._refiner: tuple[nn.Module, torch.optim.Optimizer] | None = None
        self._refiner_state: dict[str, Any] = {}

    def modules(self) -> dict[str, nn.Module]:
        return {} if self.network is None else {self.name: self.network}

    # -- features ---------------------------------------------------------------

    def features(self, observed: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """A data point's features ``(..., dx)``: the observed sites' rows, after
        ``summary`` if any, in the order of their names."""
        if self.summary is not None:
            observed = self.summary(observed)
        return torch.cat([observed[n] for n in sorted(observed)], -1)

    def _dequantize(self, x: torch.Tensor, noise: bool) -> torch.Tensor:
        """Integer-valued features (:attr:`discrete`) spread over their unit bin:
        by uniform noise for simulations to fit, to its middle for data points
        to evaluate (a density over integers would pile onto them and grow
        without bound)."""
        if self.discrete is None or not bool(self.discrete.any()):
            return x
        shift = torch.rand_like(x) if noise else torch.full_like(x, 0.5)
        return x + shift * self.discrete.to(x.dtype)

    def observed_features(self, observed: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The features at which the density is evaluated for data points
        ``observed``: :meth:`features`, integer-valued ones moved to the middle
        of their unit bin (see :attr:`discrete`)."""
        return self._dequantize(self.features(observed), noise=False)

    def _net(self, x: torch.Tensor, theta: torch.Tensor) -> MixtureDensityNetwork:
        if self.network is None:
            stored = stored_module(self.name)  # a resumed run: build off the global RNG
            with torch.random.fork_rng(enabled=stored):
                self.network = MixtureDensityNetwork(
                    theta.shape[-1], x.shape[-1], self.components, self.hidden_sizes
                )
            self.network.fitted = stored
        register_network(self.name, self.network, ("x_standardization", "theta_standardization"))
        return self.network

    # -- objectives -------------------------------------------------------------

    @staticmethod
    @torch.no_grad()
    def _pairwise_accuracy(
        net: MixtureDensityNetwork,
        x: torch.Tensor,
        theta: torch.Tensor,
        valid: torch.Tensor,
        mirrored: bool,
    ) -> float:
        """How often the density prefers a simulation's own latents to another
        particle's (ties count half): the accuracy of the classifier it implies,
        0.5 where the data do not depend on the latents, as the contrastive
        estimator's ``discriminator_accuracy`` (the monitor reads it so)."""
        other = theta.roll(_shift(valid.shape[0], mirrored), 0)
        joint, shuffled = net(x, theta)[valid], net(x, other)[valid]
        return float(((joint > shuffled).float() + 0.5 * (joint == shuffled).float()).mean())

    def _simulations(self, pair: PairedJoints) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The simulations' features ``(P, M, dx)`` (non-finite ones zeroed), their
        latents ``(P, M, dz)`` and which rows are finite ``(P, M)``, detached; at
        the first call, which features are integer-valued (:attr:`discrete`)."""
        valid = finite_simulations(pair)
        observed = zero_nonfinite({k: v.detach() for k, v in pair.p_observed.items()})
        local = {k: v.detach() for k, v in pair.p_local.items()}
        global_ = {k: v.detach() for k, v in pair.p_global.items()}
        theta = ContrastiveNetwork.theta(local, global_, valid.shape)
        x = self.features(observed)
        if self.discrete is None:  # integer-valued in every simulation and data point seen
            data = self.features(pair.q_observed).detach()
            seen = torch.cat([x[valid], data.reshape(-1, x.shape[-1])])
            self.discrete = (seen == seen.round()).all(0)
        return x, theta, valid

    def simulation_loss(self, net: MixtureDensityNetwork, pair: PairedJoints) -> torch.Tensor:
        """The training loss of ``net``, its negative mean log density, on the
        finite simulations of ``pair`` alone (no replay, no update): what
        :func:`~pyro_lfvi.check_ratio_estimator` compares."""
        x, theta, valid = self._simulations(pair)
        return -net(self._dequantize(x, noise=True)[valid], theta[valid]).mean()

    def pairwise_loss(self, net: MixtureDensityNetwork, pair: PairedJoints) -> torch.Tensor:
        """The log loss of telling, from ``net``'s log ratio, which of two particles'
        latents simulated each finite simulation of ``pair`` (its own or another
        particle's, paired as for the recorded ``discriminator_accuracy``): minimised by the exact
        likelihood, blind to any function of the data alone."""
        x, theta, valid = self._simulations(pair)
        x = self._dequantize(x, noise=True)
        other = theta.roll(_shift(valid.shape[0], pair.mirrored), 0)
        return F.softplus(net(x, other) - net(x, theta))[valid].mean()

    def _training_rows(
        self, pair: PairedJoints, update: bool
    ) -> tuple[MixtureDensityNetwork, torch.Tensor, torch.Tensor, int, float]:
        """The network and the finite simulations to fit (with ``update``: after
        moving the standardisation towards them, joined by the replayed ones)."""
        if pair.p_local and not pair.explicit_locals:
            raise ModelStructureError(
                "LikelihoodEstimator needs local latents with explicit priors and guides (LFVI "
                "adds their densities); with an implicit local prior or guide use the default "
                "estimator, which falls back to the joint classifier"
            )
        x_all, theta_all, valid = self._simulations(pair)
        bad = count_nonfinite(valid, self.nan_policy, list(pair.p_observed))
        net = self._net(x_all[valid], theta_all[valid])
        x_all = self._dequantize(x_all, noise=True)
        x, theta = x_all[valid], theta_all[valid]
        accuracy = self._pairwise_accuracy(net, x_all, theta_all, valid, pair.mirrored)
        if update:
            if x.shape[0] >= 2:
                net.update_standardization(x, theta, self.momentum)
            if self.replay > 0:
                x, theta = self._replayed(x, theta)
        return net, x, theta, bad, accuracy

    def _replayed(self, x: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The latest steps' simulations, up to ``replay`` rows with this step's."""
        kept, rows = [(x, theta)], x.shape[0]
        for old in reversed(self._replay):
            if old[0].shape[1:] != x.shape[1:] or rows + old[0].shape[0] > self.replay:
                break
            kept.append(old)
            rows += old[0].shape[0]
        kept.reverse()
        self._replay = kept
        return torch.cat([k[0] for k in kept]), torch.cat([k[1] for k in kept])

    def _refine(self, net: MixtureDensityNetwork, x: torch.Tensor, theta: torch.Tensor) -> None:
        """``refine_steps`` updates by the private optimiser, leaving the gradients
        that the SVI step will use as they were."""
        if self._refiner is None or self._refiner[0] is not net:
            self._refiner = (net, torch.optim.Adam(net.net.parameters(), lr=self.refine_lr))
            if self._refiner_state:  # from a checkpoint
                self._refiner[1].load_state_dict(self._refiner_state)
                self._refiner_state = {}
        private_updates(self._refiner[1], lambda: -net(x, theta).mean(), self.refine_steps)

    def objectives(self, pair: PairedJoints, update: bool = True) -> RatioObjectives:
        net, x, theta, bad, accuracy = self._training_rows(pair, update)
        if update and self.refine_steps > 0 and torch.is_grad_enabled():
            self._refine(net, x, theta)
        loss = -net(x, theta).mean()
        observed = self.observed_features(pair.q_observed)
        latents = ContrastiveNetwork.theta(pair.q_local, pair.q_global, observed.shape[:-1])
        with frozen_weights(net):
            log_ratio = net(observed, latents)
        checked_per_point(log_ratio, pair, "likelihood network at the observed data")
        stats = {
            "discriminator_accuracy": accuracy,
            "likelihood_loss": float(loss.detach()),
            "nonfinite_fraction": bad / max(1, pair.num_particles * pair.roles.num_points),
        }
        if not math.isfinite(stats["likelihood_loss"]):
            raise DiscriminatorError(
                "The likelihood network's loss is not finite; lower the learning rate or clip "
                "gradients (pyro.optim.ClippedAdam(clip_norm=...))"
            )
        return RatioObjectives(log_ratio=log_ratio, loss=loss, stats=stats)

    def state_dict(self) -> dict[str, Any]:
        """The replayed simulations of the latest steps (see ``replay``) and the
        private optimiser's state (see ``refine_steps``)."""
        refiner = self._refiner[1].state_dict() if self._refiner else self._refiner_state
        return {"replay": [{"x": x, "theta": t} for x, t in self._replay], "refiner": refiner}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved.

        :raises ValueError: if ``state`` is not such a state.
        """
        if isinstance(state, Mapping) and not state:
            self._replay, self._refiner_state = [], {}
            return
        entries = state.get("replay") if isinstance(state, Mapping) else None
        if (
            not isinstance(state, Mapping)
            or set(state) != {"replay", "refiner"}
            or not isinstance(state["refiner"], Mapping)
            or not isinstance(entries, list)
            or not all(
                isinstance(e, Mapping)
                and set(e) == {"x", "theta"}
                and all(isinstance(v, torch.Tensor) for v in e.values())
                for e in entries
            )
        ):
            raise ValueError(
                "Expected the likelihood estimator's state {'replay': [{'x': tensor, "
                f"'theta': tensor}}, ...], 'refiner': {{...}}}}, actual {state!r:.80}"
            )
        self._replay = [(e["x"], e["theta"]) for e in entries]
        self._refiner_state = dict(state["refiner"])
        if self._refiner is not None and self._refiner_state:
            self._refiner[1].load_state_dict(self._refiner_state)
            self._refiner_state = {}
