"""Training controls of :class:`~pyro_lfvi.LFVI` and the check of model parameters.

:class:`TrainingControls` decides what one backward pass trains
(``warmup_steps``, ``discriminator_steps``, the adversarial generator term,
the implicit-prior classifiers), owns those classifiers, runs the joint
classifier's own updates under a separate ``discriminator_optim``, and warns
once about model parameters that receive no gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyro
import torch
from pyro.optim import PyroOptim
from torch import nn

from .errors import LFVIWarning
from .global_ratio import PriorShapeClassifier
from .history import History
from .joint import JointRatioEstimator
from .pairing import PairedJoints
from .ratio import RatioEstimator

__all__ = ["StepObjectives", "TrainingControls"]


def _zero() -> torch.Tensor:
    return torch.zeros(())


class GlobalSummary(NamedTuple):
    """One step's figures on the guide's globals for the
    :class:`~pyro_lfvi.TrainingMonitor`, component by component: the mean
    (``centre``) and sd (``spread``) over particles, and, unconstrained, the
    variance over particles (``guide_var``), that of prior draws
    (``prior_var``) and how often the guide's draws fall beyond the prior's
    (``beyond_prior``; :class:`~pyro_lfvi.step_checks.GlobalSpreads`)."""

    centre: list[float]
    spread: list[float]
    guide_var: list[float]
    prior_var: list[float]
    beyond_prior: list[float]


@dataclass
class StepObjectives:
    """Everything one LFVI step computes, returned rather than stored.

    ``elbo`` carries gradients to the guide; ``ratio_loss``, ``prior_loss``
    and ``generator_loss`` train the ratio estimator, the implicit-prior
    classifiers and (adversarially) the model's parameters.
    """

    elbo: torch.Tensor = field(default_factory=_zero)
    ratio_loss: torch.Tensor = field(default_factory=_zero)
    prior_loss: torch.Tensor = field(default_factory=_zero)
    generator_loss: torch.Tensor = field(default_factory=_zero)
    stats: dict[str, float] = field(default_factory=dict)
    global_summary: GlobalSummary | None = None
    model_params: list[str] = field(default_factory=list)


class TrainingControls:
    """Mixin of :class:`~pyro_lfvi.LFVI`: what trains when, and with what."""

    history: History
    warmup_steps: int
    discriminator_steps: int
    discriminator_optim: PyroOptim | None
    discriminator_name: str
    estimator: RatioEstimator | None
    prior_classifiers: dict[str, nn.Module]
    model_params: str | None
    _model_params_checked: bool

    def _pair(
        self,
        model: Callable[..., object],
        guide: Callable[..., object],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> list[PairedJoints]:
        raise NotImplementedError

    def _surrogate(self, out: StepObjectives) -> torch.Tensor:
        """What one backward pass differentiates: -ELBO (and the adversarial
        generator term) for the guide and model, the scoring rules for the
        ratio estimators, each only where it should train."""
        if self.history.num_steps < self.warmup_steps:
            surrogate = -out.elbo.detach()
        else:
            surrogate = -out.elbo + out.generator_loss
        # The implicit-prior classifiers train in every step with the SVI
        # optimiser, warm-up included; the discriminator too, unless it has
        # its own optimiser or is fixed.
        surrogate = surrogate + out.prior_loss
        if self.discriminator_optim is None and self.discriminator_steps > 0:
            surrogate = surrogate + out.ratio_loss
        return surrogate

    def _train_discriminator(
        self,
        model: Callable[..., object],
        guide: Callable[..., object],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """``discriminator_steps`` updates by ``discriminator_optim``, if given."""
        if self.discriminator_optim is None:
            return
        for _ in range(self.discriminator_steps):
            with torch.no_grad():
                pairs = self._pair(model, guide, args, kwargs)
            estimator = self.estimator
            assert isinstance(estimator, JointRatioEstimator)
            net = estimator.network(pairs[0])
            d_loss = torch.zeros(())
            for pair in pairs:
                logits_p, logits_t = estimator.training_logits(net, pair)
                d_loss = d_loss + estimator.ratio_loss(logits_p, logits_t) / len(pairs)
            params = [p for p in net.parameters() if p.requires_grad]
            for p in params:
                p.grad = None
            d_loss.backward()
            self.discriminator_optim(params)
            for p in params:
                p.grad = None

    def _prior_classifier(self, name: str, size: int) -> nn.Module:
        """The shape classifier of an implicit global prior (see global_ratio)."""
        if name not in self.prior_classifiers:
            self.prior_classifiers[name] = PriorShapeClassifier(size)
        module_name = f"{self.discriminator_name}_prior_{name}"
        return pyro.module(module_name, self.prior_classifiers[name], update_module_params=True)

    def _check_model_params(self, names: list[str]) -> None:
        """Warn once about model parameters that the last backward pass missed."""
        self._model_params_checked = True
        store = pyro.get_param_store()
        unconstrained = dict(store.named_parameters())
        missed = []
        for name in names:
            if name not in store:
                continue
            grad = unconstrained[name].grad
            if grad is None or not bool((grad != 0).any()):
                missed.append(name)
        if not missed:
            return
        if self.model_params == "adversarial":
            how = (
                "their simulations are not differentiable in them: declare the simulator "
                "ImplicitSite(..., reparameterized=True) and keep it in torch"
            )
        else:
            how = (
                "by default LFVI trains only the guide. Learn them either as global latents "
                "with a point-mass guide (pyro.sample with a prior, and AutoDelta: "
                "variational EM), or adversarially with LFVI(model_params='adversarial') "
                "if the simulator is differentiable"
            )
        warnings.warn(
            f"Model parameters {missed} receive no gradient from LFVI, so they stay where "
            f"they were initialised: {how}.",
            LFVIWarning,
            stacklevel=4,
        )
