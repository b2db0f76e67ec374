"""Built-in implicit models whose exact posteriors are known.

Each example bundles synthetic data, a model whose likelihood is an
:class:`~pyro_lfvi.ImplicitSite`, a guide, and the exact posterior of the
explicit version of the same model, so that LFVI's answer can be checked.
They serve the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ..implicit import ImplicitSite
from ..networks import NoiseNetwork

__all__ = [
    "BimodalLocals",
    "ConjugateNormal",
    "HierarchicalNormal",
]


@dataclass
class ConjugateNormal:
    r"""
    ``mu ~ Normal(0, prior_scale)``, ``x_n ~ Normal(mu, noise)`` for ``n < N``,
    the likelihood written as a simulator; minibatches of ``batch_size``.

    The exact posterior is Normal with precision
    :math:`1/\tau^2 + N/\sigma^2` and mean :math:`\sum_n x_n / \sigma^2`
    divided by that precision.
    """

    num_data: int = 1000
    batch_size: int = 100
    true_mu: float = 1.5
    noise: float = 1.0
    prior_scale: float = 10.0
    data: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.data = self.true_mu + self.noise * torch.randn(self.num_data)

    def simulate(self, mu: torch.Tensor) -> torch.Tensor:
        """The simulator: one noisy draw per data point."""
        return mu + self.noise * torch.randn_like(mu)

    def model(self, data: torch.Tensor) -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, self.prior_scale))
        with pyro.plate("data", self.num_data, subsample_size=self.batch_size) as idx:
            pyro.sample("x", ImplicitSite(self.simulate, mu), obs=data[idx])

    def guide(self, data: torch.Tensor) -> None:
        loc = pyro.param("mu_loc", torch.tensor(0.0))
        scale = pyro.param("mu_scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    def exact(self) -> dict[str, tuple[float, float]]:
        """Exact posterior ``{"mu": (mean, sd)}``."""
        precision = 1 / self.prior_scale**2 + self.num_data / self.noise**2
        mean = float(self.data.sum()) / self.noise**2 / precision
        return {"mu": (mean, precision**-0.5)}

    def fitted(self) -> dict[str, tuple[float, float]]:
        """The guide's posterior ``{"mu": (mean, sd)}`` from the param store."""
        return {
            "mu": (float(pyro.param("mu_loc").detach()), float(pyro.param("mu_scale").detach()))
        }


