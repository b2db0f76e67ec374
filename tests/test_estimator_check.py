import warnings

import pyro
import pytest
import torch

from pyro_lfvi import (
    LFVI,
    EstimatorCheck,
    LFVIWarning,
    RatioEstimator,
    check_ratio_estimator,
    estimator_check,
    fit,
    reweighted_globals,
)
from pyro_lfvi.estimator_check import MIN_EFFECTIVE, SHIFT_TOLERANCE
from pyro_lfvi.examples import GaussianLinear
from pyro_lfvi.refined_copy import online_network
from pyro_lfvi.reweighting import PosteriorShift

# The contrastive default, the likelihood estimator and the paper's joint classifier.
ESTIMATORS = [None, "likelihood", "joint"]
NAMES = {None: "ratio estimator", "likelihood": "likelihood estimator", "joint": "joint classifier"}
# Steps after which each has barely started (the likelihood estimator's density
# takes three updates a step, and tells two particles apart after two steps).
EARLY = {None: 2, "likelihood": 1, "joint": 2}


def trained(num_steps, estimator=None, **lfvi):
    problem = GaussianLinear(dim=2, data=torch.tensor([0.3, -0.2]))
    elbo = LFVI(estimator=estimator, **lfvi)
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LFVIWarning)
        fit(svi, problem.data, num_steps=num_steps, progress=False, check=False)
    return problem, elbo


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_an_estimator_that_has_not_learned_is_flagged(estimator):
    # After two steps the classifier has barely started: a copy trained on
    # simulations at the guide must do much better, and the check must say so.
    problem, elbo = trained(EARLY[estimator], estimator)
    with pytest.warns(LFVIWarning, match=f"{NAMES[estimator]} lagged behind the guide"):
        result = check_ratio_estimator(elbo, problem.model, problem.guide, problem.data)
    assert isinstance(result, EstimatorCheck)
    assert result.warned and result.gain > 0.05
    assert result.simulations == 64 * elbo.num_particles
    # Bartlett's identity is tested on a log likelihood: not the joint classifier's logit.
    assert bool(result.curvature) == (estimator != "joint")
    # The LFVI instance keeps the result, with the log ratios to reweight by (not the
    # joint classifier's logit).
    assert elbo.estimator_check is result
    assert (result.log_ratios is None) == (estimator == "joint")


@pytest.mark.parametrize("estimator", [None, "likelihood"])
def test_reweighted_globals_of_a_lagging_estimator(estimator):
    # Draws of the globals, resampled from four times as many guide draws by the
    # copy's log likelihood: the copy of an estimator two steps in differs, so
    # the weights are unequal.
    problem, elbo = trained(EARLY[estimator], estimator)
    check_ratio_estimator(elbo, problem.model, problem.guide, problem.data, warn=False)
    draws, effective = reweighted_globals(
        elbo, problem.model, problem.guide, problem.data, num_samples=64
    )
    assert set(draws) == {"theta"} and draws["theta"].shape == (64, 2)
    assert torch.isfinite(draws["theta"]).all()
    assert 0.0 < effective < 1.0


def test_the_likelihood_estimators_lag_warns_by_what_it_moves():
    # One step in, the density is far from the simulator's: reweighted by a copy
    # trained further, the guide's draws move, and the warning says by how much.
    problem, elbo = trained(EARLY["likelihood"], "likelihood")
    with pytest.warns(LFVIWarning, match=r"the guide's draws of the globals move .*sd factor"):
        result = check_ratio_estimator(elbo, problem.model, problem.guide, problem.data)
    assert set(result.shift) == {"theta[0]", "theta[1]"} and result.moved
    # The contrastive estimator's check does not reweight.
    problem, elbo = trained(EARLY[None])
    assert (
        check_ratio_estimator(elbo, problem.model, problem.guide, problem.data, warn=False).shift
        == {}
    )


