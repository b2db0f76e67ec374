"""The default contrastive ratio estimator: choice, training inputs, robustness."""

import itertools
import math
import warnings
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyro_lfvi import (
    LFVI,
    ContrastiveRatioEstimator,
    DiscriminatorError,
    ImplicitSite,
    JointRatioEstimator,
    LFVIWarning,
    ModelStructureError,
    hinge_loss,
)
from pyro_lfvi.contrastive import squash
from pyro_lfvi.examples import AR1Series, ConjugateNormal, HierarchicalNormal


def small_problem(simulate=None, data=None):
    data = torch.randn(20) + 1.0 if data is None else data
    simulate = simulate or (lambda mu: mu + torch.randn_like(mu))

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        with pyro.plate("data", len(data), subsample_size=10) as idx:
            pyro.sample("x", ImplicitSite(simulate, mu), obs=data[idx])

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    return data, model, guide


def test_default_is_contrastive_for_explicit_locals_and_joint_for_implicit_ones():
    problem = HierarchicalNormal(num_groups=6, batch_size=3)
    elbo = LFVI()
    elbo.loss_and_grads(problem.model, problem.guide, problem.data)
    assert isinstance(elbo.estimator, ContrastiveRatioEstimator)
    # Enough simulations per step: particles times minibatch >= 256.
    assert elbo.num_particles * 3 >= 256
    pyro.clear_param_store()
    elbo = LFVI()
    elbo.loss_and_grads(problem.model, problem.implicit_guide, problem.data)
    assert isinstance(elbo.estimator, JointRatioEstimator)  # the paper's
    assert elbo.num_particles == 8


@pytest.mark.parametrize(
    "options, particles, widen",
    [({}, 64, 1.0), ({"num_particles": 16}, 16, 1.0), ({"widen": 3.0}, 64, 3.0)],
)
def test_one_observation_defaults_to_64_particles_without_widening(options, particles, widen):
    problem = AR1Series()
    elbo = LFVI(**options)
    elbo.loss_and_grads(problem.model, problem.guide, problem.data)
    assert isinstance(elbo.estimator, ContrastiveRatioEstimator)
    assert (elbo.num_particles, elbo.widen) == (particles, widen)  # what was given stays
    # Several data points (minibatches of 10) keep 256 simulations a step, widened.
    pyro.clear_param_store()
    data, model, guide = small_problem()
    elbo = LFVI(**options)
    elbo.loss_and_grads(model, guide, data)
    assert elbo.num_particles == options.get("num_particles", 26)
    assert elbo.widen == options.get("widen", 2.0)


def test_asking_for_the_contrastive_estimator_with_an_implicit_local_guide_fails():
    problem = HierarchicalNormal(num_groups=6, batch_size=3)
    elbo = LFVI(estimator="contrastive")
    with pytest.raises(ValueError, match="local site 'theta' has an implicit guide"):
        elbo.loss_and_grads(problem.model, problem.implicit_guide, problem.data)
    assert "theta_loc" not in pyro.get_param_store()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"estimator": "nre"}, "estimator to be 'contrastive', 'joint'"),
        ({"estimator": 3}, "estimator to be 'contrastive', 'joint'"),
        ({"num_particles": 0}, "num_particles to be an integer >= 1"),
    ],
)
def test_estimator_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LFVI(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"embedding": "conv"}, "embedding to be a torch.nn.Module"),
        ({"embedding": {"x": 3}}, r"embedding\['x'\] to be a torch.nn.Module"),
        ({"num_contrasts": 0}, "num_contrasts to be an integer >= 1"),
        ({"momentum": 0.0}, r"momentum in \(0, 1\]"),
        ({"nan_policy": "ignore"}, "nan_policy 'drop' or 'raise'"),
        ({"hidden_sizes": (0,)}, "each of hidden_sizes"),
        ({"name": ""}, "name to be a non-empty str"),
        ({"normalizer_draws": 0}, "normalizer_draws to be an integer >= 1"),
        ({"normalizer": "own"}, "normalizer 'auto', 'all' or 'others'"),
        ({"replay": -1}, "replay to be an integer >= 0"),
        ({"refine_steps": -1}, "refine_steps to be an integer >= 0"),
        ({"refine_lr": 0.0}, "refine_lr to be a positive number"),
        ({"refine_lr": "fast"}, "refine_lr to be a positive number"),
    ],
)
def test_contrastive_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContrastiveRatioEstimator(**kwargs)


