"""The noise probe: the ELBO's gradients in the guide's noise scales and mixing."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.transforms import AffineTransform

from pyro_lfvi import Stationarity
from pyro_lfvi.noise_probe import (
    ScaleProbe,
    curvature_matrix,
    local_schur,
    marginal_factor,
    pairwise_variance_bound,
)

P = 40000  # particles: mean(eps^2) over 20000 mirrored pairs has a relative sd of 1%


def probed_gradient(guide, log_p, data_plate=None):
    """``d/ds mean_k [log p - log q](theta_k(s))`` by site, on P mirrored draws."""
    probe = ScaleProbe(-1, P, data_plate)
    with probe, pyro.plate("particles", P, dim=-1):
        trace = poutine.trace(guide).get_trace()
    site = trace.nodes["theta"]
    value = site["value"]
    elbo = (log_p(value) - site["fn"].log_prob(value)).mean()
    names = list(probe.scales)
    if not names:
        return {}, value
    grads = torch.autograd.grad(elbo, [probe.scales[n] for n in names])
    return dict(zip(names, grads, strict=True)), value


@pytest.mark.parametrize("ratio", [0.5, 1.0, 2.0])
def test_the_gradient_is_one_minus_the_squared_sd_ratio_for_a_normal(ratio):
    # Posterior N(1, 0.5); guide N(0.3, 0.5 * ratio): g = 1 - ratio^2 whatever the
    # location (mirroring cancels the location's first-order term exactly).
    scale = torch.tensor(0.5 * ratio, requires_grad=True)
    post = dist.Normal(1.0, 0.5)
    grads, value = probed_gradient(
        lambda: pyro.sample("theta", dist.Normal(0.3, scale)), post.log_prob
    )
    assert torch.allclose(value[: P // 2] + value[P // 2 :], torch.tensor(0.6), atol=1e-5)
    # g = (1 - ratio^2) mean(eps^2): 5 sds of mean(eps^2) as the tolerance.
    assert float(grads["theta"]) == pytest.approx(1 - ratio**2, rel=0.05, abs=1e-4)


def test_a_log_normal_guide_is_probed_in_its_base_space():
    # Jacobians cancel between p and q: g = 1 - ratio^2 with ratio = 1.6.
    scale = torch.tensor(0.8, requires_grad=True)
    post = dist.LogNormal(0.0, 0.5)
    grads, _ = probed_gradient(
        lambda: pyro.sample("theta", dist.LogNormal(0.2, scale)), post.log_prob
    )
    assert float(grads["theta"]) == pytest.approx(1 - 1.6**2, rel=0.05)
    assert Stationarity(float(grads["theta"]), 0.0).sd_factor == pytest.approx(1.6, rel=0.05)


def test_a_multivariate_normal_guide_equal_to_the_posterior_is_stationary():
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]])
    tril = torch.linalg.cholesky(cov).requires_grad_(True)
    post = dist.MultivariateNormal(torch.zeros(2), cov)
    grads, _ = probed_gradient(
        lambda: pyro.sample("theta", dist.MultivariateNormal(torch.ones(2), scale_tril=tril)),
        post.log_prob,
    )
    assert grads["theta"].shape == (2,)
    assert grads["theta"].abs().max() < 0.02  # exactly zero: the noise cancels draw by draw


@pytest.mark.parametrize("split", [False, True], ids=["one_site", "two_sites"])
def test_scales_and_mixing_give_the_guide_sd_over_the_posterior_marginal_sd(split):
    # Posterior N(0, cov) with correlation 0.8; a mean-field guide with the first sd at its
    # mean-field optimum and the second 1.5x it: guide sd / marginal sd = sd / sqrt(cov_jj).
    cov = torch.tensor([[1.0, 0.4], [0.4, 0.25]])
    sd = torch.linalg.inv(cov).diagonal().rsqrt() * torch.tensor([1.0, 1.5])
    scale = sd.clone().requires_grad_(True)

    def guide():
        if split:
            a = pyro.sample("a", dist.Normal(0.1, scale[0]))
            return torch.stack([a, pyro.sample("b", dist.Normal(-0.2, scale[1]))], -1)
        return pyro.sample("theta", dist.Normal(torch.tensor([0.1, -0.2]), scale).to_event(1))

    probe = ScaleProbe(-1, P, None)
    with probe, pyro.plate("particles", P, dim=-1):
        trace = poutine.trace(guide).get_trace()
    sites = [site for site in trace.nodes.values() if site["type"] == "sample"]
    value = torch.stack([site["value"] for site in sites], -1) if split else sites[0]["value"]
    log_q = sum(site["fn"].log_prob(site["value"]) for site in sites)
    elbo = (dist.MultivariateNormal(torch.zeros(2), cov).log_prob(value) - log_q).mean()
    leaves = dict(probe.scales) | {"mixing:" + k: v for k, v in probe.mixing.items()}
    found = torch.autograd.grad(elbo, list(leaves.values()), allow_unused=True)
    grads = {
        k: (torch.zeros_like(v) if g is None else g).double()
        for (k, v), g in zip(leaves.items(), found, strict=True)
    }
    m = curvature_matrix(grads, probe)
    t = torch.block_diag(*[probe.blocks[name] for name in probe.scales]).double()
    expected = (sd / cov.diagonal().sqrt()).double()  # 0.60 and 0.90
    # 10%: about 6 sds of this estimate on 40000 particles; ignoring the mixing gives 1.0, 1.5.
    assert torch.allclose(marginal_factor(m, t), expected, rtol=0.1)


def test_a_guide_whose_noise_scale_is_fixed_is_not_probed():
    # A flow on fixed noise: scaling the noise leaves the guide's family.
    loc = torch.tensor(0.0, requires_grad=True)
    guide_scale = torch.tensor(2.0, requires_grad=True)

    def guide():
        base = dist.Normal(torch.tensor(0.0), torch.tensor(1.0))
        pyro.sample("theta", dist.TransformedDistribution(base, AffineTransform(loc, guide_scale)))

    grads, _ = probed_gradient(guide, dist.Normal(0.0, 1.0).log_prob)
    assert grads == {}


def test_a_half_normal_guide_is_not_probed():
    # |noise| is not a bijection: mirroring cannot apply, so neither can the probe (it
    # once reported such a site as exactly stationary, g = 0 +- 0).
    scale = torch.tensor(0.8, requires_grad=True)
    grads, _ = probed_gradient(
        lambda: pyro.sample("theta", dist.HalfNormal(scale)), dist.HalfNormal(1.0).log_prob
    )
    assert grads == {}


def test_sites_in_the_data_plate_are_mirrored_but_not_scaled():
    def guide():
        with pyro.plate("data", 3, dim=-2):
            pyro.sample("theta", dist.Normal(0.0, torch.tensor(1.0, requires_grad=True)))

    probe = ScaleProbe(-1, 4, "data")
    with probe, pyro.plate("particles", 4, dim=-1):
        value = poutine.trace(guide).get_trace().nodes["theta"]["value"]
    assert probe.scales == {}
    assert torch.allclose(value[:, :2], -value[:, 2:])


def test_the_locals_share_gives_the_global_marginal_of_a_hierarchical_posterior():
    # mu ~ N(0, 1), z_n ~ N(mu, 1), x_n ~ N(z_n, 1), 5 points; a mean-field guide at its
    # optimum: mu's sd (1 + n)^-1/2 against the marginal (1 + n/2)^-1/2, z_n's 2^-1/2.
    n, x = 5, torch.tensor([0.3, -0.2, 1.1, 0.4, 0.9])
    scale = torch.tensor((1.0 + n) ** -0.5, requires_grad=True)
    local_scale = torch.full((n,), 0.5**0.5, requires_grad=True)

    def guide():
        mu = pyro.sample("mu", dist.Normal(0.2, scale))
        with pyro.plate("data", n, dim=-1):
            return mu, pyro.sample("z", dist.Normal(torch.zeros(n), local_scale))

    probe = ScaleProbe(-2, P, "data")
    with probe, pyro.plate("particles", P, dim=-2):
        trace = poutine.trace(guide).get_trace()
    mu, z = trace.nodes["mu"]["value"], trace.nodes["z"]["value"]
    log_p = dist.Normal(0.0, 1.0).log_prob(mu).sum(-1) + (
        dist.Normal(mu, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(x)
    ).sum(-1)
    log_q = trace.nodes["mu"]["fn"].log_prob(mu).sum(-1) + trace.nodes["z"]["fn"].log_prob(z).sum(
        -1
    )
    elbo = (log_p - log_q).mean()
    leaves = [probe.scales["mu"], probe.local_scales["z"], probe.local_mixing["z"]]
    g_mu, g_local, g_mix = (g.double() for g in torch.autograd.grad(elbo, leaves))
    m = torch.eye(1, dtype=torch.float64) - g_mu.reshape(1, 1)
    # Two batches: the same gradients twice, so the even/odd product is their square.
    schur = local_schur(torch.stack([g_local] * 2), torch.stack([g_mix] * 2), 1.0)
    t = probe.blocks["mu"].double()
    factor = marginal_factor(m - schur(torch.arange(2)), t)
    expected = ((1.0 + n / 2) / (1.0 + n)) ** 0.5  # 0.76; without the locals' share: 1.0
    assert float(factor) == pytest.approx(expected, rel=0.1)


def test_the_pairwise_bound_caps_the_mean_field_marginal_factor():
    # M = T' Lambda T of a mean-field guide on a random posterior: the guide's variance over
    # the marginal variance, 1 / (M^-1)_jj, is at most min_k M_jj - M_jk^2 / M_kk.
    torch.manual_seed(0)
    for _ in range(20):
        a = torch.randn(5, 5, dtype=torch.float64)
        precision = a @ a.T + 0.1 * torch.eye(5, dtype=torch.float64)
        t = torch.diag(precision.diagonal().rsqrt())  # at the mean-field optimum
        m = t @ precision @ t
        bound = pairwise_variance_bound(m, t)
        assert (marginal_factor(m, t) ** 2 <= bound + 1e-12).all()
    m = torch.tensor([[1.0, -0.9], [-0.9, 1.0]], dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    assert torch.allclose(pairwise_variance_bound(m, eye), 1 - m[0, 1] ** 2)
    full_rank = torch.tensor([[1.0, 0.0], [0.5, 1.0]], dtype=torch.float64)
    assert pairwise_variance_bound(m, full_rank).isnan().all()  # a bound for mean field only


def test_a_curvature_not_positive_definite_reads_as_a_guide_far_too_narrow():
    # Noise takes the estimate of M past a partial correlation of 1 when the posterior's is
    # near it: the factor is 0 (far too narrow), not NaN (unmeasured, hence silent).
    m = torch.tensor([[1.0, 1.05], [1.05, 1.0]], dtype=torch.float64)
    t = torch.eye(2, dtype=torch.float64)
    assert torch.equal(marginal_factor(m, t), torch.zeros(2, dtype=torch.float64))
    assert (pairwise_variance_bound(m, t) < 0).all()
    assert torch.isnan(marginal_factor(torch.ones(2, 2, dtype=torch.float64), t)).all()


def test_the_funnel_share_gives_the_scale_marginal_of_a_funnel_posterior():
    # log_tau ~ N(0, 1), z_n ~ N(0, exp(log_tau)), x_n ~ N(z_n, 1), 30 points: the locals'
    # spread follows log_tau (a funnel), which a mean-field guide misses and which is no
    # linear correlation: Schur's complement alone sizes the guide far too close to the
    # posterior. Exact marginal of log_tau by quadrature; the guide at its optimum by SGD.
    n = 30
    x = torch.randn(n) + torch.randn(n)

    def log_p(log_tau, z):
        prior = dist.Normal(0.0, 1.0).log_prob(log_tau)
        locals_ = dist.Normal(0.0, log_tau.exp().unsqueeze(-1)).log_prob(z)
        return prior + (locals_ + dist.Normal(z, 1.0).log_prob(x)).sum(-1)

    def log_marginal(log_tau):  # the z_n integrated out: x_n ~ N(0, tau^2 + 1)
        evidence = dist.Normal(0.0, (log_tau.exp() ** 2 + 1).sqrt().unsqueeze(-1))
        return dist.Normal(0.0, 1.0).log_prob(log_tau) + evidence.log_prob(x.double()).sum(-1)

    grid = torch.linspace(-6.0, 4.0, 20001, dtype=torch.float64)
    weights = torch.softmax(log_marginal(grid), 0)
    mean = (weights * grid).sum()
    exact_sd = (weights * (grid - mean) ** 2).sum().sqrt().item()

    params = [torch.zeros(1), torch.full((1,), -1.0), torch.zeros(n), torch.full((n,), -1.0)]
    for p in params:
        p.requires_grad_()
    optim = torch.optim.Adam(params, lr=0.02)
    for step in range(3000):
        for group in optim.param_groups:
            group["lr"] = 0.02 * 0.001 ** (step / 3000)
        eps, eps_z = torch.randn(256), torch.randn(256, n)
        log_tau, z = params[0] + params[1].exp() * eps, params[2] + params[3].exp() * eps_z
        loss = -(log_p(log_tau, z).mean() + params[1].sum() + params[3].sum())
        optim.zero_grad()
        loss.backward()
        optim.step()
    loc, local_loc = params[0].detach()[0], params[2].detach()
    scale, local_scale = params[1].detach().exp()[0], params[3].detach().exp()
    actual = scale.item() / exact_sd

    def guide():
        log_tau = pyro.sample("log_tau", dist.Normal(loc, scale.requires_grad_()))
        with pyro.plate("data", n, dim=-1):
            return log_tau, pyro.sample("z", dist.Normal(local_loc, local_scale.requires_grad_()))

    rows = []
    for _ in range(4):
        probe = ScaleProbe(-2, P, "data")
        with probe, pyro.plate("particles", P, dim=-2):
            trace = poutine.trace(guide).get_trace()
        log_tau, z = trace.nodes["log_tau"]["value"].squeeze(-1), trace.nodes["z"]["value"]
        log_q = trace.nodes["log_tau"]["fn"].log_prob(trace.nodes["log_tau"]["value"])
        log_q = log_q.squeeze(-1) + trace.nodes["z"]["fn"].log_prob(z).sum(-1)
        elbo = (log_p(log_tau, z) - log_q).mean()
        leaves = [probe.scales["log_tau"]] + [
            getattr(probe, kind)["z"] for kind in ("local_scales", "local_mixing", "local_funnel")
        ]
        rows.append([g.double() for g in torch.autograd.grad(elbo, leaves)])
    g_tau, g_local, g_mix, g_funnel = (torch.stack(column) for column in zip(*rows, strict=True))
    m = torch.eye(1, dtype=torch.float64) - g_tau.mean(0).reshape(1, 1)
    t = probe.blocks["log_tau"].double()
    every = torch.arange(4)
    linear = marginal_factor(m - local_schur(g_local, g_mix, 1.0)(every), t).item()
    funnel = marginal_factor(m - local_schur(g_local, g_mix, 1.0, g_funnel)(every), t).item()
    assert actual < 0.6  # the mean-field guide is far too narrow
    assert linear / actual > 1.3  # and the linear share alone does not see it
    assert 0.8 < funnel / actual < 1.25
    # What the probe measures exactly: the curvature of the exact marginal of log_tau,
    # averaged under the guide (0.564 here, against the marginal's sd ratio of 0.48).
    draws = (loc + scale * torch.randn(P, dtype=torch.float64)).requires_grad_()
    (slope,) = torch.autograd.grad(log_marginal(draws).sum(), draws, create_graph=True)
    (curvature,) = torch.autograd.grad(slope.sum(), draws)
    assert funnel == pytest.approx(scale.item() * (-curvature.mean()).sqrt().item(), rel=0.05)
