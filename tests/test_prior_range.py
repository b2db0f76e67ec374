import pyro.distributions as dist
import pytest
import torch

from pyro_lfvi.prior_range import clamp_to_prior, prior_range


def test_range_is_a_function_of_the_prior_and_leaves_the_random_stream_alone():
    prior = dist.Normal(torch.tensor(1.0), torch.tensor(2.0))
    state = torch.get_rng_state()
    low, high = prior_range(prior)
    assert torch.equal(torch.get_rng_state(), state)
    # 0.1% and 99.9% quantiles of N(1, 2) are 1 -/+ 6.18; padded by a tenth of the distance.
    assert float(low) == pytest.approx(1.0 - 1.2 * 6.18, abs=1.5)
    assert float(high) == pytest.approx(1.0 + 1.2 * 6.18, abs=1.5)
    torch.manual_seed(123)  # another training stream: the same range
    again = prior_range(dist.Normal(torch.tensor(1.0), torch.tensor(2.0)))
    assert torch.equal(again[0], low) and torch.equal(again[1], high)


def test_range_is_reused_while_the_parameters_stay_and_recomputed_when_they_move():
    first = prior_range(dist.Normal(torch.tensor(0.0), torch.tensor(3.0)))
    same = prior_range(dist.Normal(torch.tensor(0.0), torch.tensor(3.0)))
    assert same[0] is first[0]  # cached, not drawn again
    moved = prior_range(dist.Normal(torch.tensor(0.0), torch.tensor(30.0)))
    assert float(moved[1]) == pytest.approx(10 * float(first[1]), rel=1e-5)


def test_range_per_element_for_a_batched_prior_and_in_the_unconstrained_space():
    scales = torch.tensor([1.0, 10.0])
    low, high = prior_range(dist.LogNormal(torch.zeros(2), scales))
    assert low.shape == high.shape == (2,)
    # In log space, where LogNormal(0, s) is N(0, s): ranges about 1.2 x 3.09 s either side.
    assert float(high[0]) == pytest.approx(3.7, abs=0.8)
    assert float(high[1]) == pytest.approx(37.0, abs=8.0)
    # A LogNormal with other parameters is another prior (its transform is part of the key).
    other = prior_range(dist.LogNormal(torch.zeros(2), torch.ones(2)))
    assert float(other[1][0]) == pytest.approx(float(high[0]), rel=1e-6)
    assert float(other[1][1]) < 0.2 * float(high[1])


def test_priors_whose_draws_overflow_are_not_clamped():
    wide = dist.LogNormal(torch.tensor(0.0), torch.tensor(100.0))  # exp overflows float32
    assert prior_range(wide) is None


def test_clamp_keeps_values_inside_and_leaves_unsampleable_priors_alone():
    prior = dist.Uniform(torch.tensor(0.0), torch.tensor(1.0))  # unconstrained: logit
    low, high = prior_range(prior)
    u = torch.tensor([-100.0, 0.0, 100.0])
    clamped = clamp_to_prior(u, prior)
    assert torch.equal(clamped, torch.stack([low, torch.tensor(0.0), high]))

    class NoSampling(dist.Normal):
        def sample(self, sample_shape=()):
            raise NotImplementedError

    assert prior_range(NoSampling(0.0, 1.0)) is None
    assert torch.equal(clamp_to_prior(u, NoSampling(0.0, 1.0)), u)
