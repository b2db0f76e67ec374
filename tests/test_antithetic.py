"""Antithetic particles: mirrored pairs, each particle still the guide's draw, less noise."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN
from torch.distributions import constraints

from pyro_lfvi import LFVI
from pyro_lfvi.antithetic import AntitheticMessenger, mirror_partners, mirrored_rsample
from pyro_lfvi.contrastive import _shift
from pyro_lfvi.examples import ConjugateNormal
from pyro_lfvi.examples.series import PooledSeries

K = 8


def particles(fn):
    """``fn`` expanded over a particle dim of K at the left."""
    return fn.expand(torch.Size([K]) + fn.batch_shape)


def test_normal_pairs_mirror_about_the_location():
    loc, scale = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    x = mirrored_rsample(particles(dist.Normal(loc, scale)), 0)
    assert x.shape == (K, 2)
    assert torch.allclose(x[: K // 2] + x[K // 2 :], 2 * loc.expand(K // 2, 2), atol=1e-5)
    assert not torch.allclose(x[0], x[1])


def test_log_normal_and_independent_pairs_mirror_in_the_base_space():
    fn = dist.LogNormal(torch.zeros(3), torch.ones(3)).to_event(1)
    x = mirrored_rsample(particles(fn), 0)
    assert x.shape == (K, 3)
    assert torch.allclose(x[: K // 2] * x[K // 2 :], torch.ones(K // 2, 3), atol=1e-4)


def test_multivariate_normal_pairs_mirror_about_the_location():
    loc = torch.tensor([1.0, 2.0])
    tril = torch.tensor([[1.0, 0.0], [0.7, 0.4]])
    x = mirrored_rsample(particles(dist.MultivariateNormal(loc, scale_tril=tril)), 0)
    assert torch.allclose(x[: K // 2] + x[K // 2 :], 2 * loc.expand(K // 2, 2), atol=1e-5)


def test_a_flow_mirrors_its_base_noise():
    flow = AffineAutoregressive(AutoRegressiveNN(2, [8]))
    fn = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
    x = mirrored_rsample(particles(fn), 0)
    base = flow.inv(x)
    assert torch.allclose(base[: K // 2], -base[K // 2 :], atol=1e-4)


def test_an_odd_last_particle_is_drawn_as_usual():
    fn = dist.Normal(torch.zeros(5), 1.0)
    x = mirrored_rsample(fn, 0)
    assert torch.allclose(x[:2], -x[2:4])
    assert x[4] != 0


@pytest.mark.parametrize(
    "fn",
    [dist.HalfNormal(torch.ones(K)), dist.Gamma(torch.ones(K), 1.0), dist.Delta(torch.ones(K))],
    ids=["half_normal", "gamma", "delta"],
)
def test_other_distributions_are_not_mirrored(fn):
    assert mirrored_rsample(fn, 0) is None


def test_each_particle_keeps_the_guides_distribution():
    """Over 20,000 steps, every particle's draws (the mirrored half included)
    have the guide's mean and sd, to 4 standard errors."""
    loc, scale = 1.5, 0.5
    fn = particles(dist.Normal(torch.tensor(loc), scale))
    draws = torch.stack([mirrored_rsample(fn, 0) for _ in range(20000)])
    se_mean = scale / 20000**0.5
    se_sd = scale / (2 * 20000) ** 0.5
    assert (draws.mean(0) - loc).abs().max() < 4 * se_mean
    assert (draws.std(0) - scale).abs().max() < 4 * se_sd


