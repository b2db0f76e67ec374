"""A stochastic SIR epidemic simulator in numpy, with an exact posterior.

Each region runs a discrete-time chain-binomial epidemic whose infection rate is
a local latent; the population location and scale of the log rates are global.
Only the daily new infections are observed: the number of infected people is
hidden, and so is every recovery. The simulator is plain numpy (no gradients,
its own random generator), the kind of code an epidemiologist already has.

The exact posterior needs no simulation: a forward filter over the hidden
infected count gives each region's likelihood on a grid of rates, and
quadrature over the globals does the rest (:meth:`RegionalSIR.exact`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ..implicit import ImplicitSite
from .structured import coupled_locals, gaussian_chain, guide_moments

__all__ = ["RegionalSIR"]


def _log_binomial(
    k: np.ndarray, n: np.ndarray, logp: np.ndarray | float, log1mp: np.ndarray | float
) -> np.ndarray:
    """Binomial log pmf from log p and log(1 - p); ``-inf`` outside ``0 <= k <= n``."""
    k, n = np.broadcast_arrays(k, n)
    valid = (k >= 0) & (k <= n)
    k_, n_ = np.where(valid, k, 0), np.where(valid, n, 0)
    log_fact = np.array([math.lgamma(i + 1) for i in range(int(n_.max()) + 1)])
    coef = log_fact[n_] - log_fact[k_] - log_fact[n_ - k_]
    with np.errstate(invalid="ignore"):
        terms = np.where(k_ > 0, k_ * logp, 0.0) + np.where(n_ - k_ > 0, (n_ - k_) * log1mp, 0.0)
    return np.where(valid, coef + terms, -np.inf)


@dataclass
class RegionalSIR:
    r"""
    ``num_regions`` regions of ``population`` people each, ``initial``
    of them infected on day 0. Globals ``mu ~ Normal(log 0.5, 0.5)`` and
    ``scale ~ LogNormal(log 0.3, 0.5)``; per region an infection rate
    ``beta_n ~ LogNormal(mu, scale)`` (local). Each day

    .. math::

        B_t \sim \mathrm{Binomial}\big(S_t, 1 - e^{-\beta_n I_t / P}\big),\quad
        C_t \sim \mathrm{Binomial}(I_t, \gamma),\quad
        S_{t+1} = S_t - B_t,\quad I_{t+1} = I_t + B_t - C_t,

    with a known recovery probability :math:`\gamma`. Only the new infections
    :math:`B_1, \dots, B_T` are observed (``event_shape=(num_days,)``).

    :meth:`simulate` is numpy with its own :class:`numpy.random.Generator`,
    seeded per call from torch's generator so that ``pyro.set_rng_seed``
    makes runs reproducible. :meth:`guide` is mean-field: Normal on ``mu``,
    LogNormal on ``scale`` and on each ``beta_n``, started at the prior.
    """

    num_regions: int = 30
    num_days: int = 40
    population: int = 200
    initial: int = 3
    recovery: float = 0.25
    true_mu: float = math.log(0.6)
    true_scale: float = 0.3
    data: torch.Tensor = field(init=False)
    true_beta: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.true_beta = (self.true_mu + self.true_scale * torch.randn(self.num_regions)).exp()
        self.data = self.simulate(self.true_beta)
        self._exact: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def simulate(self, beta: torch.Tensor) -> torch.Tensor:
        """The simulator: daily new infections, one series per element of ``beta``."""
        seed = int(torch.randint(2**62, ()))
        rng = np.random.default_rng(seed)
        rate = beta.detach().cpu().numpy().astype(np.float64)
        susceptible = np.full(rate.shape, self.population - self.initial, dtype=np.int64)
        infected = np.full(rate.shape, self.initial, dtype=np.int64)
        days = []
        for _ in range(self.num_days):
            p_infect = -np.expm1(-rate * infected / self.population)
            new = rng.binomial(susceptible, np.clip(p_infect, 0.0, 1.0))
            recovered = rng.binomial(infected, self.recovery)
            susceptible = susceptible - new
            infected = infected + new - recovered
            days.append(new)
        out = np.stack(days, -1).astype(np.float32)
        return torch.as_tensor(out)

    def _globals(self) -> tuple[torch.Tensor, torch.Tensor]:
        mu = pyro.sample("mu", dist.Normal(math.log(0.5), 0.5))
        scale = pyro.sample("scale", dist.LogNormal(math.log(0.3), 0.5))
        return mu, scale

    def model(self, data: torch.Tensor) -> None:
        mu, scale = self._globals()
        with pyro.plate("regions", self.num_regions):
            beta = pyro.sample("beta", dist.LogNormal(mu, scale))
            site = ImplicitSite(self.simulate, beta, event_shape=(self.num_days,))
            pyro.sample("cases", site, obs=data)

    def guide(self, data: torch.Tensor) -> None:
        mu_loc = pyro.param("mu_loc", torch.tensor(math.log(0.5)))
        mu_scale = pyro.param("mu_scale", torch.tensor(0.5), constraint=constraints.positive)
        ls_loc = pyro.param("log_scale_loc", torch.tensor(math.log(0.3)))
        ls_scale = pyro.param("log_scale_scale", torch.tensor(0.5), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(mu_loc, mu_scale))
        pyro.sample("scale", dist.LogNormal(ls_loc, ls_scale))
        lb_loc = pyro.param("log_beta_loc", torch.full((self.num_regions,), math.log(0.5)))
        lb_scale = pyro.param(
            "log_beta_scale",
            torch.full((self.num_regions,), 0.5),
            constraint=constraints.positive,
        )
        with pyro.plate("regions", self.num_regions):
            pyro.sample("beta", dist.LogNormal(lb_loc, lb_scale))

    def structured_guide(self, data: torch.Tensor) -> None:
        """
        A Gaussian guide with the posterior's dependence structure (see
        :mod:`.structured`): full-rank on ``(mu, log scale)``, and each
        region's log rate with a mean linear in the globals' deviations and a
        log sd linear in them. Its moments come from :meth:`guide_moments`.
        """
        sites = [("mu", False), ("scale", True)]
        deviation = gaussian_chain("globals", sites, (math.log(0.5), math.log(0.3)), 0.5)
        loc, scale = coupled_locals("log_beta", deviation, self.num_regions, math.log(0.5), 0.5)
        with pyro.plate("regions", self.num_regions):
            pyro.sample("beta", dist.LogNormal(loc, scale))

    def guide_moments(
        self, guide: Callable[[torch.Tensor], None], num_samples: int = 4000
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Means and sds of ``guide``'s draws, in the layout of :meth:`exact`."""
        sites = {
            "mu": lambda d: d["mu"],
            "log_scale": lambda d: d["scale"].log(),
            "log_beta": lambda d: d["beta"].log(),
        }
        return guide_moments(guide, self.data, sites, num_samples)

    def region_likelihoods(self, log_beta: np.ndarray) -> np.ndarray:
        """
        Each region's log likelihood at each log rate of ``log_beta``, shape
        ``(num_regions, len(log_beta))``, by a forward filter over the hidden
        infected count :math:`I_t \\in \\{0, \\dots, P\\}`.
        """
        cases = self.data.double().numpy().astype(np.int64)
        states = np.arange(self.population + 1)
        rate = np.exp(log_beta)[:, None]  # (grid, 1)
        # Recoveries C = I + B - I' ~ Binomial(I, gamma), for every I (rows), I' (cols).
        log_g, log_1mg = math.log(self.recovery), math.log1p(-self.recovery)
        out = np.empty((self.num_regions, len(log_beta)))
        for n in range(self.num_regions):
            filt = np.zeros((len(log_beta), len(states)))
            filt[:, self.initial] = 1.0
            susceptible = self.population - self.initial
            loglik = np.zeros(len(log_beta))
            for new in cases[n]:
                hazard = rate * states[None, :] / self.population
                with np.errstate(divide="ignore"):
                    logp = np.log(-np.expm1(-hazard))
                log1mp = -hazard
                emit = np.exp(_log_binomial(np.asarray(new), np.asarray(susceptible), logp, log1mp))
                filt = filt * emit
                norm = filt.sum(-1, keepdims=True)
                loglik += np.log(norm[:, 0])
                filt = filt / np.where(norm > 0, norm, 1.0)
                moved = states[:, None] + new - states[None, :]
                trans = np.exp(_log_binomial(moved, states[:, None], log_g, log_1mg))
                filt = filt @ trans
                susceptible -= new
            out[n] = loglik
        return out

    def exact(self, grid: int = 241) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """
        Exact posterior means and sds of ``mu``, ``log_scale`` and
        ``log_beta`` (per region): the forward filter's likelihoods on a grid
        of log rates, integrated against the globals on a grid.
        """
        if self._exact is not None:
            return self._exact
        log_beta = np.linspace(-5.0, 3.0, grid)
        step = log_beta[1] - log_beta[0]
        loglik = self.region_likelihoods(log_beta)  # (regions, grid)
        lik = np.exp(loglik - loglik.max(-1, keepdims=True))
        mus = np.linspace(math.log(0.5) - 2.5, math.log(0.5) + 2.5, 161)
        log_scales = np.linspace(math.log(0.3) - 2.5, math.log(0.3) + 2.5, 161)
        mu, log_scale = np.meshgrid(mus, log_scales, indexing="ij")
        scale = np.exp(log_scale)[..., None]
        # Density of each log rate given the globals: (mu, log_scale, grid).
        cond = np.exp(-0.5 * ((log_beta - mu[..., None]) / scale) ** 2) / scale
        cond = cond / math.sqrt(2 * math.pi) * step
        marginal = cond @ lik.T  # (mu, log_scale, regions)
        log_prior = (
            -0.5 * ((mu - math.log(0.5)) / 0.5) ** 2
            - 0.5 * ((log_scale - math.log(0.3)) / 0.5) ** 2
        )
        log_w = np.log(marginal).sum(-1) + log_prior
        w = np.exp(log_w - log_w.max())
        w /= w.sum()

        def moments(value: np.ndarray, weight: np.ndarray, axis: tuple[int, ...]) -> tuple:
            mean = (weight * value).sum(axis)
            sd = np.sqrt((weight * value**2).sum(axis) - mean**2)
            return torch.as_tensor(mean), torch.as_tensor(sd)

        # Each region's log rate: a mixture over the globals of cond * lik / marginal.
        mix = (w[..., None] / marginal).reshape(-1, self.num_regions)
        per_region = (mix.T @ cond.reshape(-1, grid)) * lik
        per_region /= per_region.sum(-1, keepdims=True)
        self._exact = {
            "mu": moments(mu, w, (0, 1)),
            "log_scale": moments(log_scale, w, (0, 1)),
            "log_beta": moments(log_beta[None, :], per_region, (1,)),
        }
        return self._exact

    def fitted(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The guide's means and sds, in the same layout as :meth:`exact`."""

        def get(name: str) -> torch.Tensor:
            return pyro.param(name).detach().double()

        return {
            "mu": (get("mu_loc"), get("mu_scale")),
            "log_scale": (get("log_scale_loc"), get("log_scale_scale")),
            "log_beta": (get("log_beta_loc"), get("log_beta_scale")),
        }