def test_joint_only_options_select_the_joint_classifier():
    data, model, guide = small_problem()
    elbo = LFVI(ratio_loss="hinge")
    elbo.loss_and_grads(model, guide, data)
    assert isinstance(elbo.estimator, JointRatioEstimator)
    assert elbo.estimator.ratio_loss is hinge_loss


def test_a_joint_estimator_instance_gets_the_joint_defaults():
    data, model, guide = small_problem()
    elbo = LFVI(estimator=JointRatioEstimator(hidden_sizes=(16,), name="mine"))
    elbo.loss_and_grads(model, guide, data)
    assert elbo.num_particles == 8 and elbo.widen == 5.0
    assert elbo.discriminator is elbo.estimator.discriminator
    assert any(name.startswith("mine$$$") for name in pyro.get_param_store())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"discriminator": "net"}, "Expected discriminator to be a torch.nn.Module or None"),
        ({"name": ""}, "Expected name to be a non-empty str"),
        ({"ratio_loss": "squared"}, "ratio_loss"),
    ],
)
def test_joint_estimator_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JointRatioEstimator(**kwargs)


@pytest.mark.parametrize("locals_", [False, True])
@pytest.mark.parametrize(
    "normalizer, P, mirrored, left_out",
    [
        ("all", 4, False, lambda p, P: []),
        ("others", 4, False, lambda p, P: [p]),
        ("auto", 4, False, lambda p, P: [p]),
        ("auto", 2, False, lambda p, P: []),
        # Mirrored particles (k and k + P // 2; an odd last one unmirrored): the mirror
        # image's simulations are not independent of the particle's latents either.
        ("others", 4, True, lambda p, P: [p, (p + 2) % 4]),
        ("others", 5, True, lambda p, P: [p] if p == 4 else [p, (p + 2) % 4]),
        ("all", 4, True, lambda p, P: []),
    ],
)
def test_the_normalizer_leaves_out_each_particles_own_simulations_if_asked(
    normalizer, P, mirrored, left_out, locals_
):
    # A stand-in network whose logit at a simulation is the index of the particle that drew
    # it: the normaliser of particle p is then the log mean of exp(q) over the particles q
    # whose simulations it averages (all rows are drawn: normalizer_draws exceeds P * M).
    # The default, "auto", leaves them out with three or more particles.
    M = 3
    index = torch.arange(P, dtype=torch.float).reshape(P, 1, 1).expand(P, M, 1)
    net = SimpleNamespace(
        embed=lambda sims: sims["x"],
        classify=lambda x, local, global_: x[..., 0],
    )
    pair = SimpleNamespace(
        p_observed={"x": index},
        num_particles=P,
        mirrored=mirrored,
        roles=SimpleNamespace(num_points=M),
        q_local={"z": torch.zeros(P, M, 1)} if locals_ else {},
        q_global={"beta": torch.zeros(P, 1)},
    )
    estimator = ContrastiveRatioEstimator(normalizer=normalizer, normalizer_draws=100)
    found = estimator.log_normalizer(net, pair, torch.ones(P, M, dtype=torch.bool))
    assert found.shape == ((P, M) if locals_ else (P, 1))
    for p in range(P):
        used = torch.tensor([float(k) for k in range(P) if k not in left_out(p, P)])
        expected = torch.logsumexp(used, 0) - math.log(len(used))
        assert torch.allclose(found[p], expected.expand_as(found[p])), (p, found)


def test_classifier_never_sees_the_observations():
    # The training loss must not change when the observed data do.
    data, model, guide = small_problem()
    losses = []
    for shift in (0.0, 100.0):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        elbo = LFVI()
        elbo.loss_and_grads(model, guide, data + shift)
        losses.append(elbo.history[-1]["discriminator_loss"])
    assert losses[0] == losses[1]


