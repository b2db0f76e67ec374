"""
The end-of-training check's copy of the ratio estimator
(:func:`~pyro_lfvi.estimator_check.check_ratio_estimator`): the bank of
simulations drawn at the final guide, the estimator's own training loss on
them, training the copy with early stopping, and the log ratios at the observed
data of the online network and of the copy, as the ELBO evaluates them, that
:func:`~pyro_lfvi.reweighted_globals` reweights by.

References

[1] Tran, D., Ranganath, R. and Blei, D. M. (2017). Hierarchical Implicit
    Models and Likelihood-Free Variational Inference. NIPS 2017.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .contrastive import ContrastiveNetwork, ContrastiveRatioEstimator, finite_simulations
from .joint import JointRatioEstimator
from .likelihood import LikelihoodEstimator, MixtureDensityNetwork
from .reweighting import LogRatio

if TYPE_CHECKING:
    from .elbo import LFVI
    from .pairing import PairedJoints

PAIRS_PER_UPDATE = 4
"""Training steps' worth of simulations in each update of the copy; it is
evaluated for early stopping every 100 updates and stops after 5 without
improvement."""


Checked = ContrastiveRatioEstimator | JointRatioEstimator | LikelihoodEstimator


class DensityLogLikelihood:
    """The likelihood estimator's density seen as :func:`~pyro_lfvi.curvature.curvature`
    sees a contrastive network (:class:`~pyro_lfvi.curvature.LogLikelihood`)."""

    theta = staticmethod(ContrastiveNetwork.theta)

    def __init__(self, estimator: LikelihoodEstimator, net: MixtureDensityNetwork) -> None:
        self.estimator, self.net = estimator, net

    def embed(self, observed: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.estimator.observed_features(observed)

    def classify(
        self,
        embedded: torch.Tensor,
        local: Mapping[str, torch.Tensor],
        global_: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        return self.net(embedded, self.theta(local, global_, embedded.shape[:-1]))

    def at_data(self, pair: PairedJoints) -> torch.Tensor:
        """The density's log likelihood of the pairing's observed data at the
        guide's draws, as the ELBO evaluates it."""
        observed = self.embed(pair.q_observed)
        return self.classify(observed, pair.q_local, pair.q_global)


def contrastive_at_data(estimator: ContrastiveRatioEstimator, net: ContrastiveNetwork) -> LogRatio:
    """``net``'s log ratio at a pairing's observed data and the guide's draws, as
    the ELBO evaluates it (:meth:`~pyro_lfvi.ContrastiveRatioEstimator.at_data`),
    self-normalised over the same simulations for any network."""

    def at_data(pair: PairedJoints) -> torch.Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return estimator.at_data(net, pair, finite_simulations(pair))

    return at_data


def estimator_loss(
    estimator: Checked, net: nn.Module, pair: PairedJoints, scored: bool = False
) -> torch.Tensor:
    """The estimator's own training loss of ``net`` on one pairing (``scored``:
    the loss the check compares, the same but for the likelihood estimator's,
    the pairwise log loss of its log ratio)."""
    if isinstance(estimator, JointRatioEstimator):
        return estimator.ratio_loss(*estimator.training_logits(net, pair))
    if isinstance(estimator, LikelihoodEstimator):
        assert isinstance(net, MixtureDensityNetwork)
        if scored:
            return estimator.pairwise_loss(net, pair)
        return estimator.simulation_loss(net, pair)
    assert isinstance(net, ContrastiveNetwork)
    return estimator._training(net, pair, finite_simulations(pair), update=False)[0]


def online_network(estimator: object) -> nn.Module | None:
    """The network :func:`~pyro_lfvi.estimator_check.check_ratio_estimator`
    checks: the contrastive estimator's, the likelihood estimator's or the joint
    classifier's, once built; None for an estimator not yet trained or of
    another kind."""
    if isinstance(estimator, ContrastiveRatioEstimator | LikelihoodEstimator):
        return estimator.network
    if isinstance(estimator, JointRatioEstimator):
        return estimator.discriminator
    return None


