"""The examples' structured guides: locals whose location and scale follow the globals."""

import math

import pyro
import pytest
import torch
from fitting import decaying_adam, standardized_errors

from pyro_lfvi.examples import LocalSeries
from pyro_lfvi.examples.structured import coupled_locals


def test_local_scale_follows_the_globals_deviations():
    deviation = torch.tensor([[0.5, -1.0], [0.0, 2.0]])  # two draws of two globals
    pyro.param("z_loc", torch.tensor([1.0, 2.0, 3.0]))
    pyro.param("z_scale", torch.tensor([0.5, 1.0, 2.0]))
    pyro.param("z_coupling", torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    pyro.param("z_scale_coupling", torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5]]))
    loc, scale = coupled_locals("z", deviation.unsqueeze(-2), 3, 0.0, 1.0)
    expected_loc = torch.tensor([[1.5, 1.0, 2.5], [1.0, 4.0, 5.0]])
    expected_scale = torch.tensor(
        [[0.5, math.exp(0.5), 2 * math.exp(-0.5)], [0.5, 1.0, 2 * math.exp(1.0)]]
    )
    assert torch.allclose(loc, expected_loc)
    assert torch.allclose(scale, expected_scale)


def test_scale_coupling_starts_at_zero():
    loc, scale = coupled_locals("w", torch.randn(5, 1, 3), 4, 0.5, 0.3)
    assert torch.equal(pyro.param("w_scale_coupling"), torch.zeros(4, 3))
    assert torch.allclose(loc, torch.full((5, 4), 0.5))
    assert torch.allclose(scale, torch.full((5, 4), 0.3))


# The family's own reach, with the exact likelihood: Pyro's Trace_ELBO on the explicit
# twin, 2,000 steps (the LFVI accuracy test's schedule). Targets from the issue "Posteriors
# you can trust on real simulators": global sds within 0.8-1.25x NUTS's. Without the scale
# coupling the log tau sd was 0.83 / 0.87 / 0.72x on seeds 0 / 1 / 2.
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_structured_guide_family_reaches_the_population_scale_with_exact_likelihood(seed):
    pyro.set_rng_seed(seed)
    problem = LocalSeries()
    reference = problem.reference()
    pyro.clear_param_store()
    elbo = pyro.infer.Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    svi = pyro.infer.SVI(
        problem.twin, problem.structured_guide, decaying_adam(2000, 0.01, 0.0005), elbo
    )
    for _ in range(2000):
        svi.step(problem.data)
    err = standardized_errors(problem.guide_moments(problem.structured_guide), reference)
    for name in ("mu", "log_tau", "log_sigma"):
        assert 0.8 < err[name]["sd_ratio"] < 1.25, (name, err)