def test_loss_has_no_side_effects():
    data, model, guide = small_problem()
    elbo = LFVI()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    svi.step(data)
    net = elbo.estimator.network
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    history = len(elbo.history)
    svi.evaluate_loss(data)
    assert len(elbo.history) == history
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_each_step_trains_on_the_latest_steps_that_fit_in_replay():
    problem = AR1Series()  # one observation: 64 particles, 64 simulations a step
    runs = {}
    for replay in (200, 64, 0):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        estimator = ContrastiveRatioEstimator(replay=replay)
        elbo = LFVI(estimator=estimator)
        svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        replays = []
        for _ in range(5):
            svi.step(problem.data)
            replays.append(estimator.state_dict()["replay"])
        runs[replay] = replays, [h["discriminator_loss"] for h in elbo.history]
    # 200 rows hold three steps of 64; the newest steps are kept, oldest first.
    wide, wide_losses = runs[200]
    assert [len(r) for r in wide] == [1, 2, 3, 3, 3]
    for before, after in itertools.pairwise(wide):
        kept = after[:-1]
        for a, b in zip(before[-len(kept) :], kept, strict=True):
            assert torch.equal(a["observed"]["x"], b["observed"]["x"])
    # A step as large as replay trains on its own alone, as without replay (the default).
    own, own_losses = runs[64]
    off, off_losses = runs[0]
    assert [len(r) for r in own] == [1] * 5 and [len(r) for r in off] == [0] * 5
    assert own_losses == off_losses
    assert ContrastiveRatioEstimator().replay == 0
    # The first step has nothing to replay; the second trains on two steps' simulations.
    assert wide_losses[0] == own_losses[0]
    assert wide_losses[1] != own_losses[1]


def test_refine_steps_train_the_classifier_and_leave_the_svi_gradients_alone():
    problem = AR1Series()
    pyro.set_rng_seed(0)
    estimator = ContrastiveRatioEstimator(replay=256, refine_steps=3)
    elbo = LFVI(estimator=estimator)
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    svi.step(problem.data)  # builds the network
    net = estimator.network
    params = [p for n, p in net.named_parameters() if not n.endswith("standardization")]
    sentinel = [torch.full_like(p, 7.0) for p in params]
    for p, s in zip(params, sentinel, strict=True):
        p.grad = s.clone()
    before = [p.detach().clone() for p in params]
    pair = elbo._pair(problem.model, problem.guide, (problem.data,), {})[0]
    estimator.objectives(pair, update=True)
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))
    for p, s in zip(params, sentinel, strict=True):
        assert torch.equal(p.grad, s)
    # Neither update=False (the checks) nor loss() (no gradients) refines.
    before = [p.detach().clone() for p in params]
    estimator.objectives(pair, update=False)
    svi.evaluate_loss(problem.data)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_replay_state_is_checked():
    estimator = ContrastiveRatioEstimator()
    with pytest.raises(ValueError, match=r"Expected the contrastive estimator's state"):
        estimator.load_state_dict({"replay": "none"})
    with pytest.raises(ValueError, match=r"Expected replay entries of tensors"):
        estimator.load_state_dict(
            {"replay": [{"observed": {"x": 1}, "local": {}, "global": {}, "valid": 1}]}
        )
    with pytest.raises(ValueError, match=r"Expected no state for JointRatioEstimator"):
        JointRatioEstimator().load_state_dict({"replay": []})


def test_standardisation_follows_the_simulations_as_they_move():
    data, model, guide = small_problem()
    elbo = LFVI()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.0}), elbo)
    svi.step(data)
    first = elbo.estimator.network.x_standardization[0].detach().clone()
    pyro.get_param_store()["loc"] = torch.tensor(8.0)  # the guide moves away
    for _ in range(150):
        svi.step(data)
    moved = elbo.estimator.network.x_standardization[0].detach()
    assert float(first) < 2.0 and float(moved) > 6.5, (first, moved)


def test_training_globals_stay_within_the_prior_range():
    # A guide far outside its prior (N(0, 3)) must not drag the simulations along.
    data, model, guide = small_problem()
    elbo = LFVI()
    pyro.param("loc", torch.tensor(50.0))
    elbo.loss_and_grads(model, guide, data)
    pair = elbo._pair(model, guide, (data,), {})[0]
    # Clamped to the prior draws' 0.1%-99.9% range plus a tenth: within 5 prior sds.
    assert float(pair.p_global["mu"].abs().max()) < 5 * 3.0


