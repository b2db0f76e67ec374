"""LFVI against exact posteriors, with the default LFVI settings, seeds 0-2.

Tolerances come from the issue "Posteriors you can trust on real simulators",
fixed before measuring: global means within 0.5 exact sds and global sds within
0.8-1.25x; local means with RMSE below 0.5 exact sds and a local sd ratio
within 0.8-1.25. Seed 0 runs by default, seeds 1 and 2 with ``-m slow``.
The hierarchical SIR and time-series examples use their ``structured_guide``
(locals that move with the globals): a mean-field guide underestimates
hierarchical scales even with an exact likelihood. A seed that misses a target
is a strict ``xfail`` stating the measured figure.
Every run must also stay free of LFVI warnings (the diagnostics' false alarms).
The figures are reproduced by ``python benchmarks/accuracy.py``.
"""

import warnings
from types import SimpleNamespace

import pyro
import pytest
from fitting import standardized_errors, train

from pyro_lfvi import LFVI, ContrastiveRatioEstimator, LFVIWarning
from pyro_lfvi.examples import (
    AR1Series,
    ConjugateNormal,
    GaussianLinear,
    HierarchicalNormal,
    LocalSeries,
)
from pyro_lfvi.examples.sir import RegionalSIR

SEEDS = [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]


def check_globals(err, names):
    for name in names:
        assert abs(err[name]["mean_error_sd"]) < 0.5, (name, err)
        assert 0.8 < err[name]["sd_ratio"] < 1.25, (name, err)


def fit_silently(problem, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LFVIWarning)
        train(problem, **kwargs)
    return standardized_errors(problem.fitted(), problem.exact())


# Slow for every seed (the default suite had reached 10 minutes): the default run keeps the
# conjugate model's accuracy through tests/test_inference_data.py's ArviZ summary test.
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conjugate_normal_matches_exact_posterior(seed):
    # N = 1000 observations through a simulator, minibatches of 100.
    pyro.set_rng_seed(seed)
    err = fit_silently(ConjugateNormal(), num_steps=3000, lr=0.01, final_lr=0.0005)
    check_globals(err, ["mu"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conjugate_normal_with_the_normalizer_of_all_simulations(seed):
    # ContrastiveRatioEstimator(normalizer="all"), the default before normalizer="auto"
    # (which leaves each particle's own simulations out with three or more particles):
    # still within the targets, on their narrow side.
    pyro.set_rng_seed(seed)
    elbo = LFVI(estimator=ContrastiveRatioEstimator(normalizer="all"))
    err = fit_silently(ConjugateNormal(), num_steps=3000, lr=0.01, final_lr=0.0005, elbo=elbo)
    check_globals(err, ["mu"])


# The longest default fit (about 90 s): all three seeds run with the slow tests (.ci/run runs both).
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hierarchical_model_with_local_latents_matches_quadrature(seed):
    # 40 groups (local means), 10 simulated observations each, 20 groups a step,
    # raw data (no summary statistics).
    pyro.set_rng_seed(seed)
    err = fit_silently(HierarchicalNormal(), num_steps=3000, lr=0.02, final_lr=0.001)
    check_globals(err, ["mu", "log_tau"])
    assert err["theta"]["mean_error_sd"] < 0.5, err
    assert 0.8 < err["theta"]["sd_ratio"] < 1.25, err


@pytest.mark.parametrize("seed", SEEDS)
def test_single_autoregressive_series_matches_exact_posterior(seed):
    # N = 1: one 20-step AR(1) series; the prior reaches |phi| > 1 (exploding series).
    pyro.set_rng_seed(seed)
    err = fit_silently(AR1Series(), num_steps=3000, lr=0.01, final_lr=0.0005)
    check_globals(err, ["phi"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sbibm_gaussian_linear_matches_exact_posterior(seed):
    # sbibm's gaussian_linear, observation 1: ten parameters, one observation.
    pyro.set_rng_seed(seed)
    err = fit_silently(GaussianLinear(), num_steps=1500, lr=0.01, final_lr=0.0005)
    check_globals(err, ["theta"])


def check_locals(err, fitted, exact, name):
    assert err[name]["mean_error_sd"] < 0.5, err
    ratio = (fitted[name][1] / exact[name][1]).median()
    assert 0.8 < float(ratio) < 1.25, (float(ratio), err)


def fit_structured(problem, reference, **kwargs):
    """Fit ``problem.structured_guide`` (locals that move with the globals) silently."""
    fitting = SimpleNamespace(
        model=problem.model, guide=problem.structured_guide, data=problem.data
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", LFVIWarning)
        train(fitting, **kwargs)
    fitted = problem.guide_moments(problem.structured_guide)
    return standardized_errors(fitted, reference), fitted


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_sir_with_local_rates_matches_forward_filter(seed):
    # 30 regions x 40 days of a chain-binomial epidemic in numpy, a local
    # infection rate per region; exact posterior by a forward filter over the
    # hidden infected count and quadrature over the globals.
    pyro.set_rng_seed(seed)
    problem = RegionalSIR()
    exact = problem.exact()
    err, fitted = fit_structured(problem, exact, num_steps=3000, lr=0.02, final_lr=0.001)
    check_globals(err, ["mu", "log_scale"])
    check_locals(err, fitted, exact, "log_beta")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_series_with_local_coefficients_matches_nuts_on_the_explicit_twin(seed):
    # 24 series x 30 steps x 2 observed variables, a local AR coefficient per
    # series, 3 globals; the reference is NUTS on the same model with an
    # explicit likelihood.
    pyro.set_rng_seed(seed)
    problem = LocalSeries()
    reference = problem.reference()
    err, fitted = fit_structured(problem, reference, num_steps=2000, lr=0.01, final_lr=0.0005)
    check_globals(err, ["mu", "log_tau", "log_sigma"])
    check_locals(err, fitted, reference, "a")
