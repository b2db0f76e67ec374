"""A time-series simulator with per-series local parameters and an explicit twin.

Each of ``num_series`` series has its own autoregressive coefficient (a local
latent); population location and scale of those coefficients and the process
noise are global. Two variables are observed per time step: the state and a
noisy reading of it. The model's likelihood is a simulator;
:meth:`~pyro_lfvi.examples.LocalSeries.twin` is the same model with explicit
densities, on which NUTS gives the reference posterior.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ..implicit import ImplicitSite
from .structured import coupled_locals, gaussian_chain, guide_moments

__all__ = ["LocalSeries", "PooledSeries"]


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

    def structured_guide(self, data: torch.Tensor) -> None:
        """
        A Gaussian guide with the posterior's dependence structure (see
        :mod:`.structured`): full-rank on ``(mu, log tau, log sigma)``, and
        each ``a_n`` with a mean linear in the globals' deviations and a log sd
        linear in them (the funnel of ``tau``). Its moments come from
        :meth:`guide_moments`.
        """
        sites = [("mu", False), ("tau", True), ("sigma", True)]
        deviation = gaussian_chain("globals", sites, (0.5, -1.6, 0.0), 0.3)
        loc, scale = coupled_locals("a", deviation, self.num_series, 0.5, 0.3)
        with pyro.plate("series", self.num_series):
            pyro.sample("a", dist.Normal(loc, scale))

    def guide_moments(
        self, guide: Callable[[torch.Tensor], None], num_samples: int = 4000
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Means and sds of ``guide``'s draws, in the layout of :meth:`reference`."""
        sites = {
            "mu": lambda d: d["mu"],
            "log_tau": lambda d: d["tau"].log(),
            "log_sigma": lambda d: d["sigma"].log(),
            "a": lambda d: d["a"],
        }
        return guide_moments(guide, self.data, sites, num_samples)

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


