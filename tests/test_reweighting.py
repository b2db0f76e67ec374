"""Importance reweighting against tilts of the guide whose effect is known exactly."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_lfvi import LFVI, EstimatorCheck, reweighted_globals
from pyro_lfvi.examples import ConjugateNormal
from pyro_lfvi.reweighting import (
    PosteriorShift,
    effective_fraction,
    log_weights,
    posterior_shift,
    systematic_resample,
)


def guide_pairs(num=64):
    """Pairings of the conjugate example (minibatches of 100 of 1,000 points)
    with the guide at the exact posterior, and that posterior's mean and sd."""
    problem = ConjugateNormal()
    mean, sd = problem.exact()["mu"]
    pyro.param("mu_loc", torch.as_tensor(mean))
    pyro.param("mu_scale", torch.as_tensor(sd))
    elbo = LFVI()
    with torch.no_grad():
        pairs = [
            elbo._pair(problem.model, problem.guide, (problem.data,), {})[0] for _ in range(num)
        ]
    return pairs, float(mean), float(sd)


def spread(pair, total):
    """Per data point values whose minibatch sum, scaled to the full data, is
    ``total`` (one per particle)."""
    points, full = pair.roles.num_points, pair.roles.full_size
    return (total / full).reshape(-1, 1).expand(pair.num_particles, points)


def draws(pair):
    return pair.q_global["mu"].reshape(-1)


def zero(pair):
    return torch.zeros(pair.num_particles, pair.roles.num_points)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_log_ratios_move_nothing(seed):
    torch.manual_seed(seed)
    pairs, _, _ = guide_pairs()
    # A function of the data alone is no change for the posterior.
    shift = posterior_shift(zero, lambda p: zero(p) + 3.0, pairs)
    assert set(shift) == {"mu"}
    assert isinstance(shift["mu"], PosteriorShift)
    assert shift["mu"].mean == pytest.approx(0.0, abs=1e-9)
    assert shift["mu"].sd_factor == pytest.approx(1.0, abs=1e-9)
    assert shift["mu"].effective == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_linear_tilt_moves_the_mean_by_its_slope(seed):
    # A Normal guide tilted by exp(a (mu - m) / s) is Normal(m + a s, s):
    # the mean moves by a sds, the sd stays; the weights' effective sample
    # size is exp(-a^2) of the draws.
    torch.manual_seed(seed)
    pairs, mean, sd = guide_pairs()
    slope = 0.5
    shift = posterior_shift(zero, lambda p: spread(p, slope * (draws(p) - mean) / sd), pairs)["mu"]
    assert shift.mean == pytest.approx(slope, abs=0.15)
    assert shift.sd_factor == pytest.approx(1.0, abs=0.1)
    assert shift.effective == pytest.approx(math.exp(-(slope**2)), abs=0.07)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_quadratic_tilt_narrows_the_sd(seed):
    # Tilted by exp(-c (mu - m)^2 / (2 s^2)) the sd is s / sqrt(1 + c): 0.8 s for c = 0.5625.
    torch.manual_seed(seed)
    pairs, mean, sd = guide_pairs()
    c = 0.5625
    shift = posterior_shift(
        zero, lambda p: spread(p, -0.5 * c * ((draws(p) - mean) / sd) ** 2), pairs
    )["mu"]
    assert shift.mean == pytest.approx(0.0, abs=0.1)
    assert shift.sd_factor == pytest.approx(0.8, abs=0.05)


def test_nothing_to_reweight():
    pairs, _, _ = guide_pairs(num=2)
    assert posterior_shift(zero, zero, []) == {}
    for pair in pairs:
        pair.q_global.clear()
    assert posterior_shift(zero, zero, pairs) == {}


def test_systematic_resampling_keeps_proportions_without_needless_repeats():
    # Equal weights: every draw once. Weights 1/4 and 3/4: exactly 1 and 3 of 4 picks.
    picks = systematic_resample(torch.zeros(8), 8)
    assert sorted(picks.tolist()) == list(range(8))
    picks = systematic_resample(torch.tensor([0.25, 0.75]).log(), 4)
    assert torch.bincount(picks, minlength=2).tolist() == [1, 3]
    # A weight of zero is never picked; every pick is a valid index.
    picks = systematic_resample(torch.tensor([0.0, -math.inf, 0.0]), 100)
    assert set(picks.tolist()) == {0, 2}


def test_effective_fraction_of_equal_and_single_weights():
    assert effective_fraction(torch.zeros(10)) == pytest.approx(1.0)
    assert effective_fraction(torch.tensor([0.0, -math.inf, -math.inf, -math.inf])) == (
        pytest.approx(0.25)
    )


def test_log_weights_sum_each_particles_points_scaled_to_the_full_data():
    pairs, _, _ = guide_pairs(num=2)
    values, log_w = log_weights(zero, lambda p: spread(p, draws(p)), pairs)
    assert set(values) == {"mu"} and values["mu"].shape == (log_w.numel(), 1)
    assert torch.allclose(log_w, values["mu"].reshape(-1).double(), atol=1e-5)


def test_reweighting_needs_globals_and_finite_log_ratios():
    problem = ConjugateNormal()
    elbo = LFVI()
    args = (elbo, problem.model, problem.guide, problem.data)

    def nan(pair):
        return torch.full((pair.num_particles, pair.roles.num_points), math.nan)

    elbo.estimator_check = EstimatorCheck(1.0, 0.0, 0, 0, True, log_ratios=lambda: (zero, nan))
    with pytest.raises(ValueError, match="actual none finite at any of 32 draws"):
        reweighted_globals(*args, num_samples=8)

    def local_model(data):
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data)

    def local_guide(data):
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Normal(pyro.param("z_loc", torch.zeros(len(data))), 1.0))

    elbo.estimator_check = EstimatorCheck(1.0, 0.0, 0, 0, True, log_ratios=lambda: (zero, zero))
    with pytest.raises(ValueError, match=r"actual only local ones \(z\)"):
        reweighted_globals(elbo, local_model, local_guide, torch.zeros(4), num_samples=8)
