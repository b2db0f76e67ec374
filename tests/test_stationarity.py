"""The guide-scale check: the ELBO's derivative in the guide's noise scale, and its warning."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.transforms import AffineTransform

from pyro_lfvi import LFVI, LFVIWarning, check_stationarity
from pyro_lfvi.examples import ConjugateNormal
from pyro_lfvi.stationarity import ScaleProbe, Stationarity

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


def trained_conjugate(num_steps=300):
    problem = ConjugateNormal()
    elbo = LFVI()
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.02}), elbo)
    for _ in range(num_steps):
        svi.step(problem.data)
    return problem, elbo


def set_guide_sd(sd):
    with torch.no_grad():
        pyro.param("mu_scale").unconstrained().copy_(torch.tensor(sd).log())


def test_the_check_warns_on_a_guide_too_wide_or_too_narrow_and_not_at_the_optimum():
    problem, elbo = trained_conjugate()
    sd = problem.exact()["mu"][1]
    found = {}
    for ratio in (0.5, 1.0, 2.0):
        set_guide_sd(sd * ratio)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LFVIWarning)
            found[ratio] = check_stationarity(elbo, problem.model, problem.guide, problem.data)
        messages = [str(w.message) for w in caught if w.category is LFVIWarning]
        if ratio == 1.0:
            assert messages == []
        else:
            assert len(messages) == 1
            assert "'mu'" in messages[0]
            assert ("too wide" if ratio > 1 else "too narrow") in messages[0]
    # The guide's sd over the stationary one scales with the guide's sd (Gaussian theory),
    # within the sd target 0.8-1.25x.
    for ratio in (0.5, 2.0):
        relative = found[ratio]["mu"].sd_factor / found[1.0]["mu"].sd_factor
        assert 0.8 * ratio < relative < 1.25 * ratio, (ratio, found)


def test_the_check_changes_neither_params_nor_the_random_stream():
    problem, elbo = trained_conjugate(num_steps=20)
    store = pyro.get_param_store()
    before = {k: v.detach().clone() for k, v in store.items()}
    grads = {k: store.get_param(k).unconstrained().grad for k in store.keys()}
    grads = {k: None if g is None else g.clone() for k, g in grads.items()}
    state = torch.get_rng_state()
    check_stationarity(elbo, problem.model, problem.guide, problem.data, warn=False)
    assert torch.equal(torch.get_rng_state(), state)
    for k, v in store.items():
        assert torch.equal(v.detach(), before[k]), k
        grad = store.get_param(k).unconstrained().grad
        assert (grad is None) == (grads[k] is None), k
        assert grad is None or torch.equal(grad, grads[k]), k


def test_the_check_does_not_apply_to_few_or_unvectorised_particles():
    problem = ConjugateNormal()
    for elbo in (
        LFVI(num_particles=3),
        LFVI(num_particles=4, vectorize_particles=False, estimator="joint"),
    ):
        svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        svi.step(problem.data)
        assert check_stationarity(elbo, problem.model, problem.guide, problem.data) == {}


def test_the_check_refuses_bad_arguments():
    problem = ConjugateNormal()
    with pytest.raises(ValueError, match="Expected a trained LFVI instance"):
        check_stationarity(LFVI(), problem.model, problem.guide, problem.data)
    _, elbo = trained_conjugate(num_steps=2)
    with pytest.raises(ValueError, match="Expected num_batches >= 8, actual 4"):
        check_stationarity(elbo, problem.model, problem.guide, problem.data, num_batches=4)


def test_an_odd_particle_count_is_probed_with_its_last_particle_unmirrored():
    problem = ConjugateNormal()
    elbo = LFVI(num_particles=5)
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    svi.step(problem.data)
    result = check_stationarity(elbo, problem.model, problem.guide, problem.data, warn=False)
    assert list(result) == ["mu"]
