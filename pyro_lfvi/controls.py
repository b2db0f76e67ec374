"""Training controls of :class:`~pyro_lfvi.LFVI` and the check of model parameters.

:class:`TrainingControls` decides what one backward pass trains
(``warmup_steps``, ``discriminator_steps``, the adversarial generator term,
the implicit-prior classifiers), runs the discriminator-only updates of a
separate ``discriminator_optim``, and warns once about model parameters that
receive no gradient.
"""

from __future__ import annotations

import warnings
from typing import Any

import pyro
import torch
from pyro.optim import PyroOptim

from .diagnostics import LFVIWarning
from .estimator import RatioEstimation
from .pairing import PairedJoints
from .ratio_losses import RatioLoss

__all__ = ["TrainingControls"]


class TrainingControls(RatioEstimation):
    """Mixin of :class:`~pyro_lfvi.LFVI`: what trains when, and with what."""

    history: list[dict[str, float]]
    warmup_steps: int
    discriminator_steps: int
    discriminator_optim: PyroOptim | None
    ratio_loss: RatioLoss
    model_params: str | None
    _generator_loss: torch.Tensor
    _prior_loss: torch.Tensor
    _model_param_names: list[str]
    _model_params_checked: bool

    def _pair(self, model: Any, guide: Any, args: Any, kwargs: Any) -> list[PairedJoints]:
        raise NotImplementedError

    def _surrogate(self, elbo: torch.Tensor, d_loss: torch.Tensor) -> torch.Tensor:
        """What one backward pass differentiates: -ELBO (and the adversarial
        generator term) for the guide and model, the scoring rules for the
        ratio estimators, each only where it should train."""
        if len(self.history) < self.warmup_steps:
            surrogate = -elbo.detach()
        else:
            surrogate = -elbo + self._generator_loss
        # The implicit-prior classifiers train in every step with the SVI
        # optimiser, warm-up included; the discriminator too, unless it has
        # its own optimiser or is fixed.
        surrogate = surrogate + self._prior_loss
        if self.discriminator_optim is None and self.discriminator_steps > 0:
            surrogate = surrogate + d_loss
        return surrogate

    def _train_discriminator(self, model: Any, guide: Any, args: Any, kwargs: Any) -> None:
        """``discriminator_steps`` updates by ``discriminator_optim``, if given."""
        if self.discriminator_optim is None:
            return
        for _ in range(self.discriminator_steps):
            with torch.no_grad():
                pairs = self._pair(model, guide, args, kwargs)
            net = self._discriminator(pairs[0])
            d_loss = torch.zeros(())
            for pair in pairs:
                logits_p, logits_t = self._training_logits(net, pair)
                d_loss = d_loss + self.ratio_loss(logits_p, logits_t) / len(pairs)
            params = [p for p in net.parameters() if p.requires_grad]
            for p in params:
                p.grad = None
            d_loss.backward()
            self.discriminator_optim(params)
            for p in params:
                p.grad = None

    def _check_model_params(self) -> None:
        """Warn once about model parameters that the last backward pass missed."""
        self._model_params_checked = True
        store = pyro.get_param_store()
        missed = []
        for name in self._model_param_names:
            if name not in store:
                continue
            param: Any = store[name]
            grad = param.unconstrained().grad
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
