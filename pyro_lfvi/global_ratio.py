r"""A second ratio estimator for global latents whose prior is implicit.

When a global :math:`\beta_i` has an :class:`~pyro_lfvi.ImplicitSite` prior
(a simulator of the prior, no density) but an explicit guide, the ELBO's
:math:`\log p(\beta_i) - \log q(\beta_i)` needs :math:`\log p(\beta_i)`. It
is estimated in two parts, as in the adaptive contrast of adversarial
variational Bayes:

.. math::

    \log p(\beta_i) = \log \hat r(\beta_i) + c(\tilde u_i),

where :math:`\hat r` is a Normal, in the unconstrained space of the site's
support, fitted at every step to ``num_draws`` fresh draws of the prior (per
particle, so that the prior may depend on other globals), and :math:`c` is a
small classifier trained with the logistic loss to tell those prior draws
from draws of :math:`\hat r`, both whitened by the fitted moments
(:math:`\tilde u`). For a prior that is Normal in the unconstrained space
:math:`c` is zero; otherwise it learns the difference in shape, which is much
easier to estimate than the whole prior-to-guide ratio. The guide's own
:math:`\log q(\beta_i)` stays exact.

References

[1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
    Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017)
[2] `Adversarial Variational Bayes`, Lars Mescheder, Sebastian Nowozin,
    Andreas Geiger (ICML 2017), Section 3.3 (adaptive contrast)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributions import biject_to

from .discriminator import mlp

__all__ = ["PriorContrast", "PriorShapeClassifier", "fit_moments", "prior_contrast"]


@dataclass
class PriorContrast:
    """The pieces of :math:`\\log p(\\beta_i)` for one implicit-prior global.

    ``log_reference`` (a scalar, summed over particles) carries gradients to
    the guide through the guide's value; ``value`` ``(rows, d)`` is the
    guide's whitened value (with gradients), ``prior`` and ``reference``
    ``(rows, d)`` the whitened training draws of each class (detached).
    """

    log_reference: torch.Tensor
    value: torch.Tensor
    prior: torch.Tensor
    reference: torch.Tensor


def fit_moments(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sd over the leading dim of ``draws``, the sd kept positive."""
    loc = draws.mean(0)
    return loc, draws.std(0).clamp_min(1e-6 * (1.0 + loc.abs()))


def prior_contrast(site: Any, num_draws: int) -> PriorContrast:
    """
    Fit the Normal reference to fresh draws of an implicit prior site (whose
    ``value`` is the guide's replayed draw) and whiten every input of
    :math:`c`.

    :param dict site: the model's trace node of the global site.
    :param int num_draws: prior draws per particle (at least 2).
    """
    fn = site["fn"]
    value = site["value"]
    transform = biject_to(fn.support)
    with torch.no_grad():
        draws = transform.inv(fn.sample(torch.Size([num_draws])))
        loc, scale = fit_moments(draws)
    u = transform.inv(value)
    # One density per draw, as the bijection's log-determinant is.
    normal = torch.distributions.Independent(
        torch.distributions.Normal(loc, scale), len(fn.event_shape)
    )
    log_det = transform.log_abs_det_jacobian(u, value)
    log_ref = normal.log_prob(u) - log_det
    size = max(int(torch.Size(fn.event_shape).numel()), 1)

    def rows(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, size)

    prior = (draws - loc) / scale
    return PriorContrast(
        log_reference=log_ref.sum(),
        value=rows((u - loc) / scale),
        prior=rows(prior),
        reference=rows(torch.randn_like(prior)),
    )


class PriorShapeClassifier(nn.Module):
    """The classifier :math:`c`: an ELU MLP from a whitened value to a logit."""

    def __init__(self, size: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = mlp(size, (hidden, hidden))

    def forward(self, whitened: torch.Tensor) -> torch.Tensor:
        return self.net(whitened).squeeze(-1)
