"""Bad input: a clear error, and the parameter store left as it was."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from torch import nn

from pyro_lfvi import (
    LFVI,
    DiscriminatorError,
    ImplicitSite,
    ModelStructureError,
    SimulatorError,
)

DATA = torch.randn(8)


def noisy(loc):
    return loc + torch.randn_like(loc)


def normal_guide(data):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def model_with(sim=noisy, prior=None):
    def model(data):
        mu = pyro.sample("mu", prior if prior is not None else dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", ImplicitSite(sim, mu), obs=data)

    return model


def snapshot():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def assert_untouched(before):
    after = snapshot()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def svi_with(model, guide, elbo=None):
    return pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo or LFVI())


@pytest.fixture
def trained_store():
    """A store with trained values, so that 'untouched' means something."""
    svi = svi_with(model_with(), normal_guide)
    for _ in range(2):
        svi.step(DATA)
    return snapshot()


def test_global_implicit_prior_whose_simulator_ignores_the_batch(trained_store):
    # Implicit global priors are supported (pyro_lfvi.global_ratio), but their
    # simulator must return one draw per batch element, as for any site.
    model = model_with(prior=ImplicitSite(lambda: torch.randn(()), batch_shape=()))
    with pytest.raises(SimulatorError, match=r"site 'mu' to return shape"):
        svi_with(model, normal_guide).step(DATA)
    assert_untouched(trained_store)


def test_global_with_implicit_guide(trained_store):
    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("mu", ImplicitSite(noisy, loc, reparameterized=True))

    with pytest.raises(ModelStructureError, match=r"Global site 'mu' has an implicit guide"):
        svi_with(model_with(), guide).step(DATA)
    assert_untouched(trained_store)


def test_global_with_non_reparameterised_guide():
    def model(data):
        k = pyro.sample("k", dist.Poisson(3.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", ImplicitSite(noisy, k), obs=data)

    def guide(data):
        rate = pyro.param("rate", torch.tensor(2.0), constraint=constraints.positive)
        pyro.sample("k", dist.Poisson(rate))

    with pytest.raises(ModelStructureError, match=r"Global site 'k'.*without rsample"):
        svi_with(model, guide).step(DATA)
    assert snapshot() == {}


def test_model_latent_missing_from_guide(trained_store):
    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample(
                "x", ImplicitSite(lambda m, s: m + s * torch.randn_like(m), mu, s), obs=data
            )

    with pytest.raises(ModelStructureError, match=r"guide.*lacks 's'"):
        svi_with(model, normal_guide).step(DATA)
    assert_untouched(trained_store)


def test_model_without_observed_site():
    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", ImplicitSite(noisy, mu))

    with pytest.raises(ModelStructureError, match=r"at least one observed site.*obs="):
        svi_with(model, normal_guide).step(DATA)
    assert snapshot() == {}


def test_simulator_wrong_shape_names_site_and_shapes(trained_store):
    model = model_with(sim=lambda mu: torch.zeros(3))
    with pytest.raises(SimulatorError, match=r"site 'x'.*shape \(8,\).*actual \(3,\)"):
        svi_with(model, normal_guide, LFVI(num_particles=1)).step(DATA)
    assert_untouched(trained_store)


def test_simulator_wrong_shape_under_vectorised_particles(trained_store):
    model = model_with(sim=lambda mu: torch.zeros(8))
    with pytest.raises(SimulatorError, match=r"site 'x'.*shape \(\d+, 8\).*actual \(8,\)"):
        svi_with(model, normal_guide).step(DATA)
    assert_untouched(trained_store)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_simulator_nan_or_inf_midway_leaves_store_untouched(trained_store, bad):
    model = model_with(sim=lambda mu: mu + bad * torch.ones_like(mu))
    with pytest.raises(SimulatorError, match=r"site.*'x'.*NaN or inf"):
        svi_with(model, normal_guide).step(DATA)
    assert_untouched(trained_store)


class WrongShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, observed, local, global_):
        return self.w * observed["x"]  # (P, M, 1) instead of (P, M)


def test_custom_discriminator_wrong_shape():
    elbo = LFVI(discriminator=WrongShape(), discriminator_name="mine")
    with pytest.raises(DiscriminatorError, match=r"shape \(8, 8\).*actual \(8, 8, 1\)"):
        svi_with(model_with(), normal_guide, elbo).step(DATA)
    assert snapshot() == {}


def test_default_net_is_not_stored_when_the_first_step_fails():
    model = model_with(sim=lambda mu: torch.zeros(3))
    with pytest.raises(SimulatorError):
        svi_with(model, normal_guide).step(DATA)
    assert snapshot() == {}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_num_particles_must_be_positive_int(bad):
    with pytest.raises(ValueError, match=r"Expected num_particles to be an integer >= 1, actual"):
        LFVI(num_particles=bad)


def test_unknown_ratio_loss():
    with pytest.raises(ValueError, match=r"Expected ratio_loss to be 'log', 'hinge'.*actual 'kl'"):
        LFVI(ratio_loss="kl")


def test_other_constructor_arguments():
    with pytest.raises(ValueError, match=r"Expected discriminator to be a torch\.nn\.Module"):
        LFVI(discriminator=lambda *a: None)
    with pytest.raises(ValueError, match="Expected widen >= 1"):
        LFVI(widen=0.5)
    with pytest.raises(ValueError, match="Expected each of hidden_sizes to be an integer"):
        LFVI(hidden_sizes=(64, 0))
    with pytest.raises(ValueError, match="Expected discriminator_name to be a non-empty str"):
        LFVI(discriminator_name="")
