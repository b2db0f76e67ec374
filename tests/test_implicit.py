import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyro_lfvi import ImplicitDensityError, ImplicitSite, SimulatorError


def add_noise(loc):
    return loc + torch.randn_like(loc)


def test_shapes_known_without_running_the_simulator():
    calls = []

    def sim(loc):
        calls.append(loc.shape)
        return loc + torch.randn_like(loc)

    d = ImplicitSite(sim, torch.zeros(4, 3))
    assert d.batch_shape == (4, 3) and d.event_shape == ()
    assert calls == []
    assert d.sample((2,)).shape == (2, 4, 3)
    assert calls == [(2, 4, 3)]


def test_param_vectors_per_point_with_param_event_dims():
    seen = []

    def sim(rates, scale):
        seen.append((rates.shape, scale.shape))
        return rates.sum(-1) * scale + torch.randn(rates.shape[:-1])

    d = ImplicitSite(sim, torch.rand(5, 3), torch.ones(5), param_event_dims=(1, 0))
    assert d.batch_shape == (5,)
    assert d.sample().shape == (5,)
    assert seen[-1] == ((5, 3), (5,))


def test_event_shape_and_support():
    d = ImplicitSite(
        lambda m: m.unsqueeze(-1).exp() * torch.ones(4),
        torch.zeros(2),
        event_shape=(4,),
        support=constraints.positive,
    )
    assert d.shape() == (2, 4)
    assert d.support.event_dim == 1
    assert d.support.check(d.sample()).all()


def test_broadcasts_inside_nested_and_subsampled_plates():
    seen = []

    def sim(beta, z):
        seen.append((beta.shape, z.shape))
        return z + beta + torch.randn_like(z)

    def model():
        beta = pyro.sample("beta", dist.Normal(0.0, 1.0))
        with pyro.plate("outer", 10, subsample_size=4, dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("inner", 3, dim=-2):
                return pyro.sample("x", ImplicitSite(sim, beta, z))

    x = model()
    assert x.shape == (3, 4)
    assert seen[-1] == ((3, 4), (3, 4))


def test_rsample_only_when_declared_differentiable():
    loc = torch.zeros(3, requires_grad=True)
    d = ImplicitSite(add_noise, loc, reparameterized=True)
    assert d.has_rsample
    d.rsample().sum().backward()
    assert torch.allclose(loc.grad, torch.ones(3))
    plain = ImplicitSite(add_noise, loc)
    assert not plain.has_rsample
    assert not plain.sample().requires_grad
    with pytest.raises(NotImplementedError, match="reparameterized=True"):
        plain.rsample()


def test_expand_keeps_simulator_and_checks_shape():
    d = ImplicitSite(add_noise, torch.zeros(3)).expand((2, 3))
    assert d.batch_shape == (2, 3)
    assert d.sample().shape == (2, 3)


def test_log_prob_raises_a_message_that_names_site_and_fix():
    def model():
        pyro.sample("x", ImplicitSite(add_noise, torch.zeros(2)), obs=torch.zeros(2))

    def guide():
        pass

    elbo = pyro.infer.Trace_ELBO()
    with pytest.raises(
        ImplicitDensityError, match=r"simulator 'add_noise' is implicit.*Trace_ELBO.*LFVI"
    ):
        elbo.loss(model, guide)
    with pytest.raises(NotImplementedError, match=r"pyro_lfvi\.LFVI"):
        ImplicitSite(add_noise, torch.zeros(2)).log_prob(torch.zeros(2))


def test_wrong_shape_names_site_expected_and_actual():
    def model():
        with pyro.plate("data", 5):
            pyro.sample("x", ImplicitSite(lambda m: torch.zeros(3), torch.zeros(5)))

    with pytest.raises(SimulatorError, match=r"site 'x'.*shape \(5,\).*actual \(3,\)"):
        pyro.poutine.trace(pyro_lfvi_named(model)).get_trace()


def test_nan_and_inf_are_refused():
    d = ImplicitSite(lambda m: m / 0.0, torch.zeros(2))
    with pytest.raises(SimulatorError, match="NaN or inf"):
        d.sample()
    d = ImplicitSite(lambda m: m + float("inf"), torch.zeros(2))
    with pytest.raises(SimulatorError, match="NaN or inf"):
        d.sample()


def test_numpy_and_non_vectorised_simulators():
    def np_sim(loc):
        return np.asarray(loc, dtype=np.float64) + np.random.default_rng(0).normal(size=loc.shape)

    d = ImplicitSite(np_sim, torch.zeros(4))
    x = d.sample()
    assert x.dtype == torch.float32 and x.shape == (4,)

    calls = []

    def one_at_a_time(loc):
        calls.append(loc.shape)
        return float(loc) + 1.0

    d = ImplicitSite(one_at_a_time, torch.zeros(2, 3), vectorized=False)
    assert torch.equal(d.sample(), torch.ones(2, 3))
    assert calls == [()] * 6


def pyro_lfvi_named(fn):
    from pyro_lfvi.handlers import name_implicit_sites

    return name_implicit_sites(fn)


def test_to_event_stays_implicit_and_simulates_as_before():
    calls = []

    def sim(loc):
        calls.append(loc.shape)
        return loc + torch.randn_like(loc)

    site = ImplicitSite(sim, torch.zeros(4, 3)).to_event(1)
    assert isinstance(site, ImplicitSite)
    assert site.batch_shape == (4,) and site.event_shape == (3,)
    assert site.sample((2,)).shape == (2, 4, 3) and calls[-1] == (2, 4, 3)
    assert site.expand((5, 4)).sample().shape == (5, 4, 3) and calls[-1] == (5, 4, 3)
    with pytest.raises(ImplicitDensityError):
        site.log_prob(torch.zeros(4, 3))

    each = ImplicitSite(lambda m: float(m) + 1.0, torch.zeros(2, 3), vectorized=False).to_event()
    assert each.event_shape == (2, 3) and torch.equal(each.sample(), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"reinterpreted_batch_ndims between 0 and the batch"):
        ImplicitSite(sim, torch.zeros(4)).to_event(2)
