"""Simulators that are not PyTorch: numpy, float64, one draw at a time."""

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from fitting import standardized_errors, train
from pyro.distributions import constraints

from pyro_lfvi import LFVI, ImplicitSite
from pyro_lfvi.examples import ConjugateNormal


def numpy_normal(mu):
    """A black box: numpy in, numpy float64 out, numpy's own random state."""
    mu = np.asarray(mu, dtype=np.float64)
    return mu + np.random.normal(size=mu.shape)


class NumpyConjugate(ConjugateNormal):
    def model(self, data):
        mu = pyro.sample("mu", dist.Normal(0.0, self.prior_scale))
        with pyro.plate("data", self.num_data, subsample_size=self.batch_size) as idx:
            pyro.sample("x", ImplicitSite(numpy_normal, mu), obs=data[idx])


def test_numpy_float64_simulator_as_likelihood_reaches_exact_posterior():
    problem = NumpyConjugate(num_data=300, batch_size=50)
    train(problem, num_steps=2500, lr=0.01, final_lr=0.0005)
    err = standardized_errors(problem.fitted(), problem.exact())["mu"]
    # Looser than the torch test (fewer steps and data): 0.5 sds, factor 1.3.
    assert abs(err["mean_error_sd"]) < 0.5, err
    assert 1 / 1.3 < err["sd_ratio"] < 1.3, err


def test_non_vectorised_simulator_is_mapped_over_the_batch():
    calls = []

    def one_draw(mu):  # takes one scalar parameter set, returns a Python float
        calls.append(np.shape(mu))
        return float(mu) + float(np.random.normal())

    data = torch.randn(6)

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", ImplicitSite(one_draw, mu, vectorized=False), obs=data)

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), LFVI(num_particles=4))
    svi.step(data)
    assert calls and all(shape == () for shape in calls)
    assert len(calls) == 4 * 6  # p-side only: one call per particle and data point
    assert torch.isfinite(pyro.param("loc")).all()


def test_numpy_implicit_local_prior_and_likelihood():
    data = torch.randn(8) + 2.0

    def model(data):
        beta = pyro.sample("beta", dist.Normal(0.0, 3.0))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", ImplicitSite(numpy_normal, beta))
            pyro.sample("x", ImplicitSite(numpy_normal, z), obs=data)

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("beta", dist.Normal(loc, 0.5))
        z_loc = pyro.param("z_loc", torch.zeros(len(data)))
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Normal(z_loc, 0.5))

    elbo = LFVI()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    for _ in range(100):
        svi.step(data)
    # The guide moves towards the data although no simulator gives gradients.
    assert float(pyro.param("loc").detach()) > 0.5
    assert all(np.isfinite(h["elbo"]) for h in elbo.history)
