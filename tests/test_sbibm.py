"""sbibm's two_moons and slcp tasks (observation 1, N = 1): C2ST of LFVI's guide.

The target, fixed before measuring (issue 8): C2ST at most 0.70 against
sbibm's reference posterior samples, seeds 0-2, with LFVI's defaults
(``LFVI()``) and at most 10^5 simulator calls (1,560 steps of 64 particles).
The guides are the tasks' flows (mirrored over the posterior's symmetries),
trained with ClippedAdam decaying from 0.01 to 0.0005. A run that misses the
target must end with an ``LFVIWarning`` (the diagnostics must not stay
silent); one that meets it must not warn (a false alarm).
``python benchmarks/c2st.py --task two_moons --check`` (or ``--task slcp``)
reproduces the figures.

The defaults miss the target on slcp and on two_moons' seeds 0 and 1, loudly:
the end-of-training check of the ratio estimator warns. It also warns on
two_moons seed 2, which meets the target. Those tests are strict expected
failures that state the measured figures: they fail once LFVI reaches the
target without a false alarm. (Non-default settings that bring every
two_moons seed below 0.70 are in the docstring of
:class:`pyro_lfvi.examples.TwoMoons`.)
"""

import importlib.util
import warnings
from pathlib import Path

import pyro
import pytest
import torch
from fitting import train

from pyro_lfvi import LFVI, ContrastiveRatioEstimator, LFVIWarning
from pyro_lfvi.examples import SLCP, TwoMoons

STEPS = 1560
"""With LFVI's default 64 particles per step (one observation): 99,840 simulator calls."""


def _seeds(task, measured, warns):
    """``task`` at seeds 0-2 with the measured C2ST and whether the fit warned.

    A seed that misses the target loudly, or warns although it meets it (a
    false alarm), is a strict expected failure of the assertions, stating the
    measured figures. A silent miss fails through ``pytest.fail``, which only
    a seed measured as a silent miss expects (strictly, so that it is
    reported until it is fixed); any other silent miss fails the test.
    """
    params = []
    for seed, (score, warned) in enumerate(zip(measured, warns, strict=True)):
        marks = []
        missed = float(score) > 0.70
        if missed or warned:
            if not warned:
                what, raises = "a SILENT miss", pytest.fail.Exception
            else:
                what = "missed the target" if missed else "false alarm"
                raises = AssertionError
            marks = pytest.mark.xfail(
                strict=True,
                raises=raises,
                reason=f"measured C2ST {score} (target 0.70), warned: {warned}; {what}; issue 8",
            )
        params.append(pytest.param(task, seed, marks=marks))
    return params


def _c2st():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "c2st.py"
    spec = importlib.util.spec_from_file_location("c2st_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.c2st


def fit_and_record_warnings(problem, num_steps, elbo=None):
    elbo = LFVI() if elbo is None else elbo
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        train(problem, num_steps=num_steps, lr=0.01, final_lr=0.0005, elbo=elbo)
    return elbo, [w for w in caught if issubclass(w.category, LFVIWarning)]


@pytest.mark.parametrize("task", [TwoMoons, SLCP])
def test_simulator_shapes_and_reference_samples(task):
    problem = task()
    theta = problem.prior().sample(torch.Size([7]))
    assert theta.shape == (7, task.dim)
    x = problem.simulate(theta)
    assert x.shape == (7, task.data_dim)
    assert problem.data.shape == (task.data_dim,)
    assert torch.isfinite(x).all()
    reference = problem.reference_samples(5000)
    assert reference.shape == (5000, task.dim)
    # Inside the prior's box.
    assert bool((reference.abs() < task.bound).all())
    assert problem.guide_samples(3).shape == (3, task.dim)


def test_two_moons_reference_samples_explain_the_observation():
    # Undoing the parameters' shift must leave a point of the simulator's half
    # ring: radius 0.1 (sd 0.01) around (0.25, 0), to the right of its centre.
    problem = TwoMoons()
    t1, t2 = problem.reference_samples(5000).unbind(-1)
    shift = torch.stack([-(t1 + t2).abs(), t2 - t1], -1) / 2**0.5
    p = problem.data - shift - torch.tensor([0.25, 0.0])
    assert abs(float(p.norm(dim=-1).mean()) - 0.1) < 0.002
    assert bool((p[:, 0] >= 0).all())


def test_slcp_simulator_moments():
    # Four draws of a bivariate Normal: mean (t1, t2), sds t3^2 and t4^2,
    # correlation tanh(t5).
    theta = torch.tensor([0.5, -1.0, 1.2, -0.9, 0.7])
    x = SLCP().simulate(theta.expand(50000, 5)).reshape(-1, 2)
    s1, s2, rho = 1.2**2, 0.9**2, torch.tanh(torch.tensor(0.7))
    expected = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]])
    assert torch.allclose(x.mean(0), theta[:2], atol=0.03)
    assert torch.allclose(torch.cov(x.T), expected, rtol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, seed",
    _seeds(TwoMoons, ["0.749", "0.735", "0.683"], [True, True, True])
    + _seeds(SLCP, ["0.960", "0.971", "0.975"], [True, True, True]),
)
def test_c2st_at_most_the_target_and_a_warning_exactly_when_missed(task, seed):
    pyro.set_rng_seed(seed)
    problem = task()
    elbo, caught = fit_and_record_warnings(problem, STEPS)
    assert STEPS * elbo.num_particles <= 100_000
    score = _c2st()(problem.guide_samples(5000), problem.reference_samples(5000), seed)
    if score > 0.70 and not caught:
        pytest.fail(f"C2ST {score:.3f} misses the target 0.70 and no LFVIWarning said so")
    assert score <= 0.70, score
    assert not caught, [str(w.message) for w in caught]


# The opt-in route of README's "A single observation": the classifier replays the latest
# 4,096 simulations and takes 4 updates of its own on them in every step (no more simulator
# calls). Target from the issue "Posteriors you can trust on real simulators": C2ST at most
# 0.70. The end-of-training lag check still warns on these fits (README has the figures), so
# only the C2ST is asserted here.
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refined_ratio_estimator_brings_two_moons_within_the_target(seed):
    pyro.set_rng_seed(seed)
    problem = TwoMoons()
    estimator = ContrastiveRatioEstimator(replay=4096, refine_steps=4)
    elbo, _ = fit_and_record_warnings(problem, STEPS, LFVI(estimator=estimator))
    assert STEPS * elbo.num_particles <= 100_000
    score = _c2st()(problem.guide_samples(5000), problem.reference_samples(5000), seed)
    assert score <= 0.70, score
