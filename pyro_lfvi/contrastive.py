r"""The default ratio estimator: contrastive, trained on simulations alone.

The paper's classifier tells the observed data points from simulations, and
with few, high-dimensional or a single observation it wins by memorising
those points. This estimator never sees the observations while it trains. It
learns the simulator's part of the ratio,

.. math::

    s(x, z, \beta) \approx \log p(x \mid z, \beta) - \log p_\pi(x),

as neural ratio estimation does [2]: a classifier tells joint simulations
:math:`(x', z', \beta')`, :math:`x' \sim p(x \mid z', \beta')`, from the same
latents paired with the simulated data of *other* particles (the product of
marginals). Its optimal logit is the ratio above for any distribution
:math:`\pi` of the training latents, and :math:`\log p_\pi(x)` does not depend
on the variational parameters, so the ELBO's gradients are those of the exact
likelihood. The training latents are the guide's globals, spread ``widen``
times further than the guide draws them (within the prior's range), and the
locals drawn from their prior given those globals: the ratio is learned
where the posterior is and around it. The ELBO then evaluates :math:`s` at the
observed :math:`x_n` with the guide's draws of :math:`z_n` and
:math:`\beta`, with frozen weights, so the gradient flows through the latents
only:

.. math::

    \mathcal{L} = \mathbb{E}_{q}[\log p(\beta) - \log q(\beta)]
        + \sum_n \mathbb{E}_{q}\big[\log p(z_n \mid \beta)
        - \log q(z_n \mid x_n, \beta) + s(x_n, z_n, \beta)\big].

The data reach the classifier through a learned embedding chosen from their
shape (:mod:`pyro_lfvi.embeddings`); inputs are standardised with robust
running statistics that follow the simulations as the guide moves, and
squashed beyond 4 sds so that an exploding simulation cannot blow up the
network. Simulations with NaN or inf values are dropped from training
(``nan_policy="drop"``) and counted. Optionally (``replay``), each update
also trains on the latest steps' simulations, so that with few simulations
per step (one observation) the classifier learns from many more at no extra
simulator cost, and (``refine_steps``) takes several updates of its own on them
in each step.

References

[1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
    Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017)
[2] `Likelihood-free MCMC with Amortized Approximate Ratio Estimators`, Joeri
    Hermans, Volodimir Begy, Gilles Louppe (ICML 2020)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .antithetic import mirror_partners
from .discriminator import Summary, checked_summary, mlp
from .embeddings import PointShape, default_embedding
from .errors import DiscriminatorError, SimulatorError
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
from .step_checks import discriminator_accuracy
from .validation import check_nonnegative_int, check_positive_int, check_sizes

__all__ = [
    "ContrastiveNetwork",
    "ContrastiveRatioEstimator",
    "StandardizedInputs",
    "count_nonfinite",
    "squash",
    "zero_nonfinite",
]

_LIMIT = 4.0
_PARTS = ("observed", "local", "global")

_Sites = dict[str, torch.Tensor]
Rows = tuple[_Sites, _Sites, _Sites, torch.Tensor]
"""One step's training simulations: observed, local and global rows, and the finite mask."""


def squash(z: torch.Tensor, limit: float = _LIMIT) -> torch.Tensor:
    """Identity within ``±limit`` (default 4), logarithmic beyond: bounded
    influence of outliers."""
    over = (z.abs() - limit).clamp_min(0.0)
    return torch.where(over > 0, z.sign() * (limit + torch.log1p(over)), z)


def finite_simulations(pair: PairedJoints) -> torch.Tensor:
    """``(P, M)`` mask of the p-side simulations free of NaN and inf, on every observed site."""
    return torch.stack([v.isfinite().all(-1) for v in pair.p_observed.values()]).all(0)


def count_nonfinite(valid: torch.Tensor, nan_policy: str, sites: list[str]) -> int:
    """The number of simulations with NaN or inf (``~valid``), or an error: with
    ``nan_policy="raise"`` if there are any, whatever the policy if all are.

    :raises DiscriminatorError: with ``nan_policy="raise"``.
    :raises SimulatorError: if no simulation of the step is finite.
    """
    num_bad = int((~valid).sum())
    if num_bad and nan_policy == "raise":
        raise DiscriminatorError(
            f"{num_bad} of {valid.numel()} simulations had NaN or inf values "
            f"(nan_policy='raise'); use nan_policy='drop' to train on the others"
        )
    if num_bad == valid.numel():
        raise SimulatorError(
            f"The simulator of site(s) {sites} returned NaN or inf in every one of "
            f"this step's {num_bad} simulations, so there is nothing to train the ratio "
            f"estimator on. Check the simulator at the guide's current parameters"
        )
    return num_bad


