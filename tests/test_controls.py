"""Training controls: discriminator steps and optimiser, warm-up, fixed weights, per-param lr."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI

from pyro_lfvi import LFVI, ImplicitSite, MLPDiscriminator, load_checkpoint, save_checkpoint

N = 50


def problem(calls):
    data = 1.0 + torch.randn(N)

    def model(data):
        calls.append(1)
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", N, subsample_size=20) as i:
            pyro.sample("x", ImplicitSite(lambda m: m + torch.randn_like(m), mu), obs=data[i])

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    return data, model, guide


def weights(name="lfvi_discriminator"):
    store = pyro.get_param_store()
    return {
        k: store[k].detach().clone()
        for k in store.keys()
        if k.startswith(name) and "standardization" not in k
    }


def loc_value():
    return float(pyro.param("loc").detach())


def changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_discriminator_optim_trains_discriminator_k_times_and_svi_only_the_guide():
    calls = []
    data, model, guide = problem(calls)
    elbo = LFVI(discriminator_steps=3, discriminator_optim=pyro.optim.Adam({"lr": 0.0}))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    svi.step(data)
    before, loc = weights(), loc_value()
    calls.clear()
    svi.step(data)
    # The discriminator's own optimiser (lr 0) is the only one that moves it.
    assert before and not changed(before, weights())
    assert loc_value() != loc
    # Three discriminator-only updates and one joint step, two model runs each.
    assert len(calls) == 2 * (3 + 1)


def test_discriminator_optim_moves_the_discriminator_while_guide_is_frozen():
    data, model, guide = problem([])
    elbo = LFVI(discriminator_steps=2, discriminator_optim=pyro.optim.Adam({"lr": 0.01}))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.0}), elbo)
    svi.step(data)
    before = weights()
    svi.step(data)
    assert changed(before, weights()) == set(before)
    assert loc_value() == 0.0


@pytest.mark.parametrize(
    "estimator, name", [("contrastive", "lfvi_ratio"), ("joint", "lfvi_discriminator")]
)
def test_warmup_keeps_the_guide_still_while_the_discriminator_trains(estimator, name):
    data, model, guide = problem([])
    elbo = LFVI(warmup_steps=3, estimator=estimator)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    locs, disc = [], []
    for _ in range(5):
        svi.step(data)
        locs.append(loc_value())
        disc.append(weights(name))
    assert locs[:3] == [0.0, 0.0, 0.0]
    assert locs[3] != 0.0 and locs[4] != locs[3]
    assert changed(disc[0], disc[1])


def test_zero_discriminator_steps_keeps_a_given_discriminator_fixed():
    data, model, guide = problem([])
    net = MLPDiscriminator(2, (8,))
    elbo = LFVI(discriminator=net, discriminator_steps=0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    svi.step(data)
    before = weights()
    for _ in range(3):
        svi.step(data)
    assert before and not changed(before, weights())
    assert loc_value() != 0.0


def test_per_parameter_learning_rates_recipe():
    """The README's recipe: one SVI optimiser, a smaller lr for the discriminator."""
    data, model, guide = problem([])

    def per_param(name):
        return {"lr": 0.0 if name.startswith("lfvi_ratio") else 0.05}

    svi = SVI(model, guide, pyro.optim.Adam(per_param), LFVI())
    svi.step(data)
    before = weights("lfvi_ratio")
    svi.step(data)
    assert before and not changed(before, weights("lfvi_ratio"))
    assert loc_value() != 0.0


def test_differentiable_loss_value_is_the_negative_elbo_in_every_mode():
    data, model, guide = problem([])
    elbo = LFVI(discriminator_steps=2, discriminator_optim=pyro.optim.Adam({"lr": 0.01}))
    pyro.set_rng_seed(3)
    value = elbo.differentiable_loss(model, guide, data)
    assert float(value.detach()) == pytest.approx(-elbo.history[-1]["elbo"])


def test_differentiable_loss_value_is_the_negative_elbo_with_extra_terms():
    # The adversarial generator term and the implicit-prior classifier's loss
    # enter the gradient, not the value.
    data = 1.0 + torch.randn(N)

    def model(data):
        prior = ImplicitSite(lambda s: s * torch.randn_like(s), torch.tensor(5.0))
        mu = pyro.sample("mu", prior)
        shift = pyro.param("shift", torch.tensor(0.0))
        with pyro.plate("data", N, subsample_size=20) as i:
            site = ImplicitSite(lambda m: m + torch.randn_like(m), mu + shift, reparameterized=True)
            pyro.sample("x", site, obs=data[i])

    _, _, guide = problem([])
    elbo = LFVI(model_params="adversarial")
    value = elbo.differentiable_loss(model, guide, data)
    assert float(value.detach()) == pytest.approx(-elbo.history[-1]["elbo"])
    pyro.set_rng_seed(5)
    step = elbo._objectives(model, guide, (data,), {})
    assert float(step.generator_loss.detach()) != 0.0
    assert float(step.prior_loss.detach()) != 0.0
    value.backward()
    assert pyro.param("shift").grad is not None


def test_implicit_prior_classifier_trains_during_warmup():
    data = 1.0 + torch.randn(N)

    def model(data):
        mu = pyro.sample("mu", ImplicitSite(lambda s: s * torch.randn_like(s), torch.tensor(5.0)))
        with pyro.plate("data", N, subsample_size=20) as i:
            pyro.sample("x", ImplicitSite(lambda m: m + torch.randn_like(m), mu), obs=data[i])

    _, _, guide = problem([])
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), LFVI(warmup_steps=3))
    svi.step(data)
    before = weights("lfvi_discriminator_prior_mu")
    svi.step(data)
    assert before and changed(before, weights("lfvi_discriminator_prior_mu")) == set(before)
    assert loc_value() == 0.0


def test_checkpoint_keeps_the_discriminator_optimiser_state(tmp_path):
    data, model, guide = problem([])

    def make():
        return LFVI(discriminator_steps=2, discriminator_optim=pyro.optim.Adam({"lr": 0.01}))

    elbo = make()
    optim = pyro.optim.Adam({"lr": 0.05})
    svi = SVI(model, guide, optim, elbo)
    for _ in range(3):
        svi.step(data)
    save_checkpoint(tmp_path / "c.pt", optim, elbo)
    for _ in range(2):
        svi.step(data)
    expected = weights()
    pyro.clear_param_store()
    elbo2 = make()
    optim2 = pyro.optim.Adam({"lr": 0.05})
    load_checkpoint(tmp_path / "c.pt", optim2, elbo2)
    svi2 = SVI(model, guide, optim2, elbo2)
    for _ in range(2):
        svi2.step(data)
    got = weights()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"discriminator_steps": -1}, "discriminator_steps to be an integer >= 0"),
        ({"discriminator_steps": 2}, "discriminator_steps <= 1 without discriminator_optim"),
        ({"discriminator_steps": 0}, "trained discriminator= with discriminator_steps=0"),
        ({"discriminator_optim": torch.optim.Adam}, "pyro.optim optimiser"),
        ({"warmup_steps": 1.5}, "warmup_steps to be an integer >= 0"),
    ],
)
def test_control_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LFVI(**kwargs)
