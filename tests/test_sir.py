"""The numpy SIR example: its simulator, and its forward filter against enumeration."""

import math

import numpy as np
import pyro
import pytest
import torch

from pyro_lfvi.examples.sir import RegionalSIR


def enumerated_likelihood(problem: RegionalSIR, cases: list[int], beta: float) -> float:
    """P(new infections = cases | beta), summing over every path of recoveries."""
    pop, gamma = problem.population, problem.recovery
    total = 0.0
    # Each day's recoveries C_t range over 0..I_t; enumerate them all.
    paths = [(problem.population - problem.initial, problem.initial, 1.0)]
    for new in cases:
        nxt = []
        for s, i, prob in paths:
            p = 1 - math.exp(-beta * i / pop)
            if new > s:
                continue
            p_new = math.comb(s, new) * p**new * (1 - p) ** (s - new)
            for c in range(i + 1):
                p_c = math.comb(i, c) * gamma**c * (1 - gamma) ** (i - c)
                nxt.append((s - new, i + new - c, prob * p_new * p_c))
        paths = nxt
    total = sum(prob for _, _, prob in paths)
    return total


def test_forward_filter_matches_enumeration_of_hidden_paths():
    problem = RegionalSIR(num_regions=2, num_days=4, population=6, initial=2)
    problem.data = torch.tensor([[1.0, 2.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    log_beta = np.log(np.array([0.3, 1.0, 2.5]))
    loglik = problem.region_likelihoods(log_beta)
    for n, row in enumerate(problem.data.long().tolist()):
        for g, lb in enumerate(log_beta):
            expected = enumerated_likelihood(problem, row, math.exp(lb))
            assert loglik[n, g] == pytest.approx(math.log(expected), rel=1e-9)


def test_simulator_is_seeded_by_torch_and_conserves_people():
    problem = RegionalSIR(num_regions=5)
    beta = torch.full((3, 5), 0.8)
    pyro.set_rng_seed(7)
    a = problem.simulate(beta)
    pyro.set_rng_seed(7)
    b = problem.simulate(beta)
    assert a.shape == (3, 5, problem.num_days)
    assert torch.equal(a, b)
    assert (a >= 0).all()
    assert (a.sum(-1) <= problem.population - problem.initial).all()


def test_exact_posterior_covers_the_truth():
    # The true globals lie within 3 exact sds, and so do the regions' rates.
    # (Within one data set the regions' standardised errors share the globals'
    # error, so their spread is below 1; only a gross bound is checked.)
    pyro.set_rng_seed(0)
    problem = RegionalSIR()
    exact = problem.exact()
    for name, truth in [("mu", problem.true_mu), ("log_scale", math.log(problem.true_scale))]:
        mean, sd = exact[name]
        assert abs(float(mean) - truth) < 3 * float(sd), name
    mean, sd = exact["log_beta"]
    z = (problem.true_beta.double().log() - mean) / sd
    assert float(z.abs().max()) < 3.5
    assert 0.3 < float(z.std()) < 1.5
