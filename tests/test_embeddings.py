"""Embedding networks chosen from the shape of the observed data points."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from torch import nn

from pyro_lfvi import (
    LFVI,
    ContrastiveRatioEstimator,
    ConvEmbedding,
    DeepSetEmbedding,
    DiscriminatorError,
    ImplicitSite,
    MLPEmbedding,
    default_embedding,
)
from pyro_lfvi.embeddings import PointShape


@pytest.mark.parametrize(
    "point, kind, out_size",
    [
        (PointShape(1, ()), nn.Identity, 1),
        (PointShape(1, (5,)), nn.Identity, 5),
        (PointShape(1, (16,)), nn.Identity, 16),
        (PointShape(1, (20,)), MLPEmbedding, 20),
        (PointShape(1, (40,)), MLPEmbedding, 32),
        (PointShape(1, (30, 2)), ConvEmbedding, 32),
        (PointShape(12, ()), DeepSetEmbedding, 8),
        (PointShape(12, (3,)), DeepSetEmbedding, 18),
    ],
)
def test_default_embedding_follows_the_point_shape(point, kind, out_size):
    net = default_embedding(point)
    assert isinstance(net, kind)
    out = net(torch.randn(7, *point.shape)).reshape(7, -1)
    assert out.shape == (7, out_size)


def test_deep_set_is_permutation_invariant():
    net = DeepSetEmbedding(3, 8)
    x = torch.randn(4, 10, 3)
    perm = torch.randperm(10)
    assert torch.allclose(net(x), net(x[:, perm]), atol=1e-6)


def series_problem(estimator=None):
    T = 16
    data = torch.randn(6, T, 2).cumsum(1)

    def sim(scale):
        return (scale[..., None, None] * torch.randn((*scale.shape, T, 2))).cumsum(-2)

    def model(data):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with pyro.plate("series", 6):
            pyro.sample("x", ImplicitSite(sim, s, event_shape=(T, 2)), obs=data)

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(0.5), constraint=constraints.positive)
        pyro.sample("s", dist.LogNormal(loc, scale))

    return data, model, guide


def test_time_series_site_gets_a_convolution():
    data, model, guide = series_problem()
    elbo = LFVI()
    elbo.loss_and_grads(model, guide, data)
    assert isinstance(elbo.estimator.network.embeddings["x"], ConvEmbedding)


def test_nested_exchangeable_plate_gets_a_deep_set():
    data = torch.randn(5, 12)

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        with pyro.plate("groups", 5, dim=-2):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            with pyro.plate("obs", 12, dim=-1):
                pyro.sample("y", ImplicitSite(lambda t: t + torch.randn_like(t), theta), obs=data)

    def guide(data):
        pyro.sample("mu", dist.Normal(pyro.param("mu_loc", torch.tensor(0.0)), 1.0))
        loc = pyro.param("theta_loc", torch.zeros(5, 1))
        with pyro.plate("groups", 5, dim=-2):
            pyro.sample("theta", dist.Normal(loc, 1.0))

    elbo = LFVI()
    elbo.loss_and_grads(model, guide, data)
    assert isinstance(elbo.estimator.network.embeddings["y"], DeepSetEmbedding)


def test_a_user_embedding_is_trained_with_the_estimator():
    data, model, guide = series_problem()
    mine = nn.Sequential(nn.Flatten(), nn.Linear(32, 4))
    elbo = LFVI(estimator=ContrastiveRatioEstimator(embedding=mine))
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    before = mine[1].weight.detach().clone()
    svi.step(data)
    assert not torch.equal(before, mine[1].weight.detach())


def test_an_embedding_of_the_wrong_input_size_is_explained():
    data, model, guide = series_problem()
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(7, 4))
    elbo = LFVI(estimator=ContrastiveRatioEstimator(embedding=wrong))
    with pytest.raises(DiscriminatorError, match=r"embedding network failed on data points"):
        elbo.loss_and_grads(model, guide, data)


def test_an_embedding_dict_must_cover_every_observed_site():
    data, model, guide = series_problem()
    elbo = LFVI(estimator=ContrastiveRatioEstimator(embedding={"y": nn.Flatten()}))
    with pytest.raises(ValueError, match=r"an embedding for observed sites \['x'\]"):
        elbo.loss_and_grads(model, guide, data)
