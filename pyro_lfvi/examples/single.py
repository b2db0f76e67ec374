"""Examples with a single observation (N = 1) and exact posteriors.

A single observation is the setting of the paper's Lotka-Volterra experiment
and of every ABC benchmark: the model has no data plate, and the ratio
estimator must learn how that one (high-dimensional) observation depends on
the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ..implicit import ImplicitSite

__all__ = ["AR1Series", "GaussianLinear"]

# sbibm 1.1.0, task gaussian_linear, files/num_observation_1/observation.csv.
GAUSSIAN_LINEAR_OBSERVATION_1 = (
    1.0471346,
    0.5566712,
    -0.23618454,
    0.027879834,
    -1.0051446,
    -0.007930746,
    0.06117077,
    -0.29286885,
    -0.38539964,
    0.2449614,
)


@dataclass
class AR1Series:
    r"""
    One autoregressive series of ``length`` steps: ``phi ~ Normal(0, 1)``,
    :math:`x_t = \phi x_{t-1} + \epsilon_t`, :math:`x_0 = 0`,
    :math:`\epsilon_t \sim N(0, 1)`, the simulator observed once
    (``event_shape=(length,)``, no data plate).

    The prior lets :math:`|\phi| > 1`, where the series explodes: the
    simulations the ratio estimator trains on span many orders of magnitude.
    The exact posterior is Normal with precision
    :math:`1 + \sum_t x_{t-1}^2` and mean :math:`\sum_t x_t x_{t-1}` divided
    by it.
    """

    length: int = 20
    true_phi: float = 0.6
    data: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.data = self.simulate(torch.tensor(self.true_phi))

    def simulate(self, phi: torch.Tensor) -> torch.Tensor:
        """The simulator: ``length`` steps of the AR(1) recursion per ``phi``."""
        x = torch.zeros_like(phi)
        steps = []
        for _ in range(self.length):
            x = phi * x + torch.randn_like(phi)
            steps.append(x)
        return torch.stack(steps, -1)

    def model(self, data: torch.Tensor) -> None:
        phi = pyro.sample("phi", dist.Normal(0.0, 1.0))
        pyro.sample("x", ImplicitSite(self.simulate, phi, event_shape=(self.length,)), obs=data)

    def guide(self, data: torch.Tensor) -> None:
        loc = pyro.param("phi_loc", torch.tensor(0.0))
        scale = pyro.param("phi_scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("phi", dist.Normal(loc, scale))

    def exact(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        x = self.data.double()
        prev = torch.cat([x.new_zeros(1), x[:-1]])
        precision = 1.0 + (prev**2).sum()
        return {"phi": ((x * prev).sum() / precision, precision**-0.5)}

    def fitted(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {"phi": (pyro.param("phi_loc").detach(), pyro.param("phi_scale").detach())}


@dataclass
class GaussianLinear:
    r"""
    sbibm's ``gaussian_linear`` task: :math:`\theta \sim N(0, 0.1 I_{10})`,
    :math:`x \mid \theta \sim N(\theta, 0.1 I_{10})`, one observation (by
    default sbibm's observation 1). The exact posterior is
    :math:`N(x / 2, 0.05 I)`.

    :meth:`guide` is a mean-field Normal with the prior's moments at the start.
    Like the tasks of :mod:`pyro_lfvi.examples.sbibm`, it offers :meth:`prior`,
    :meth:`simulate`, :attr:`data`, :meth:`reference_samples` and
    :meth:`guide_samples` to benchmark scripts.
    """

    dim: int = 10
    data: torch.Tensor = field(default_factory=lambda: torch.tensor(GAUSSIAN_LINEAR_OBSERVATION_1))

    def prior(self) -> dist.TorchDistribution:
        """The prior over the flat parameter vector, :math:`N(0, 0.1 I)`."""
        return dist.Normal(torch.zeros(self.dim), 0.1**0.5).to_event(1)

    def simulate(self, theta: torch.Tensor) -> torch.Tensor:
        """The simulator: ``(..., dim)`` parameters to ``(..., dim)`` data."""
        return theta + 0.1**0.5 * torch.randn_like(theta)

    def model(self, data: torch.Tensor) -> None:
        theta = pyro.sample("theta", self.prior())
        site = ImplicitSite(self.simulate, theta, event_shape=(self.dim,), param_event_dims=1)
        pyro.sample("x", site, obs=data)

    def guide(self, data: torch.Tensor) -> None:
        loc = pyro.param("theta_loc", torch.zeros(self.dim))
        scale = pyro.param(
            "theta_scale", torch.full((self.dim,), 0.1**0.5), constraint=constraints.positive
        )
        pyro.sample("theta", dist.Normal(loc, scale).to_event(1))

    def exact(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {"theta": (self.data.double() / 2, torch.full((self.dim,), 0.05**0.5).double())}

    def fitted(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {"theta": (pyro.param("theta_loc").detach(), pyro.param("theta_scale").detach())}

    def exact_samples(self, num_samples: int) -> torch.Tensor:
        mean, sd = self.exact()["theta"]
        return (mean + sd * torch.randn(num_samples, self.dim, dtype=torch.float64)).float()

    def reference_samples(self, num: int) -> torch.Tensor:
        """``(num, dim)`` exact posterior draws (the posterior is Gaussian)."""
        return self.exact_samples(num)

    def guide_samples(self, num: int) -> torch.Tensor:
        """``(num, dim)`` draws of the fitted guide."""
        loc, scale = self.fitted()["theta"]
        return loc + scale * torch.randn(num, self.dim)