@dataclass
class PooledSeries:
    r"""
    The simulator of :class:`LocalSeries` with globals only, the paper's
    large-N regime: ``num_series`` iid series share ``a ~ Normal(0.5, 0.3)``
    and ``sigma ~ LogNormal(0, 0.5)``; each is a ``(length, 2)`` array of
    states :math:`s_t = a s_{t-1} + \sigma \epsilon_t` and readings
    :math:`s_t + 0.5 \eta_t`. Training subsamples ``batch_size`` series a step.
    :meth:`reference` runs NUTS on :meth:`twin`, the explicit version;
    :meth:`exact` integrates the twin's posterior: given :math:`\sigma` the
    coefficient's posterior is Normal (the states are observed), and a grid
    over :math:`\log \sigma` does the rest, from three sums of the data, so
    it takes the same time for any number of series.
    """

    num_series: int = 2000
    length: int = 30
    batch_size: int | None = 100
    true_a: float = 0.5
    true_sigma: float = 1.0
    data: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self._series = LocalSeries(num_series=1, length=self.length)
        a = torch.full((self.num_series,), self.true_a)
        self.data = self.simulate(a, torch.tensor(self.true_sigma))

    def simulate(self, a: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The simulator of :class:`LocalSeries`: one ``(length, 2)`` series per element."""
        return self._series.simulate(a, sigma)

    A_PRIOR: ClassVar[tuple[float, float]] = (0.5, 0.3)
    """Mean and sd of the Normal prior of ``a``."""
    LOG_SIGMA_PRIOR: ClassVar[tuple[float, float]] = (0.0, 0.5)
    """Mean and sd of the Normal prior of ``log sigma``."""

    def _globals(self) -> tuple[torch.Tensor, torch.Tensor]:
        a = pyro.sample("a", dist.Normal(*self.A_PRIOR))
        sigma = pyro.sample("sigma", dist.LogNormal(*self.LOG_SIGMA_PRIOR))
        return a, sigma

    @staticmethod
    def _states(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The observed states and each one's predecessor (1 before the first)."""
        state = data[..., 0]
        return state, torch.cat([torch.ones_like(state[..., :1]), state[..., :-1]], -1)

    def model(self, data: torch.Tensor) -> None:
        a, sigma = self._globals()
        with pyro.plate("series", self.num_series, subsample_size=self.batch_size) as idx:
            site = ImplicitSite(self.simulate, a, sigma, event_shape=(self.length, 2))
            pyro.sample("x", site, obs=data[idx])

    def twin(self, data: torch.Tensor) -> None:
        """The same model with an explicit likelihood (for NUTS), on all series."""
        a, sigma = self._globals()
        state, prev = self._states(data)
        step = dist.Normal(a * prev, sigma).log_prob(state)
        reading = dist.Normal(state, 0.5).log_prob(data[..., 1])
        pyro.factor("x", (step + reading).sum())

    def minibatch_twin(self, data: torch.Tensor) -> None:
        """:meth:`twin` on the minibatches of :meth:`model` (for Pyro's own ELBOs,
        with particles in a plate left of the series plate)."""
        a, sigma = self._globals()
        with pyro.plate("series", self.num_series, subsample_size=self.batch_size) as idx:
            state, prev = self._states(data[idx])
            step = dist.Normal(a[..., None] * prev, sigma[..., None]).log_prob(state)
            reading = dist.Normal(state, 0.5).log_prob(data[idx][..., 1])
            pyro.factor("x", (step + reading).sum(-1))

    def guide(self, data: torch.Tensor) -> None:
        a_loc = pyro.param("a_loc", torch.tensor(0.5))
        a_scale = pyro.param("a_scale", torch.tensor(0.3), constraint=constraints.positive)
        ls_loc = pyro.param("log_sigma_loc", torch.tensor(0.0))
        ls_scale = pyro.param("log_sigma_scale", torch.tensor(0.5), constraint=constraints.positive)
        pyro.sample("a", dist.Normal(a_loc, a_scale))
        pyro.sample("sigma", dist.LogNormal(ls_loc, ls_scale))

    def reference(
        self, num_samples: int = 1000, warmup: int = 500
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Posterior means and sds by NUTS on :meth:`twin` (same layout as :meth:`fitted`)."""
        mcmc = pyro.infer.MCMC(
            pyro.infer.NUTS(self.twin),
            num_samples=num_samples,
            warmup_steps=warmup,
            disable_progbar=True,
        )
        with torch.random.fork_rng():
            mcmc.run(self.data)
        draws = mcmc.get_samples()
        values = {"a": draws["a"], "log_sigma": draws["sigma"].log()}
        return {k: (v.mean(0).double(), v.std(0).double()) for k, v in values.items()}

    def fitted(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        def get(name: str) -> torch.Tensor:
            return pyro.param(name).detach().double()

        return {name: (get(f"{name}_loc"), get(f"{name}_scale")) for name in ("a", "log_sigma")}

    def exact(self, grid: int = 4001) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Posterior means and sds of ``a`` and ``log_sigma`` by integration (see above)."""
        state, prev = self._states(self.data.double())
        syy, sxy, sxx = (state * state).sum(), (state * prev).sum(), (prev * prev).sum()
        count = state.numel()
        # The posterior of log sigma lies within a few of its sds (~1/sqrt(2 count)) of
        # the residual scale; the grid spans +-25 of those sds.
        a_hat = sxy / sxx
        centre = 0.5 * torch.log((syy - 2 * a_hat * sxy + a_hat**2 * sxx) / count)
        log_sigma = centre + torch.linspace(-25, 25, grid, dtype=torch.float64) / (2 * count) ** 0.5
        var = torch.exp(2 * log_sigma)
        prior_mean, prior_sd = self.A_PRIOR
        prior_prec = 1 / prior_sd**2
        prec = sxx / var + prior_prec
        mean = (sxy / var + prior_mean * prior_prec) / prec
        # log p(data, log sigma), a integrated out analytically.
        log_w = (
            -count * log_sigma
            - syy / (2 * var)
            - 0.5 * prior_mean**2 * prior_prec
            + 0.5 * mean**2 * prec
            - 0.5 * torch.log(prec)
            + dist.Normal(*self.LOG_SIGMA_PRIOR).log_prob(log_sigma)
        )
        w = torch.softmax(log_w, 0)
        a_mean = (w * mean).sum()
        a_sd = ((w * (1 / prec + mean**2)).sum() - a_mean**2).sqrt()
        s_mean = (w * log_sigma).sum()
        s_sd = ((w * log_sigma**2).sum() - s_mean**2).sqrt()
        return {"a": (a_mean, a_sd), "log_sigma": (s_mean, s_sd)}
