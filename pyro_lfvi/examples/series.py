"""A time-series simulator with per-series local parameters and an explicit twin.

Each of ``num_series`` series has its own autoregressive coefficient (a local
latent); population location and scale of those coefficients and the process
noise are global. Two variables are observed per time step: the state and a
noisy reading of it. The model's likelihood is a simulator; :meth:`twin` is the
same model with explicit densities, on which NUTS gives the reference posterior.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ..implicit import ImplicitSite

__all__ = ["LocalSeries"]


@dataclass
class LocalSeries:
    r"""
    ``mu ~ Normal(0.5, 0.3)``, ``tau ~ LogNormal(log 0.2, 0.5)``,
    ``sigma ~ LogNormal(0, 0.5)``, and per series ``a_n ~ Normal(mu, tau)``;
    :math:`s_t = a_n s_{t-1} + \sigma \epsilon_t` from :math:`s_0 = 1`, observed
    with a reading :math:`r_t = s_t + 0.5 \eta_t`, so each series is a
    ``(length, 2)`` array (``event_shape=(length, 2)``).
    """

    num_series: int = 24
    length: int = 30
    true_mu: float = 0.5
    true_tau: float = 0.2
    true_sigma: float = 1.0
    data: torch.Tensor = field(init=False)
    true_a: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.true_a = self.true_mu + self.true_tau * torch.randn(self.num_series)
        self.data = self.simulate(self.true_a, torch.tensor(self.true_sigma))

    def simulate(self, a: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The simulator: one ``(length, 2)`` series per element of ``a``."""
        a, sigma = torch.broadcast_tensors(a, sigma)
        s = torch.ones_like(a)
        rows = []
        for _ in range(self.length):
            s = a * s + sigma * torch.randn_like(a)
            rows.append(torch.stack([s, s + 0.5 * torch.randn_like(s)], -1))
        return torch.stack(rows, -2)

    def _globals(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu = pyro.sample("mu", dist.Normal(0.5, 0.3))
        tau = pyro.sample("tau", dist.LogNormal(torch.tensor(0.2).log(), 0.5))
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 0.5))
        return mu, tau, sigma

    def model(self, data: torch.Tensor) -> None:
        mu, tau, sigma = self._globals()
        with pyro.plate("series", self.num_series):
            a = pyro.sample("a", dist.Normal(mu, tau))
            site = ImplicitSite(self.simulate, a, sigma, event_shape=(self.length, 2))
            pyro.sample("x", site, obs=data)

    def twin(self, data: torch.Tensor) -> None:
        """The same model with an explicit likelihood (for NUTS)."""
        mu, tau, sigma = self._globals()
        with pyro.plate("series", self.num_series):
            a = pyro.sample("a", dist.Normal(mu, tau))
            state = data[..., 0]
            prev = torch.cat([torch.ones_like(state[..., :1]), state[..., :-1]], -1)
            step = dist.Normal(a.unsqueeze(-1) * prev, sigma.unsqueeze(-1)).log_prob(state)
            reading = dist.Normal(state, 0.5).log_prob(data[..., 1])
            pyro.factor("x", (step + reading).sum(-1))

    def guide(self, data: torch.Tensor) -> None:
        def normal(name: str, init: float) -> dist.Normal:
            loc = pyro.param(f"{name}_loc", torch.tensor(init))
            scale = pyro.param(f"{name}_scale", torch.tensor(0.3), constraint=constraints.positive)
            return dist.Normal(loc, scale)

        pyro.sample("mu", normal("mu", 0.5))
        tau = normal("log_tau", -1.6)
        pyro.sample("tau", dist.LogNormal(tau.loc, tau.scale))
        sigma = normal("log_sigma", 0.0)
        pyro.sample("sigma", dist.LogNormal(sigma.loc, sigma.scale))
        a_loc = pyro.param("a_loc", torch.full((self.num_series,), 0.5))
        a_scale = pyro.param(
            "a_scale", torch.full((self.num_series,), 0.3), constraint=constraints.positive
        )
        with pyro.plate("series", self.num_series):
            pyro.sample("a", dist.Normal(a_loc, a_scale))

    def reference(
        self, num_samples: int = 1000, warmup: int = 500
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Posterior means and sds by NUTS on :meth:`twin` (same layout as :meth:`fitted`)."""
        kernel = pyro.infer.NUTS(self.twin)
        mcmc = pyro.infer.MCMC(
            kernel, num_samples=num_samples, warmup_steps=warmup, disable_progbar=True
        )
        with torch.random.fork_rng():
            mcmc.run(self.data)
        draws = mcmc.get_samples()
        values = {
            "mu": draws["mu"],
            "log_tau": draws["tau"].log(),
            "log_sigma": draws["sigma"].log(),
            "a": draws["a"],
        }
        return {k: (v.mean(0).double(), v.std(0).double()) for k, v in values.items()}

    def fitted(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        def get(name: str) -> torch.Tensor:
            return pyro.param(name).detach().double()

        return {
            name: (get(f"{name}_loc"), get(f"{name}_scale"))
            for name in ("mu", "log_tau", "log_sigma", "a")
        }

    exact = reference