def zero_nonfinite(observed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Simulations with NaN and inf replaced by 0 (those rows are masked out by
    ``finite_simulations``; zeros keep the network's outputs finite)."""
    return {k: torch.where(v.isfinite(), v, torch.zeros(())) for k, v in observed.items()}


def replay_from_state(state: Mapping[str, Any]) -> list[Rows]:
    """The replayed simulations in a :meth:`ContrastiveRatioEstimator.state_dict`, checked.

    :raises ValueError: if ``state`` is not such a state.
    """
    if isinstance(state, Mapping) and not state:  # nothing saved: nothing replayed
        return []
    entries = state.get("replay") if isinstance(state, Mapping) else None
    if set(state) != {"replay"} or not isinstance(entries, list):
        raise ValueError(
            f"Expected the contrastive estimator's state {{'replay': [...]}}, actual {state!r:.80}"
        )
    replay = []
    for entry in entries:
        if not isinstance(entry, Mapping) or set(entry) != {*_PARTS, "valid"}:
            raise ValueError(f"Expected replay entries with keys {[*_PARTS, 'valid']}")
        parts = [entry[name] for name in _PARTS]
        valid = entry["valid"]
        tensors = [v for part in parts if isinstance(part, Mapping) for v in part.values()]
        if not all(isinstance(p, Mapping) for p in parts) or not all(
            isinstance(t, torch.Tensor) for t in [*tensors, valid]
        ):
            raise ValueError("Expected replay entries of tensors, by site name")
        replay.append((dict(parts[0]), dict(parts[1]), dict(parts[2]), valid))
    return replay


def _robust_moments(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Median and MAD-based scale per column (sd where the MAD vanishes)."""
    med = feats.median(0).values
    scale = 1.4826 * (feats - med).abs().median(0).values
    if bool((scale > 1e-8).all()):  # the usual case: no fallback to compute
        return med, scale
    sd = feats.std(0) if feats.shape[0] > 1 else torch.ones_like(med)
    scale = torch.where(scale > 1e-8, scale, sd)
    return med, torch.where(scale > 1e-8, scale, torch.ones_like(scale))


def _shift(num_particles: int, mirrored: bool) -> int:
    """A random shift of the particle dim for a shuffled pairing: any of
    1, ..., P - 1, except P / 2 when the particles are ``mirrored``
    (antithetic, :mod:`pyro_lfvi.antithetic`, which LFVI uses only with an
    even P of four or more): each particle's mirror image lies P / 2 away,
    and a simulation at the mirror image is not independent of the latents
    it would be paired with, which biases the estimator."""
    if mirrored:
        shift = int(torch.randint(1, num_particles - 1, ()))
        return shift + 1 if shift >= num_particles // 2 else shift
    return int(torch.randint(1, num_particles, ()))


def _own_simulations(owner: torch.Tensor, num_particles: int, mirrored: bool) -> torch.Tensor:
    """``(P, J)``: whether simulation ``j``, drawn by particle ``owner[j]``, is
    particle ``p``'s own or, with ``mirrored`` particles (particle ``k`` and
    ``k + P // 2``; an odd last one unmirrored), its mirror image's: neither
    is independent of particle ``p``'s latents."""
    own = owner.unsqueeze(0) == torch.arange(num_particles).unsqueeze(1)
    if not mirrored:
        return own
    return own | (owner.unsqueeze(0) == mirror_partners(num_particles).unsqueeze(1))


class StandardizedInputs(nn.Module):
    """
    A network whose data and latent features are standardised by robust
    running statistics, ``x_standardization`` and ``theta_standardization``
    (row 0: location, row 1: scale; parameters that forward detaches and no
    optimiser steps, so that Pyro's param store saves and restores them), and
    ``fitted`` once they have seen a batch. Shared by the contrastive
    estimator's classifier and :class:`~pyro_lfvi.likelihood.MixtureDensityNetwork`.
    """

    x_standardization: nn.Parameter
    theta_standardization: nn.Parameter
    fitted: bool

    @torch.no_grad()
    def update_standardization(self, x: torch.Tensor, theta: torch.Tensor, momentum: float) -> None:
        """Move the standardisation towards the robust moments of a batch."""
        for param, feats in ((self.x_standardization, x), (self.theta_standardization, theta)):
            if feats.shape[-1] == 0 or feats.shape[0] == 0:
                continue
            loc, scale = _robust_moments(feats)
            if not self.fitted:
                param[0].copy_(loc)
                param[1].copy_(scale)
            else:
                param[0].lerp_(loc, momentum)
                param[1].copy_((param[1].log().lerp(scale.log(), momentum)).exp())
        self.fitted = True

    @torch.no_grad()
    def average_standardization(
        self, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        """
        Replace the standardisation by its average over the processes of a
        data-parallel run (:mod:`pyro_lfvi.distributed` calls this before each
        optimiser step; a single process never does): the locations
        arithmetically, the scales geometrically (as
        :meth:`update_standardization` moves them in log space), over the
        processes that have fitted it. Each process having moved from the same
        standardisation towards the moments of its own simulations, the
        average moves towards the average of those moments.

        :param callable sum_over_ranks: sums a tensor over the processes (e.g.
            ``torch.distributed.all_reduce``) and returns the sum.
        """
        rows = (self.x_standardization, self.theta_standardization)
        weight = torch.ones(1, device=rows[0].device) * float(self.fitted)
        packed = torch.cat([weight] + [torch.cat([p[0], p[1].log()]) * weight for p in rows])
        total = sum_over_ranks(packed)
        if float(total[0]) == 0.0:  # fitted nowhere yet
            return
        mean = total[1:] / total[0]
        for param in rows:
            size = param.shape[-1]
            param[0].copy_(mean[:size])
            param[1].copy_(mean[size : 2 * size].exp())
            mean = mean[2 * size :]
        self.fitted = True


class ContrastiveNetwork(StandardizedInputs):
    r"""
    The classifier :math:`s(x, z, \beta)`: an embedding of each observed
    site's data point, concatenated with the latents, into an ELU MLP.
    ``forward(observed, local, global_)`` takes dicts of ``(P, M, d)`` rows
    (globals ``(P, d)``) and returns ``(P, M)`` logits, like any
    discriminator of :mod:`pyro_lfvi.discriminator`.

    :param dict points: :class:`~pyro_lfvi.embeddings.PointShape` of each
        observed site (after ``summary``, if any).
    :param int theta_size: number of latent features per data point.
    :param hidden_sizes: hidden widths of the classifier head.
    :param dict embeddings: one module per observed site (see
        :mod:`pyro_lfvi.embeddings`).
    :param callable summary: optional summary statistics applied first.
    """

    def __init__(
        self,
        points: Mapping[str, PointShape],
        theta_size: int,
        hidden_sizes: Sequence[int],
        embeddings: Mapping[str, nn.Module],
        summary: Summary | None = None,
    ) -> None:
        super().__init__()
        self.points = dict(points)
        self.summary = summary
        self.embeddings = nn.ModuleDict(dict(embeddings))
        x_size = sum(p.numel for p in self.points.values())
        # Row 0: location, row 1: scale; parameters (detached in forward, never
        # trained) so that Pyro's param store saves and restores them.
        self.x_standardization = nn.Parameter(
            torch.stack([torch.zeros(x_size), torch.ones(x_size)])
        )
        self.theta_standardization = nn.Parameter(
            torch.stack([torch.zeros(theta_size), torch.ones(theta_size)])
        )
        self.fitted = False
        with torch.no_grad():
            embed = sum(
                int(self.embeddings[n](torch.zeros(2, *p.shape)).reshape(2, -1).shape[-1])
                for n, p in self.points.items()
            )
        self.head = mlp(embed + theta_size, hidden_sizes)

    def features(self, observed: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Raw data features ``(P, M, dx)``, after ``summary`` if any."""
        if self.summary is not None:
            observed = self.summary(observed)
        return torch.cat([observed[n] for n in self.points], -1)

    @staticmethod
    def theta(
        local: Mapping[str, torch.Tensor], global_: Mapping[str, torch.Tensor], lead: torch.Size
    ) -> torch.Tensor:
        rows = list(local.values())
        for value in global_.values():
            rows.append(value.unsqueeze(-2).expand((*lead, value.shape[-1])))
        return torch.cat(rows, -1) if rows else torch.zeros((*lead, 0))

    def embed(self, observed: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Standardised, embedded data points: ``(..., d)`` rows to ``(..., k)``."""
        x = self.features(observed)
        lead = x.shape[:-1]
        loc, scale = self.x_standardization.detach()
        x = squash((x - loc) / scale)
        embedded = []
        start = 0
        for name, point in self.points.items():
            part = x[..., start : start + point.numel].reshape(-1, *point.shape)
            start += point.numel
            embedded.append(self.embeddings[name](part).reshape((*lead, -1)))
        return torch.cat(embedded, -1)

    def classify(
        self,
        embedded: torch.Tensor,
        local: Mapping[str, torch.Tensor],
        global_: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        """Logits ``(P, M)`` from embedded data points and the latents."""
        lead = embedded.shape[:-1]
        theta = self.theta(local, global_, lead)
        t_loc, t_scale = self.theta_standardization.detach()
        theta = squash((theta - t_loc) / t_scale)
        return self.head(torch.cat([embedded, theta], -1)).squeeze(-1)

    def forward(
        self,
        observed: Mapping[str, torch.Tensor],
        local: Mapping[str, torch.Tensor],
        global_: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        return self.classify(self.embed(observed), local, global_)


class ContrastiveRatioEstimator(RatioEstimator):
    r"""
    Contrastive (neural ratio estimation) estimator of the simulator's log
    likelihood, trained on simulations alone; the default of
    :class:`~pyro_lfvi.LFVI`. See :mod:`pyro_lfvi.contrastive` for the
    objective.

    Example::

        >>> import pyro
        >>> from pyro_lfvi import LFVI, ContrastiveRatioEstimator
        >>> from pyro_lfvi.examples import ConjugateNormal
        >>> pyro.set_rng_seed(0)
        >>> pyro.clear_param_store()
        >>> problem = ConjugateNormal()  # model, guide and data
        >>> elbo = LFVI(estimator=ContrastiveRatioEstimator(num_contrasts=4))
        >>> optim = pyro.optim.Adam({"lr": 0.01})
        >>> svi = pyro.infer.SVI(problem.model, problem.guide, optim, elbo)
        >>> loss = svi.step(problem.data)
        >>> 0.0 <= elbo.history[-1]["discriminator_accuracy"] <= 1.0
        True

    It needs explicit local priors and guides (their log densities enter the
    ELBO exactly) and at least two vectorised particles (the product of
    marginals pairs each particle's latents with another particle's data);
    LFVI falls back to the paper's joint classifier otherwise.

    :param embedding: a module for the single observed site, or a dict of
        modules by site name, mapping standardised data points
        ``(B, *point_shape)`` to ``(B, k)``; default chosen from the data's
        shape (:func:`~pyro_lfvi.default_embedding`).
    :type embedding: torch.nn.Module or dict or None
    :param hidden_sizes: hidden widths of the classifier head (default
        ``(64, 64)``).
    :param int num_contrasts: shuffled pairings per joint one in each step
        (default 2).
    :param float momentum: weight of each new batch in the running input
        standardisation (default 0.02).
    :param callable summary: hand-made summary statistics of the observed
        rows, applied before the embedding (see ``LFVI(summary=...)``).
    :param str name: param-store name of the network (default ``"lfvi_ratio"``).
    :param str nan_policy: ``"drop"`` (default) drops simulations with NaN or
        inf values from training and counts them; ``"raise"`` raises
        :class:`~pyro_lfvi.DiscriminatorError` instead.
    :param bool self_normalize: with more than one data point, subtract
        :math:`\log \frac{1}{J}\sum_j e^{s(x'_j, z, \beta)}` over ``normalizer_draws``
        of this step's simulations :math:`x'_j` (default True). The exact
        ratio averages to one under the simulations for every latent, so this
        removes the part of the learned logit that depends on the latents
        alone; summed over N data points, that part would otherwise bias the
        globals by N times the classifier's error.
    :param int normalizer_draws: simulations per latent in that average
        (default 64).
    :param str normalizer: whose simulations that average takes:
        ``"others"`` those of the *other* particles only, as the classifier's
        shuffled pairs do; ``"all"`` every simulation of the step, each
        particle's own included; ``"auto"`` (default) ``"others"`` with three
        or more particles and ``"all"`` with two (with two, the other
        particles' simulations would be a single particle's). A particle's own
        simulations were drawn at its own (widened) latents, so with them the
        average is largest near those latents, and the term
        :math:`-N \log(\cdot)` pulls each particle back towards the
        particles' mean: with ``"all"`` the guide comes out too narrow with
        few particles and slightly narrow with eight. ``"others"`` refuses
        fewer than three particles.
    :param float balance: weight of the balancing penalty of balanced NRE [3],
        :math:`\lambda (\mathbb{E}_{joint}[\sigma(s)] + \mathbb{E}_{shuffled}[\sigma(s)] - 1)^2`,
        which keeps the classifier from being over-confident (default 0: off; [3]
        uses 100, which made the conjugate example's sds narrower, not wider).
    :param int replay: if positive, the simulations each update trains on
        (default 0: off): this step's and, while they fit, whole earlier
        steps', newest first. With one observation a step simulates only one
        data point per particle; replaying the latest steps averages each
        update over many more simulations without more simulator calls, as
        sbi trains on every round's simulations. Their latents were drawn a
        few steps earlier, which the ratio allows: its optimum holds for any
        distribution of the training latents. A step that simulates this many
        or more trains on its own alone. ``state_dict`` holds the replayed
        simulations, so that checkpoints resume exactly. (On sbibm's slcp,
        ``replay=1024`` improves the posterior, but the end-of-training check
        then misses more of the remaining failures; README's "A single
        observation" has the figures.)
    :param int refine_steps: if positive, before each step's ELBO the
        classifier also takes this many updates of its own (default 0: off) on
        the simulations that step trains on (with ``replay``, the latest
        steps'), each with fresh shuffled pairings, by a private
        :class:`torch.optim.Adam` whose learning rate ``refine_lr`` does not
        decay. With one observation the SVI optimiser's single update per step,
        at a learning rate that decays with the guide's, leaves the classifier
        far behind what its simulations could teach it; sbi's neural ratio
        estimation trains for many epochs on its simulations for the same
        reason. It costs time, not simulator calls. The private optimiser's
        moments are not part of ``state_dict`` (a resumed run restarts them),
        and data-parallel training refuses it.
    :param float refine_lr: the learning rate of those updates (default 1e-3).

    References

    [1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
        Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017)
    [2] `Likelihood-free MCMC with Amortized Approximate Ratio Estimators`, Joeri
        Hermans, Volodimir Begy, Gilles Louppe (ICML 2020)
    [3] `Towards Reliable Simulation-Based Inference with Balanced Neural Ratio Estimation`,
        Arnaud Delaunoy et al. (NeurIPS 2022)
    """

    def __init__(
        self,
        embedding: nn.Module | Mapping[str, nn.Module] | None = None,
        hidden_sizes: Sequence[int] = (64, 64),
        num_contrasts: int = 2,
        momentum: float = 0.02,
        summary: Summary | None = None,
        name: str = "lfvi_ratio",
        nan_policy: str = "drop",
        self_normalize: bool = True,
        normalizer_draws: int = 64,
        normalizer: str = "auto",
        balance: float = 0.0,
        replay: int = 0,
        refine_steps: int = 0,
        refine_lr: float = 1e-3,
    ) -> None:
        if embedding is not None and not isinstance(embedding, nn.Module | Mapping):
            raise ValueError(
                f"Expected embedding to be a torch.nn.Module, a dict of them by observed "
                f"site, or None, actual {type(embedding).__name__}"
            )
        if isinstance(embedding, Mapping):
            for key, module in embedding.items():
                if not isinstance(module, nn.Module):
                    raise ValueError(
                        f"Expected embedding['{key}'] to be a torch.nn.Module, actual "
                        f"{type(module).__name__}"
                    )
        self.embedding = embedding
        self.hidden_sizes = check_sizes("hidden_sizes", hidden_sizes)
        self.num_contrasts = check_positive_int("num_contrasts", num_contrasts)
        if not (isinstance(momentum, float | int) and 0.0 < float(momentum) <= 1.0):
            raise ValueError(f"Expected momentum in (0, 1], actual {momentum!r}")
        self.momentum = float(momentum)
        if summary is not None and not callable(summary):
            raise ValueError(f"Expected summary to be callable or None, actual {summary!r}")
        self.summary = summary
        if not isinstance(name, str) or not name:
            raise ValueError(f"Expected name to be a non-empty str, actual {name!r}")
        self.name = name
        if nan_policy not in ("drop", "raise"):
            raise ValueError(f"Expected nan_policy 'drop' or 'raise', actual {nan_policy!r}")
        self.nan_policy = nan_policy
        self.network: ContrastiveNetwork | None = None
        self.self_normalize = bool(self_normalize)
        if not (isinstance(balance, float | int) and float(balance) >= 0):
            raise ValueError(f"Expected balance to be a number >= 0, actual {balance!r}")
        self.balance = float(balance)
        self.normalizer_draws = check_positive_int("normalizer_draws", normalizer_draws)
        if normalizer not in ("auto", "all", "others"):
            raise ValueError(
                f"Expected normalizer 'auto', 'all' or 'others', actual {normalizer!r}: "
                "'others' leaves each particle's own simulations out of its "
                "self-normalisation, 'all' keeps them, 'auto' picks 'others' with three "
                "or more particles"
            )
        self.normalizer = normalizer
        self.replay = check_nonnegative_int("replay", replay)
        self._replay: list[Rows] = []
        self.refine_steps = check_nonnegative_int("refine_steps", refine_steps)
        if not (isinstance(refine_lr, float | int) and 0.0 < float(refine_lr) < float("inf")):
            raise ValueError(f"Expected refine_lr to be a positive number, actual {refine_lr!r}")
        self.refine_lr = float(refine_lr)
        self._refiner: tuple[ContrastiveNetwork, torch.optim.Optimizer] | None = None

    # -- building ----------------------------------------------------------------

    def _points(self, pair: PairedJoints) -> dict[str, PointShape]:
        if self.summary is None:
            return {n: pair.observed_points[n] for n in pair.roles.observed}
        rows = checked_summary(self.summary, pair.q_observed)
        return {n: PointShape(1, (int(v.shape[-1]),)) for n, v in rows.items()}

    def _embeddings(self, points: Mapping[str, PointShape]) -> dict[str, nn.Module]:
        if self.embedding is None:
            return {n: default_embedding(p) for n, p in points.items()}
        if isinstance(self.embedding, nn.Module):
            if len(points) != 1:
                raise ValueError(
                    f"Expected a dict of embeddings by site name for the observed sites "
                    f"{list(points)}, actual one module"
                )
            return {next(iter(points)): self.embedding}
        missing = [n for n in points if n not in self.embedding]
        if missing:
            raise ValueError(f"Expected an embedding for observed sites {missing}, actual none")
        return {n: self.embedding[n] for n in points}

    def _build(self, pair: PairedJoints) -> ContrastiveNetwork:
        points = self._points(pair)
        lead = pair.q_observed[pair.roles.observed[0]].shape[:2]
        theta = ContrastiveNetwork.theta(pair.q_local, pair.q_global, lead)
        try:
            return ContrastiveNetwork(
                points, theta.shape[-1], self.hidden_sizes, self._embeddings(points), self.summary
            )
        except RuntimeError as err:
            shapes = {n: p.shape for n, p in points.items()}
            raise DiscriminatorError(
                f"The embedding network failed on data points of shape {shapes} "
                f"(batch first): {err}. It must map (B, *point_shape) to (B, k)"
            ) from err

    def modules(self) -> dict[str, nn.Module]:
        return {} if self.network is None else {self.name: self.network}

    def _net(self, pair: PairedJoints) -> ContrastiveNetwork:
        if self.network is None:
            stored = stored_module(self.name)  # a resumed run: build off the global RNG
            with torch.random.fork_rng(enabled=stored):
                self.network = self._build(pair)
            self.network.fitted = stored
        register_network(self.name, self.network, ("x_standardization", "theta_standardization"))
        return self.network

    # -- objectives -------------------------------------------------------------

    def _training(
        self, net: ContrastiveNetwork, pair: PairedJoints, valid: torch.Tensor, update: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The classifier's loss and statistics on the simulations of ``pair``
        (with ``update``: after updating the standardisation, with the replayed
        ones, and after the ``refine_steps`` updates where gradients are on)."""
        rows = self._rows(net, pair, valid, update)
        if update and self.refine_steps > 0 and torch.is_grad_enabled():
            self._refine(net, rows, pair.mirrored)
        loss, stats = self._loss(net, rows, pair.mirrored)
        stats["nonfinite_fraction"] = float((~valid).sum()) / valid.numel()
        return loss, stats

    def _rows(
        self, net: ContrastiveNetwork, pair: PairedJoints, valid: torch.Tensor, update: bool
    ) -> Rows:
        """The simulations to train on, detached, NaN and inf zeroed (masked by
        ``valid``); with ``update``, after moving the standardisation towards
        them, joined by the replayed ones."""
        obs = {k: v.detach() for k, v in pair.p_observed.items()}
        loc = {k: v.detach() for k, v in pair.p_local.items()}
        glob = {k: v.detach() for k, v in pair.p_global.items()}
        count_nonfinite(valid, self.nan_policy, list(obs))
        obs = zero_nonfinite(obs)
        if update and int(valid.sum()) >= 2:
            x = net.features(obs)
            theta = net.theta(loc, glob, valid.shape)
            net.update_standardization(x[valid], theta[valid], self.momentum)
        if update and self.replay > 0:
            return self._replayed(obs, loc, glob, valid)
        return obs, loc, glob, valid

    def _loss(
        self, net: ContrastiveNetwork, rows: Rows, mirrored: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The contrastive loss on ``rows``, joint pairs against ``num_contrasts``
        shuffled pairings (``mirrored``: see :func:`_shift`), and its statistics."""
        obs, loc, glob, valid = rows
        P, M = valid.shape
        embedded = net.embed(obs)
        joint = net.classify(embedded, loc, glob)
        weight = valid.to(joint.dtype)
        loss = (F.softplus(-joint) * weight).sum() / weight.sum().clamp_min(1.0)
        balance = (torch.sigmoid(joint) * weight).sum() / weight.sum().clamp_min(1.0) - 1.0
        contrasts = []
        for _ in range(self.num_contrasts):
            shift = _shift(P, mirrored)
            perm = torch.randperm(M)
            w = weight * weight.roll(shift, 0)[:, perm]
            logits = net.classify(embedded.roll(shift, 0)[:, perm], loc, glob)
            loss = (
                loss + (F.softplus(logits) * w).sum() / w.sum().clamp_min(1.0) / self.num_contrasts
            )
            contrasts.append(logits[w > 0].detach())
            marginal = (torch.sigmoid(logits) * w).sum() / w.sum().clamp_min(1.0)
            balance = balance + marginal / self.num_contrasts
        if self.balance > 0:
            loss = loss + self.balance * balance**2
        with torch.no_grad():
            joint_valid, shuffled = joint.detach()[valid], torch.cat(contrasts)
            acc = discriminator_accuracy(joint_valid, shuffled)
        stats = {
            "discriminator_accuracy": acc,
            "mean_logit_p": float(joint_valid.mean()) if joint_valid.numel() else 0.0,
            "mean_logit_q": float(shuffled.mean()) if contrasts else 0.0,
        }
        return loss, stats

    def _refine(self, net: ContrastiveNetwork, rows: Rows, mirrored: bool) -> None:
        """``refine_steps`` updates of the classifier by its private optimiser on
        ``rows``, leaving the gradients that the SVI step will use as they were."""
        if self._refiner is None or self._refiner[0] is not net:
            trained = [p for n, p in net.named_parameters() if not n.endswith("standardization")]
            self._refiner = (net, torch.optim.Adam(trained, lr=self.refine_lr))
        private_updates(
            self._refiner[1], lambda: self._loss(net, rows, mirrored)[0], self.refine_steps
        )

    def _replayed(
        self,
        obs: dict[str, torch.Tensor],
        loc: dict[str, torch.Tensor],
        glob: dict[str, torch.Tensor],
        valid: torch.Tensor,
    ) -> Rows:
        """The latest earlier steps' simulations, while they fit in ``replay`` rows
        with this step's, then this step's; remembers this step's."""
        batch = (obs, loc, glob, valid)
        rows = valid.numel()
        kept = []
        for old in reversed(self._replay):
            if old[3].shape[1:] != valid.shape[1:] or rows + old[3].numel() > self.replay:
                break
            kept.append(old)
            rows += old[3].numel()
        kept.reverse()
        self._replay = [*kept, batch]
        if not kept:
            return batch
        parts = [*kept, batch]

        def cat(i: int) -> dict[str, torch.Tensor]:
            return {k: torch.cat([part[i][k] for part in parts]) for k in batch[i]}  # type: ignore[index]

        return cat(0), cat(1), cat(2), torch.cat([part[3] for part in parts])

    def state_dict(self) -> dict[str, Any]:
        """The replayed simulations of the latest steps (see ``replay``)."""
        return {
            "replay": [
                {**dict(zip(_PARTS, rows[:3], strict=True)), "valid": rows[3]}
                for rows in self._replay
            ]
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the replayed simulations saved by :meth:`state_dict`.

        :raises ValueError: if ``state`` is not such a state.
        """
        self._replay = replay_from_state(state)

    def normalizes(self, pair: PairedJoints) -> bool:
        """Whether the ratio at the observed data is self-normalised for ``pair``
        (``self_normalize`` and more than one data point)."""
        return self.self_normalize and pair.roles.full_size > 1

    def at_data(
        self, net: ContrastiveNetwork, pair: PairedJoints, valid: torch.Tensor
    ) -> torch.Tensor:
        """``net``'s log ratio at the pairing's observed data and the guide's draws,
        as the ELBO follows it: minus :meth:`log_normalizer` over the simulations
        ``valid`` marks where :meth:`normalizes` says so.

        :param ContrastiveNetwork net: the estimator's network (or a copy of it).
        :param PairedJoints pair: one step's paired joints.
        :param torch.Tensor valid: ``(P, M)`` mask of the finite simulations.
        :rtype: torch.Tensor
        """
        log_ratio = net(pair.q_observed, pair.q_local, pair.q_global)
        if self.normalizes(pair):
            log_ratio = log_ratio - self.log_normalizer(net, pair, valid)
        return log_ratio

    def log_normalizer(
        self,
        net: ContrastiveNetwork,
        pair: PairedJoints,
        valid: torch.Tensor,
        local: Mapping[str, torch.Tensor] | None = None,
        global_: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        r"""
        The self-normaliser :math:`\log \frac{1}{J}\sum_j e^{s(x'_j, z, \beta)}`
        over finite simulations :math:`x'_j` of ``pair`` (with ``"others"``,
        of the other particles only), at the latents ``local`` and ``global_``
        (default: the guide's, ``pair.q_local`` and ``pair.q_global``); it is
        differentiable in them. Local latents may be given at a subset of the
        data points, ``(P, R, d)``.

        :param ContrastiveNetwork net: the estimator's network.
        :param PairedJoints pair: one step's paired joints.
        :param torch.Tensor valid: which simulations are finite, ``(P, M)``.
        :returns: ``(P, R)`` with local latents, ``(P, 1)`` without.
        :rtype: torch.Tensor
        """
        local = pair.q_local if local is None else local
        global_ = pair.q_global if global_ is None else global_
        sims = {k: v.detach().flatten(0, 1) for k, v in pair.p_observed.items()}
        rows = valid.flatten().nonzero().squeeze(-1)
        if rows.numel() == 0:
            return torch.zeros(())
        P, M = pair.num_particles, pair.roles.num_points
        others = self.leaves_own_out(P)
        # Leaving out a particle's own (and its mirror image's), draw enough that about
        # normalizer_draws remain.
        left_out = (2 if pair.mirrored else 1) if others else 0
        wanted = -(-self.normalizer_draws * P // (P - left_out))
        pick = rows[torch.randperm(rows.numel())[:wanted]]
        J = pick.numel()
        embedded = net.embed({k: v[pick] for k, v in sims.items()})
        if not local:  # the latents are the same for every point of a particle
            grid = net.classify(embedded.expand(P, J, embedded.shape[-1]), {}, global_)
        else:  # at R rows of local latents per particle (the pair's M, or a subset)
            R = next(iter(local.values())).shape[1]
            grid_x = embedded.expand(P, R, J, embedded.shape[-1]).reshape(P, R * J, -1)
            loc = {
                k: v.unsqueeze(2).expand(P, R, J, v.shape[-1]).reshape(P, R * J, -1)
                for k, v in local.items()
            }
            grid = net.classify(grid_x, loc, global_).reshape(P, R, J)
        if not others:
            return torch.logsumexp(grid, -1, keepdim=not local) - math.log(J)
        own = _own_simulations(pick // M, P, pair.mirrored)  # (P, J)
        if local:
            own = own.unsqueeze(1)  # (P, 1, J)
        count = (~own).sum(-1, keepdim=True)
        total = torch.logsumexp(grid.masked_fill(own, -math.inf), -1, keepdim=True)
        normalizer = torch.where(count > 0, total - count.clamp_min(1).log(), 0.0)
        return normalizer if not local else normalizer.squeeze(-1)

    def leaves_own_out(self, num_particles: int) -> bool:
        """Whether the self-normaliser leaves each particle's own simulations out
        with ``num_particles`` particles (``normalizer``: ``"others"`` always,
        ``"auto"`` from three particles, ``"all"`` never)."""
        if self.normalizer == "auto":
            return num_particles >= 3
        return self.normalizer == "others"

    def objectives(self, pair: PairedJoints, update: bool = True) -> RatioObjectives:
        if pair.num_particles < 2:
            raise ValueError(
                "Expected at least two vectorised particles for the contrastive ratio "
                f"estimator, actual {pair.num_particles}; use LFVI(num_particles>=2, "
                "vectorize_particles=True) or LFVI(estimator='joint')"
            )
        normalized = self.normalizes(pair)
        if normalized and self.normalizer == "others" and pair.num_particles < 3:
            raise ValueError(
                "Expected num_particles >= 3 with normalizer='others', actual "
                f"{pair.num_particles}: with two, each particle's average rests on one other "
                "particle's simulations; use more particles, or normalizer='auto' (the default) "
                "or 'all'"
            )
        net = self._net(pair)
        # Simulations without NaN or inf: (P, M), shared by training and normaliser.
        valid = finite_simulations(pair)
        loss, stats = self._training(net, pair, valid, update)
        with frozen_weights(net):
            log_ratio = self.at_data(net, pair, valid)
        checked_per_point(log_ratio, pair, "ratio network at the observed data")
        return RatioObjectives(log_ratio=log_ratio, loss=loss, stats=stats)
