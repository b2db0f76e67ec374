r"""sbibm's ``sir`` task: a deterministic SIR epidemic observed through noisy counts (N = 1).

A population of a million with one infected person follows the SIR equations

.. math::

    \dot S = -\beta S I / N, \qquad \dot I = \beta S I / N - \gamma I, \qquad
    \dot R = \gamma I

for 160 days; on days 0, 17, ..., 153 a survey of 1,000 people counts the
infected, :math:`x_k \sim \mathrm{Binomial}(1000, I(t_k) / N)`. The contact
rate :math:`\beta` and recovery rate :math:`\gamma` have LogNormal priors.
On observation 1 the ten counts pin the contact rate down to 2% of its value
(a posterior 25 times narrower than the prior, in log space) and the recovery
rate to 7% (3 times narrower), which the ratio estimator must resolve.

The simulator integrates the equations with a fixed-step fourth-order
Runge-Kutta scheme in double precision, vectorised over parameters (sbibm
solves them with DifferentialEquations.jl);
:meth:`~pyro_lfvi.examples.SIR.log_likelihood` is the
explicit Binomial likelihood for checks. Observation 1 is inlined and the
first 5,000 of sbibm's reference posterior samples for it ship in
``pyro_lfvi/examples/data/``; both re-implemented from sbibm 1.1.0 [1].

References

[1] `Benchmarking Simulation-Based Inference`, Jan-Matthis Lueckmann, Jan
    Boelts, David S. Greenberg, Pedro J. Goncalves, Jakob H. Macke (AISTATS
    2021)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import ExpTransform

from ..implicit import ImplicitSite
from .sbibm import ReferenceTask

__all__ = ["SIR", "infected_curve"]

# sbibm 1.1.0, task sir, files/num_observation_1/observation.csv.
SIR_OBSERVATION_1 = (0.0, 1.0, 352.0, 40.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0)

POPULATION = 1_000_000.0
SURVEY = 1000
DAYS = 160
SURVEY_EVERY = 17


def infected_curve(rates: torch.Tensor, steps_per_day: int = 4) -> torch.Tensor:
    r"""
    The fraction infected, :math:`I(t) / N`, on days ``0, 1, ..., 160`` of the
    SIR equations from :math:`S = N - 1`, :math:`I = 1`, :math:`R = 0`
    (:math:`N = 10^6`), by fourth-order Runge-Kutta with ``steps_per_day``
    steps a day, in double precision.

    :param torch.Tensor rates: ``(..., 2)``: contact rate :math:`\beta` and
        recovery rate :math:`\gamma`, per day.
    :returns: ``(..., 161)``, in the dtype of ``rates``.
    :rtype: torch.Tensor
    """
    beta, gamma = rates.double().unbind(-1)
    s = torch.full_like(beta, (POPULATION - 1.0) / POPULATION)
    i = torch.full_like(beta, 1.0 / POPULATION)
    h = 1.0 / steps_per_day

    def slope(s: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = beta * s * i
        return -new, new - gamma * i

    out = [i]
    for _ in range(DAYS):
        for _ in range(steps_per_day):
            ds1, di1 = slope(s, i)
            ds2, di2 = slope(s + 0.5 * h * ds1, i + 0.5 * h * di1)
            ds3, di3 = slope(s + 0.5 * h * ds2, i + 0.5 * h * di2)
            ds4, di4 = slope(s + h * ds3, i + h * di3)
            s = s + h / 6.0 * (ds1 + 2.0 * ds2 + 2.0 * ds3 + ds4)
            i = i + h / 6.0 * (di1 + 2.0 * di2 + 2.0 * di3 + di4)
        out.append(i)
    return torch.stack(out, -1).to(rates.dtype)


@dataclass
class SIR(ReferenceTask):
    r"""
    sbibm's ``sir`` task: :math:`\beta \sim \mathrm{LogNormal}(\log 0.4, 0.5)`,
    :math:`\gamma \sim \mathrm{LogNormal}(\log 0.125, 0.2)`, and ten survey
    counts :math:`x_k \sim \mathrm{Binomial}(1000, I(t_k) / N)` on days
    :math:`t_k = 0, 17, \ldots, 153` of the SIR equations (see
    :mod:`pyro_lfvi.examples.epidemic`), one observation (by default sbibm's
    observation 1). Not to be confused with
    :class:`~pyro_lfvi.examples.sir.RegionalSIR`, a stochastic epidemic with
    local rates.

    :meth:`guide` is a full-rank Gaussian on :math:`(\log \beta, \log \gamma)`
    started at the prior. Like the other sbibm tasks of
    :mod:`pyro_lfvi.examples`, it offers :meth:`prior`, :meth:`simulate`,
    :attr:`data`, :meth:`reference_samples` and :meth:`guide_samples` to
    benchmark scripts, and :meth:`log_likelihood`, the explicit likelihood.

    Example::

        problem = SIR()
        svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), LFVI())
        svi.step(problem.data)

    :param torch.Tensor data: the ten counts, ``(10,)`` (default sbibm's observation 1).
    :param int steps_per_day: Runge-Kutta steps per day (default 4: the
        infected curve then differs from one at 40 steps a day by at most
        5e-6 of its peak near the posterior, 3e-4 at a contact rate of 1.5).
    """

    dim = 2
    data_dim = 10
    reference_file = "sir_reference_posterior_1.csv"

    data: torch.Tensor = field(default_factory=lambda: torch.tensor(SIR_OBSERVATION_1))
    steps_per_day: int = 4

    def __post_init__(self) -> None:
        if self.data.shape != (self.data_dim,):
            raise ValueError(
                f"Expected data of shape ({self.data_dim},) (ten survey counts), "
                f"actual {tuple(self.data.shape)}"
            )
        if self.steps_per_day < 1:
            raise ValueError(f"Expected steps_per_day >= 1, actual {self.steps_per_day}")

    def prior(self) -> dist.TorchDistribution:
        r"""LogNormal priors on :math:`(\beta, \gamma)`."""
        loc = torch.tensor([math.log(0.4), math.log(0.125)])
        return dist.LogNormal(loc, torch.tensor([0.5, 0.2])).to_event(1)

    def survey_probs(self, rates: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` rates to the ``(..., 10)`` infected fractions on the survey days."""
        curve = infected_curve(rates, self.steps_per_day)
        return curve[..., :DAYS:SURVEY_EVERY].clamp(0.0, 1.0)

    def simulate(self, rates: torch.Tensor) -> torch.Tensor:
        """The simulator: ``(..., 2)`` rates to ``(..., 10)`` survey counts."""
        with torch.no_grad():
            return dist.Binomial(SURVEY, probs=self.survey_probs(rates)).sample()

    def log_likelihood(self, rates: torch.Tensor) -> torch.Tensor:
        """The explicit log likelihood of :attr:`data` at ``(..., 2)`` rates."""
        probs = self.survey_probs(rates).double()
        counts = self.data.to(probs)
        return dist.Binomial(SURVEY, probs=probs).log_prob(counts).sum(-1).to(rates.dtype)

    def model(self, data: torch.Tensor) -> None:
        rates = pyro.sample("rates", self.prior())
        site = ImplicitSite(self.simulate, rates, event_shape=(self.data_dim,), param_event_dims=1)
        pyro.sample("x", site, obs=data)

    def guide(self, data: torch.Tensor) -> None:
        pyro.sample("rates", self.guide_distribution())

    def guide_distribution(self) -> dist.TorchDistribution:
        """The full-rank Gaussian guide on the log rates, started at the prior."""
        loc = pyro.param("sir_loc", torch.tensor([math.log(0.4), math.log(0.125)]))
        scale_tril = pyro.param(
            "sir_scale_tril",
            torch.diag(torch.tensor([0.5, 0.2])),
            constraint=constraints.lower_cholesky,
        )
        return dist.TransformedDistribution(
            dist.MultivariateNormal(loc, scale_tril=scale_tril), [ExpTransform()]
        )