def bank(
    elbo: LFVI,
    model: Callable[..., object],
    guide: Callable[..., object],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    num_batches: int,
) -> list[PairedJoints]:
    """``num_batches`` pairings drawn as training steps would draw them (one
    per step when particles are vectorised, else one per particle)."""
    pairs: list[PairedJoints] = []
    with torch.no_grad(), torch.random.fork_rng():
        while len(pairs) < num_batches:
            pairs.extend(elbo._pair(model, guide, args, kwargs))
    return pairs[:num_batches]


def mean_loss(estimator: Checked, net: nn.Module, pairs: list[PairedJoints]) -> float:
    """Mean training loss over ``pairs``, with the same contrasts for any network."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        total = sum(float(estimator_loss(estimator, net, p, scored=True)) for p in pairs)
    return total / len(pairs)


def train_copy(
    estimator: Checked,
    start: nn.Module,
    train: list[PairedJoints],
    val: list[PairedJoints],
    max_updates: int,
    lr: float,
    stop_ahead: float | None,
) -> tuple[nn.Module, int, bool]:
    """Train a copy of ``start`` on ``train`` with Adam, keeping the state with the
    best loss on ``val`` (evaluated every 100 updates; 5 without improvement stop
    it); with ``stop_ahead``, stop once that far below ``start``'s loss. Returns
    the copy (``start`` itself if training never helped), the updates and
    whether it stopped ahead."""
    refined = copy.deepcopy(start)
    params = [p for n, p in refined.named_parameters() if not n.endswith("standardization")]
    for p in params:
        p.requires_grad_(True)
    optim = torch.optim.Adam(params, lr=lr)
    first = best = mean_loss(estimator, refined, val)
    best_state, stale, updates, ahead = None, 0, 0, False
    with torch.random.fork_rng(), torch.enable_grad():  # also when called under no_grad
        torch.manual_seed(1)
        order = torch.randint(len(train), (max_updates, PAIRS_PER_UPDATE))
        for updates in range(1, max_updates + 1):
            picks = [train[int(i)] for i in order[updates - 1]]
            loss = torch.stack([estimator_loss(estimator, refined, p) for p in picks]).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            if updates % 100 == 0:
                current = mean_loss(estimator, refined, val)
                if current < best - 1e-4:
                    best, stale = current, 0
                    best_state = copy.deepcopy(refined.state_dict())
                    if stop_ahead is not None and first - best > stop_ahead:
                        ahead = True
                        break  # far ahead on validation: more updates would only cost time
                else:
                    stale += 1
                    if stale >= 5:
                        break
    if best_state is None:  # further training never helped
        return start, updates, False
    refined.load_state_dict(best_state)
    return refined, updates, ahead


def contrastive_log_ratios(
    estimator: ContrastiveRatioEstimator,
    online: nn.Module,
    refined: nn.Module,
    ahead: bool,
    train: list[PairedJoints],
    val: list[PairedJoints],
    max_updates: int,
    lr: float,
) -> Callable[[], tuple[LogRatio, LogRatio]]:
    """:attr:`EstimatorCheck.log_ratios` for the contrastive estimator: the online
    network as it is now (copied, should training go on after the check) and the
    copy, trained to the end on the first call if it stopped early, clearly ahead."""
    snapshot = copy.deepcopy(online)
    if refined is online:
        refined = snapshot

    @functools.cache
    def finished() -> tuple[LogRatio, LogRatio]:
        copied = refined
        if ahead:
            copied = train_copy(estimator, refined, train, val, max_updates, lr, None)[0]
        assert isinstance(snapshot, ContrastiveNetwork)
        assert isinstance(copied, ContrastiveNetwork)
        at_data = functools.partial(contrastive_at_data, estimator)
        return at_data(snapshot), at_data(copied)

    return finished