def test_the_handler_mirrors_latents_and_leaves_everything_else():
    def guide():
        loc = pyro.param("loc", torch.tensor(0.3))
        scale = pyro.param("scale", torch.tensor(0.2), constraint=constraints.positive)
        pyro.sample("z", dist.Normal(loc, scale))
        pyro.sample("g", dist.Gamma(2.0, 1.0))
        pyro.sample("fixed", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(7.0))

    plate = pyro.plate("particles", K, dim=-1)
    run = pyro.poutine.condition(AntitheticMessenger(-1, K)(plate(guide)), data={"fixed": 0.5})
    trace = pyro.poutine.trace(run).get_trace()
    z = trace.nodes["z"]["value"]
    assert torch.allclose(z[: K // 2] + z[K // 2 :], torch.full((K // 2,), 0.6), atol=1e-5)
    assert z.requires_grad  # the reparameterised gradient still reaches loc and scale
    g = trace.nodes["g"]["value"]
    assert not torch.allclose(g[: K // 2] + g[K // 2 :], g[: K // 2].mean() * 2)
    assert float(trace.nodes["fixed"]["value"]) == 0.5
    assert float(trace.nodes["x"]["value"]) == 7.0


def test_a_site_outside_the_particle_dim_is_left_alone():
    def guide():
        pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    trace = pyro.poutine.trace(AntitheticMessenger(-1, K)(guide)).get_trace()
    assert trace.nodes["z"]["value"].shape == (3,)


def test_a_nonnegative_dim_is_refused():
    with pytest.raises(ValueError, match="Expected a negative plate dim, actual 0"):
        AntitheticMessenger(0, K)


def test_lfvi_refuses_a_non_bool():
    with pytest.raises(ValueError, match="Expected antithetic to be True or False, actual 'yes'"):
        LFVI(antithetic="yes")


def scale_gradients(antithetic, repeats=200):
    """Gradients of the minibatched ELBO of PooledSeries' explicit twin (8
    vectorised particles) with respect to the guide's unconstrained scale of
    ``a``, with the guide at the exact posterior of 10,000 series."""
    problem = PooledSeries(num_series=10_000, batch_size=100)
    exact = problem.exact()
    pyro.param("a_loc", exact["a"][0].float())
    pyro.param("a_scale", exact["a"][1].float(), constraint=constraints.positive)
    pyro.param("log_sigma_loc", exact["log_sigma"][0].float())
    pyro.param("log_sigma_scale", exact["log_sigma"][1].float(), constraint=constraints.positive)

    plate = pyro.plate("particles", K, dim=-2)
    guide = plate(problem.guide)
    if antithetic:
        guide = AntitheticMessenger(-2, K)(guide)
    unconstrained = pyro.get_param_store().get_param("a_scale").unconstrained()
    grads = []
    for _ in range(repeats):
        guide_trace = pyro.poutine.trace(guide).get_trace(problem.data)
        model_trace = pyro.poutine.trace(
            pyro.poutine.replay(plate(problem.minibatch_twin), trace=guide_trace)
        ).get_trace(problem.data)
        elbo = (model_trace.log_prob_sum() - guide_trace.log_prob_sum()) / K
        (grad,) = torch.autograd.grad(elbo, [unconstrained])
        grads.append(float(grad))
    return torch.tensor(grads)


def test_mirrored_pairs_cut_the_minibatch_noise_of_a_scale_gradient():
    """At the exact posterior the expected gradient is about 0. The
    first-order term that mirroring cancels has about sqrt(N/B) = 10 times the
    sd of the rest at 10,000 series in minibatches of 100: expect the variance
    to fall by far more than the factor of 10 required here."""
    plain = scale_gradients(False)
    mirrored = scale_gradients(True)
    assert plain.var() > 10 * mirrored.var()


def test_shuffled_pairings_skip_the_mirror_image_only_when_mirrored():
    mirrored = {_shift(8, True) for _ in range(500)}
    plain = {_shift(8, False) for _ in range(500)}
    assert mirrored == {1, 2, 3, 5, 6, 7}
    assert plain == set(range(1, 8))


@pytest.mark.parametrize("num_particles, mirrored", [(8, True), (5, False), (2, False)])
def test_lfvi_mirrors_an_even_number_of_particles(num_particles, mirrored):
    problem = ConjugateNormal()
    elbo = LFVI(num_particles=num_particles, antithetic=True)
    (pair,) = elbo._pair(problem.model, problem.guide, (problem.data,), {})
    assert pair.mirrored is mirrored
    mu = pair.q_global["mu"][..., 0]
    half = num_particles // 2
    loc = pyro.param("mu_loc")
    assert torch.allclose(mu[:half] + mu[half : 2 * half], 2 * loc, atol=1e-4) is mirrored


def test_lfvi_rounds_its_own_particle_count_up_to_even():
    problem = ConjugateNormal(batch_size=30)  # 256 simulations / 30 points: 9 particles
    elbo = LFVI(antithetic=True)
    (pair,) = elbo._pair(problem.model, problem.guide, (problem.data,), {})
    assert elbo.num_particles == 10 and pair.mirrored
    plain = LFVI()
    (pair,) = plain._pair(problem.model, problem.guide, (problem.data,), {})
    assert plain.num_particles == 9 and not pair.mirrored


@pytest.mark.parametrize("size", [2, 4, 5, 8, 13])
def test_mirror_partners_index_each_draws_mirror_image(size):
    # The mirrored draws of a Normal: entry mirror_partners[k] is minus entry k, except an
    # odd last entry, which is its own partner and stays as drawn.
    base = dist.Normal(torch.zeros(size), 1.0)
    draws = mirrored_rsample(base, 0)
    partner = mirror_partners(size)
    assert sorted(partner.tolist()) == list(range(size))
    own = partner == torch.arange(size)
    assert own.sum() == size % 2
    assert torch.equal(draws[partner][~own], -draws[~own])