@dataclass
class HierarchicalNormal:
    r"""
    Groups with local means: ``mu ~ Normal(0, 5)``, ``tau ~ LogNormal(0, 1)``,
    ``theta_j ~ Normal(mu, tau)`` (local), and ``num_obs`` simulated
    observations per group, ``y_jk ~ Normal(theta_j, noise)``, drawn by one
    simulator call per group (``event_shape=(num_obs,)``).

    The exact posterior comes from quadrature: with ``theta`` integrated out,
    :math:`\bar y_j \sim N(\mu, \tau^2 + \sigma^2/n)`, so the posterior of
    ``(mu, log tau)`` is computed on a grid and that of each ``theta_j`` as a
    grid mixture of conjugate normals.
    """

    num_groups: int = 40
    num_obs: int = 10
    batch_size: int | None = 20
    true_mu: float = 1.0
    true_tau: float = 0.8
    noise: float = 1.0
    data: torch.Tensor = field(init=False)
    true_theta: torch.Tensor = field(init=False)
    noise_network: NoiseNetwork = field(init=False)

    def __post_init__(self) -> None:
        self.true_theta = self.true_mu + self.true_tau * torch.randn(self.num_groups)
        eps = torch.randn(self.num_groups, self.num_obs)
        self.data = self.true_theta.unsqueeze(-1) + self.noise * eps
        # After the data, so that a seed gives the same data as without it.
        self.noise_network = NoiseNetwork(inputs=0, noise_dim=2, hidden=16, location_scale=True)

    def simulate(self, theta: torch.Tensor) -> torch.Tensor:
        """The simulator: ``num_obs`` noisy draws around each group mean."""
        return theta.unsqueeze(-1) + self.noise * torch.randn((*theta.shape, self.num_obs))

    def model(self, data: torch.Tensor) -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
        with pyro.plate("groups", self.num_groups, subsample_size=self.batch_size) as idx:
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            site = ImplicitSite(self.simulate, theta, event_shape=(self.num_obs,))
            pyro.sample("y", site, obs=data[idx])

    @staticmethod
    def summary(observed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each group's mean, a sufficient statistic (``LFVI(summary=...)``)."""
        return {"y": observed["y"].mean(-1, keepdim=True)}

    def _guide_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample the globals; return the per-group location and scale params."""
        mu_loc = pyro.param("mu_loc", torch.tensor(0.0))
        mu_scale = pyro.param("mu_scale", torch.tensor(1.0), constraint=constraints.positive)
        lt_loc = pyro.param("log_tau_loc", torch.tensor(0.0))
        lt_scale = pyro.param("log_tau_scale", torch.tensor(0.5), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(mu_loc, mu_scale))
        pyro.sample("tau", dist.LogNormal(lt_loc, lt_scale))
        th_loc = pyro.param("theta_loc", torch.zeros(self.num_groups))
        th_scale = pyro.param(
            "theta_scale", torch.ones(self.num_groups), constraint=constraints.positive
        )
        return th_loc, th_scale

    def guide(self, data: torch.Tensor) -> None:
        th_loc, th_scale = self._guide_params()
        with pyro.plate("groups", self.num_groups, subsample_size=self.batch_size) as idx:
            pyro.sample("theta", dist.Normal(th_loc[idx], th_scale[idx]))

    def implicit_guide(self, data: torch.Tensor) -> None:
        """
        The same globals as :meth:`guide`; each ``theta_j`` is
        ``loc_j + scale_j * h(noise)`` with ``h`` a small network fed with
        two-dimensional noise: an implicit guide with no density.
        """
        th_loc, th_scale = self._guide_params()
        groups = pyro.plate("groups", self.num_groups, subsample_size=self.batch_size)
        self.implicit_locals(groups, th_loc, th_scale)

    def implicit_locals(
        self,
        groups: pyro.plate,
        loc: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> None:
        """
        The local part of :meth:`implicit_guide` inside the plate ``groups``
        (e.g. an ``AutoGuideList``'s own ``guide.plates["groups"]``), with
        its ``loc`` and ``scale`` params registered here if not given.
        """
        if loc is None or scale is None:
            loc = pyro.param("theta_loc", torch.zeros(self.num_groups))
            scale = pyro.param(
                "theta_scale", torch.ones(self.num_groups), constraint=constraints.positive
            )
        noise_net = pyro.module("theta_noise", self.noise_network)
        with groups as idx:
            pyro.sample(
                "theta", ImplicitSite(noise_net, loc[idx], scale[idx], reparameterized=True)
            )

    def exact(self, grid: int = 601) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Exact posterior means and sds of ``mu``, ``log_tau`` and ``theta``."""
        ybar = self.data.double().mean(-1)
        mus = torch.linspace(-2.0, 4.0, grid, dtype=torch.float64)
        log_taus = torch.linspace(-4.0, 2.0, grid, dtype=torch.float64)
        mu, log_tau = torch.meshgrid(mus, log_taus, indexing="ij")
        tau = log_tau.exp()
        var = (tau**2 + self.noise**2 / self.num_obs).unsqueeze(-1)
        resid = ybar - mu.unsqueeze(-1)
        loglik = (-0.5 * resid**2 / var - 0.5 * var.log()).sum(-1)
        logprior = (
            dist.Normal(0.0, 5.0).log_prob(mu) + dist.LogNormal(0.0, 1.0).log_prob(tau) + log_tau
        )
        w = (loglik + logprior).double()
        w = (w - w.max()).exp()
        w = w / w.sum()

        def moments(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mean = (w * value).sum()
            return mean, ((w * value**2).sum() - mean**2).sqrt()

        prec = (self.num_obs / self.noise**2 + 1 / tau**2).unsqueeze(-1)
        cond_mean = (ybar * self.num_obs / self.noise**2 + (mu / tau**2).unsqueeze(-1)) / prec
        wj = w.unsqueeze(-1)
        th_mean = (wj * cond_mean).sum((0, 1))
        th_sd = ((wj * (cond_mean**2 + 1 / prec)).sum((0, 1)) - th_mean**2).sqrt()
        return {"mu": moments(mu), "log_tau": moments(log_tau), "theta": (th_mean, th_sd)}

    def fitted(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The guide's means and sds, in the same layout as :meth:`exact`."""

        def get(name: str) -> torch.Tensor:
            return pyro.param(name).detach().double()

        return {
            "mu": (get("mu_loc"), get("mu_scale")),
            "log_tau": (get("log_tau_loc"), get("log_tau_scale")),
            "theta": (get("theta_loc"), get("theta_scale")),
        }


@dataclass
class BimodalLocals:
    r"""
    A model whose local posteriors are bimodal: ``tau ~ LogNormal(0, 1)``,
    ``z_n ~ Normal(0, tau)`` (local), and a simulator that sees only the
    magnitude, ``x_n ~ Normal(|z_n|, noise)``. Given ``x_n`` the sign of
    ``z_n`` is unknown, so its posterior has two modes near :math:`\pm x_n`.

    :meth:`guide` is a Normal local guide (one mode at most);
    :meth:`implicit_guide` a :class:`~pyro_lfvi.NoiseNetwork` fed with ``x_n`` and
    ``log tau``. :meth:`exact` computes the exact posterior on grids (``z``
    integrated out per point for ``tau``, then each local marginal as a
    mixture over ``tau``), and :meth:`local_wasserstein` the 1-Wasserstein
    distance of guide draws from each exact local marginal.
    """

    num_data: int = 100
    batch_size: int = 50
    true_tau: float = 1.5
    noise: float = 0.25
    data: torch.Tensor = field(init=False)
    network: NoiseNetwork = field(init=False)

    def __post_init__(self) -> None:
        z = self.true_tau * torch.randn(self.num_data)
        self.data = z.abs() + self.noise * torch.randn(self.num_data)
        self.network = NoiseNetwork(inputs=2, noise_dim=2, hidden=64)

    def simulate(self, z: torch.Tensor) -> torch.Tensor:
        """The simulator: a noisy magnitude."""
        return z.abs() + self.noise * torch.randn_like(z)

    def model(self, data: torch.Tensor) -> None:
        tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", self.num_data, subsample_size=self.batch_size) as idx:
            z = pyro.sample("z", dist.Normal(0.0, tau))
            pyro.sample("x", ImplicitSite(self.simulate, z), obs=data[idx])

    def _tau(self) -> torch.Tensor:
        loc = pyro.param("tau_loc", torch.tensor(0.0))
        scale = pyro.param("tau_scale", torch.tensor(0.3), constraint=constraints.positive)
        return pyro.sample("tau", dist.LogNormal(loc, scale))

    def guide(self, data: torch.Tensor) -> None:
        self._tau()
        loc = pyro.param("z_loc", lambda: 0.1 * torch.randn(self.num_data))
        scale = pyro.param("z_scale", torch.ones(self.num_data), constraint=constraints.positive)
        with pyro.plate("data", self.num_data, subsample_size=self.batch_size) as idx:
            pyro.sample("z", dist.Normal(loc[idx], scale[idx]))

    def implicit_guide(self, data: torch.Tensor) -> None:
        log_tau = self._tau().log()
        net = pyro.module("z_network", self.network)
        with pyro.plate("data", self.num_data, subsample_size=self.batch_size) as idx:
            x = data[idx]
            site = ImplicitSite(net, x, log_tau, reparameterized=True)
            pyro.sample("z", site)

    @torch.no_grad()
    def guide_draws(self, implicit: bool, num_draws: int = 4000) -> torch.Tensor:
        """Draws ``(num_draws, N)`` of every ``z_n`` from a fitted guide."""
        tau_dist = dist.LogNormal(pyro.param("tau_loc"), pyro.param("tau_scale"))
        log_tau = tau_dist.sample((num_draws, 1)).log()
        if implicit:
            return self.network(self.data.expand(num_draws, -1), log_tau)
        loc, scale = pyro.param("z_loc"), pyro.param("z_scale")
        return loc + scale * torch.randn(num_draws, self.num_data)

    def _grids(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = torch.linspace(-8.0, 8.0, 1601, dtype=torch.float64)
        log_tau = torch.linspace(-2.5, 2.5, 401, dtype=torch.float64)
        x = self.data.double()
        joint = dist.Normal(0.0, log_tau.exp()[:, None, None]).log_prob(z) + dist.Normal(
            z.abs(), self.noise
        ).log_prob(x[:, None])
        return z, log_tau, joint

    def exact(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Exact posterior: ``log_tau`` (mean, sd) and the local CDFs on a grid."""
        z, log_tau, joint = self._grids()
        dz = float(z[1] - z[0])
        log_lik = (torch.logsumexp(joint, -1) + math.log(dz)).sum(-1)
        log_post = log_lik + dist.Normal(0.0, 1.0).log_prob(log_tau)
        w = torch.softmax(log_post, 0)
        mean = (w * log_tau).sum()
        sd = ((w * log_tau**2).sum() - mean**2).sqrt()
        local = (w[:, None, None] * torch.softmax(joint, -1)).sum(0)
        return {"log_tau": (mean, sd), "z_cdf": (z, local.cumsum(-1))}

    def local_wasserstein(self, draws: torch.Tensor) -> torch.Tensor:
        """1-Wasserstein distance of draws ``(S, N)`` from each exact local marginal."""
        z, cdf = self.exact()["z_cdf"]
        dz = float(z[1] - z[0])
        empirical = (draws.double().unsqueeze(-1) <= z).double().mean(0)
        return (empirical - cdf).abs().sum(-1) * dz