@pytest.mark.parametrize(
    "move, effective, message",
    [
        (0.1, 0.9, None),
        (0.4, 0.9, "'theta[0]' +0.40 sds, sd 1.00x"),
        (0.1, 0.5, "only 50% of the guide's draws of the globals carry weight"),
    ],
)
def test_a_lag_that_moves_nothing_is_not_flagged(monkeypatch, move, effective, message):
    # The likelihood estimator's lag warns only if the copy would move a global's
    # posterior by more than SHIFT_TOLERANCE sds (or its sd out of 0.8-1.25x), or
    # reshape it (an effective sample size below MIN_EFFECTIVE).
    problem, elbo = trained(EARLY["likelihood"], "likelihood")
    shift = {
        "theta[0]": PosteriorShift(move, 1.0, effective),
        "theta[1]": PosteriorShift(0.0, 1.1, effective),
    }
    monkeypatch.setattr(estimator_check, "posterior_shift", lambda *args: shift)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        result = check_ratio_estimator(elbo, problem.model, problem.guide, problem.data)
    lag = [str(w.message) for w in caught if "lagged behind" in str(w.message)]
    assert result.gain > 0.05
    assert result.moved == ([] if move < SHIFT_TOLERANCE else ["theta[0]"])
    assert result.reshaped == (effective < MIN_EFFECTIVE)
    assert len(lag) == (message is not None)
    if lag:
        assert message in lag[0]


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_an_estimator_that_kept_up_is_not_flagged(estimator):
    # A converged copy installed as the online network leaves nothing to gain.
    problem, elbo = trained(EARLY[estimator], estimator)
    first = check_ratio_estimator(elbo, problem.model, problem.guide, problem.data, warn=False)
    assert first.gain > 0.05
    net = online_network(elbo.estimator)
    params = [p for n, p in net.named_parameters() if not n.endswith("standardization")]
    optim = torch.optim.Adam(params, lr=1e-3)
    for _ in range(1500):
        pair = elbo._pair(problem.model, problem.guide, (problem.data,), {})[0]
        loss = elbo.estimator.objectives(pair).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LFVIWarning)
        second = check_ratio_estimator(elbo, problem.model, problem.guide, problem.data)
    assert not second.warned and second.gain < 0.05 < first.gain


def test_check_leaves_params_and_random_stream_alone():
    problem, elbo = trained(3)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    state = torch.get_rng_state()
    check_ratio_estimator(
        elbo, problem.model, problem.guide, problem.data, max_updates=100, warn=False
    )
    after = dict(pyro.get_param_store().items())
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k].detach()) for k in before)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_fit_runs_the_check_unless_told_not_to(estimator):
    # A step or two leave the estimator far behind: fit's default check must say so.
    problem = GaussianLinear(dim=2, data=torch.tensor([0.3, -0.2]))
    elbo = LFVI(estimator=estimator)
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    with pytest.warns(LFVIWarning, match="lagged behind the guide"):
        fit(svi, problem.data, num_steps=EARLY[estimator], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LFVIWarning)
        fit(svi, problem.data, num_steps=1, progress=False, check=False)


def test_bad_arguments():
    problem, elbo = trained(1)
    args = (elbo, problem.model, problem.guide, problem.data)
    with pytest.raises(ValueError, match="Expected num_batches >= 8, actual 4"):
        check_ratio_estimator(*args, num_batches=4)
    with pytest.raises(ValueError, match="max_updates"):
        check_ratio_estimator(*args, max_updates=0)
    with pytest.raises(ValueError, match="threshold"):
        check_ratio_estimator(*args, threshold=-1.0)
    untrained = LFVI()
    with pytest.raises(ValueError, match="has not been trained yet; train first"):
        check_ratio_estimator(untrained, problem.model, problem.guide, problem.data)

    class OwnEstimator(RatioEstimator):
        def objectives(self, pair, update=True):
            raise NotImplementedError

    own = LFVI(estimator=OwnEstimator())
    with pytest.raises(ValueError, match="actual estimator OwnEstimator: the check does not know"):
        check_ratio_estimator(own, problem.model, problem.guide, problem.data)