def test_squash_is_identity_inside_four_and_logarithmic_beyond():
    z = torch.tensor([-3.0, 0.0, 3.9, 1e12])
    out = squash(z)
    assert torch.equal(out[:3], z[:3])
    assert float(out[3]) < 4.0 + 28.0  # log(1e12) ~ 27.6


def test_simulations_with_nan_are_dropped_counted_and_warned_about():
    def fragile(mu):  # blows up where mu > 1 (about half the draws here)
        out = mu + torch.randn_like(mu)
        return torch.where(mu > 1.0, torch.full_like(out, float("nan")), out)

    data, model, guide = small_problem(fragile)
    elbo = LFVI()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    pyro.get_param_store()["loc"] = torch.tensor(1.0)
    with pytest.warns(LFVIWarning, match="returned NaN or inf"):
        for _ in range(200):
            svi.step(data)
    fractions = [h["nonfinite_fraction"] for h in elbo.history]
    assert max(fractions) > 0.1
    assert all(torch.isfinite(torch.tensor([h["elbo"] for h in elbo.history])))


def test_nan_policy_raise_raises():
    def broken(mu):
        return torch.full_like(mu, float("nan"))

    data, model, guide = small_problem(broken)
    elbo = LFVI(estimator=ContrastiveRatioEstimator(nan_policy="raise"))
    with pytest.raises(DiscriminatorError, match="nan_policy='raise'"):
        elbo.loss_and_grads(model, guide, data)
    assert "loc" not in pyro.get_param_store()


def test_nan_in_the_observed_data_is_an_error_naming_the_site():
    data = torch.randn(20)
    data[3] = float("nan")
    data, model, guide = small_problem(data=data)
    elbo = LFVI()
    with pytest.raises(ModelStructureError, match="observed data of site 'x' hold"):
        for _ in range(3):  # the NaN may miss the first minibatch
            elbo.loss_and_grads(model, guide, data)


def test_misspecified_model_fails_the_posterior_predictive_check():
    # Data far beyond anything the simulator produces under the prior.
    data, model, guide = small_problem(data=torch.full((20,), 60.0) + torch.randn(20))
    elbo = LFVI()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    with pytest.warns(LFVIWarning, match="posterior predictive check failed"):
        for _ in range(400):  # the check starts with the second window
            svi.step(data)


def test_simulator_that_ignores_its_parameter_warns_that_the_guide_stayed_at_the_prior():
    data, model, guide = small_problem(lambda mu: torch.randn_like(mu))
    elbo = LFVI()
    pyro.param("scale", torch.tensor(3.0), constraint=constraints.positive)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    with pytest.warns(LFVIWarning, match="still as wide as its prior"):
        for _ in range(600):
            svi.step(data)


def test_healthy_run_stays_silent():
    problem = ConjugateNormal(num_data=200, batch_size=50)
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.02}), LFVI())
    with warnings.catch_warnings():
        warnings.simplefilter("error", LFVIWarning)
        for _ in range(600):
            svi.step(problem.data)


@pytest.mark.parametrize(
    "estimator, untrained",
    [
        ("contrastive", {"lfvi_ratio$$$x_standardization", "lfvi_ratio$$$theta_standardization"}),
        ("joint", {"lfvi_discriminator$$$standardization"}),
    ],
)
def test_untrained_standardisation_is_saved_but_not_stepped(estimator, untrained):
    problem = ConjugateNormal()
    optim = pyro.optim.Adam({"lr": 0.01})
    svi = pyro.infer.SVI(problem.model, problem.guide, optim, LFVI(estimator=estimator))
    svi.step(problem.data)
    store = pyro.get_param_store()
    assert untrained <= set(store.keys())  # checkpoints keep them
    stepped = {store.param_name(p) for p in optim.optim_objs}
    assert not untrained & stepped
    assert any(name.endswith("weight") for name in stepped)  # the weights are trained
