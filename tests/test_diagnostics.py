"""Each training diagnostic, provoked on purpose; and silence when training is healthy."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from torch import nn

from pyro_lfvi import LFVI, ImplicitSite, LFVIWarning, ModelStructureError, TrainingMonitor, fit
from pyro_lfvi.examples import ConjugateNormal


def shifted_problem(offset):
    """Data far from what the prior lets the simulator produce."""
    data = offset + torch.randn(50)

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", ImplicitSite(lambda m: m + torch.randn_like(m), mu), obs=data)

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(0.1), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    return data, model, guide


def run(model, guide, data, elbo, steps, lr=0.01):
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": lr}), elbo)
    for _ in range(steps):
        svi.step(data)


def test_saturated_discriminator_warns():
    data, model, guide = shifted_problem(offset=100.0)
    elbo = LFVI(estimator="joint")
    elbo.monitor = TrainingMonitor(window=20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        run(model, guide, data, elbo, steps=80, lr=0.05)
    messages = [str(w.message) for w in caught if w.category is LFVIWarning]
    assert any("discriminator is saturated" in m for m in messages), messages


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, observed, local, global_):
        return 0.0 * self.w * observed["x"].sum(-1)


def test_useless_discriminator_warns_when_the_guide_moves():
    data, model, guide = shifted_problem(offset=1.0)
    elbo = LFVI(discriminator=Constant())
    elbo.monitor = TrainingMonitor(window=50)
    with pytest.warns(LFVIWarning, match=r"discriminator is at chance.*follows its prior"):
        run(model, guide, data, elbo, steps=100, lr=0.1)


def out_of_support_problem():
    """A guide whose draws always lie outside the prior's support (s >= 0)."""
    pyro.enable_validation(False)  # let HalfNormal give -inf outside its support
    data = torch.randn(20)

    def model(data):
        s = pyro.sample("s", dist.HalfNormal(1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", ImplicitSite(lambda s: s + torch.randn_like(s), s), obs=data)

    def guide(data):
        pyro.sample("s", dist.Normal(-5.0, 0.1))

    return data, model, guide


def test_nonfinite_elbo_warns():
    data, model, guide = out_of_support_problem()
    with pytest.warns(LFVIWarning, match=r"ELBO estimate \(-inf\).*not finite"):
        LFVI(num_particles=1).loss_and_grads(model, guide, data)


def test_guide_outside_prior_support_is_named_when_widening():
    data, model, guide = out_of_support_problem()
    with pytest.raises(ModelStructureError, match=r"global site 's' lie outside the support"):
        LFVI().loss_and_grads(model, guide, data)


def test_diverging_elbo_warns():
    monitor = TrainingMonitor(window=10)
    entry = {"discriminator_loss": 1.0, "discriminator_accuracy": 0.6}
    for step in range(20):
        monitor.update(step, dict(entry, elbo=-10.0 + 0.1 * (step % 3)))
    with pytest.warns(LFVIWarning, match=r"ELBO estimate is diverging.*down from"):
        for step in range(20, 30):
            monitor.update(step, dict(entry, elbo=-1e4))


def test_each_warning_is_given_once():
    monitor = TrainingMonitor(window=5)
    bad = {"elbo": float("nan"), "discriminator_loss": 1.0, "discriminator_accuracy": 0.5}
    with pytest.warns(LFVIWarning) as record:
        for step in range(10):
            monitor.update(step, bad)
    assert len(record) == 1


def test_healthy_training_is_silent_and_callback_sees_every_step():
    problem = ConjugateNormal(num_data=200, batch_size=50)
    seen = []
    elbo = LFVI(callback=lambda step, entry: seen.append((step, entry["elbo"])))
    elbo.monitor = TrainingMonitor(window=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LFVIWarning)
        run(problem.model, problem.guide, problem.data, elbo, steps=400)
    assert [s for s, _ in seen] == list(range(400))
    assert len(elbo.history) == 400


def test_bad_callback():
    with pytest.raises(ValueError, match="Expected callback to be callable or None, actual 3"):
        LFVI(callback=3)


def explicit_twin(problem):
    """The conjugate example with its likelihood written as a density."""

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, problem.prior_scale))
        with pyro.plate("data", problem.num_data, subsample_size=problem.batch_size) as idx:
            pyro.sample("x", dist.Normal(mu, problem.noise), obs=data[idx])

    return model


def test_debug_mode_measures_the_learned_ratio_against_the_true_one():
    problem = ConjugateNormal(num_data=200, batch_size=50)
    elbo = LFVI(debug_model=explicit_twin(problem))
    run(problem.model, problem.guide, problem.data, elbo, steps=600, lr=0.02)
    late = elbo.history[-100:]
    slope = sum(h["debug_ratio_slope"] for h in late) / len(late)
    corr = sum(h["debug_ratio_corr"] for h in late) / len(late)
    # A trained estimator tracks the true log ratio across particles.
    assert corr > 0.8 and 0.6 < slope < 1.4, (slope, corr)

    class Flat(nn.Module):  # ignores the globals: an attenuated (useless) estimator
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, observed, local, global_):
            return self.w * observed["x"].sum(-1)

    pyro.clear_param_store()
    flat = LFVI(discriminator=Flat(), debug_model=explicit_twin(problem))
    run(problem.model, problem.guide, problem.data, flat, steps=3)
    assert abs(flat.history[-1]["debug_ratio_slope"]) < 1e-6


def test_debug_model_arguments():
    with pytest.raises(ValueError, match="Expected debug_model to be a callable model or None"):
        LFVI(debug_model=3)
    with pytest.raises(ValueError, match="Expected num_particles >= 2 with vectorize_particles"):
        LFVI(num_particles=1, debug_model=lambda data: None)


@pytest.mark.parametrize("accuracy, warns", [(0.5, True), (0.77, False)])
def test_guide_as_wide_as_its_prior_warns_only_when_the_estimator_is_at_chance(accuracy, warns):
    # sbibm's two_moons has a posterior as wide as its prior, and its contrastive
    # classifier reaches 0.77: that is not an estimator that found nothing.
    monitor = TrainingMonitor(window=10)
    monitor.joint = False
    entry = {"elbo": 0.0, "discriminator_loss": 0.6, "prior_sd_ratio": 0.98}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        for step in range(40):
            monitor.update(step, dict(entry, discriminator_accuracy=accuracy))
    messages = [str(w.message) for w in caught if w.category is LFVIWarning]
    assert any("still as wide as its prior" in m for m in messages) is warns, messages


def test_monitor_memory_is_bounded_and_it_keeps_counting_windows():
    # The monitor keeps one or two windows of records and counts every step.
    monitor = TrainingMonitor(window=10)
    monitor.joint = False
    entry = {"elbo": 0.0, "discriminator_loss": 0.6, "discriminator_accuracy": 0.6}
    for step in range(5000):
        monitor.update(step, entry, [0.0], [1.0])
    state = monitor.state_dict()
    assert state["count"] == 5000
    assert max(len(state[k]) for k in ("elbo", "acc", "centre", "spread")) < 20
    resumed = TrainingMonitor()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    # A state written before the count existed counts the steps it lists.
    del state["count"]
    resumed.load_state_dict(state)
    assert resumed.state_dict()["count"] == len(state["elbo"])
    with pytest.raises(ValueError, match=r"Expected the step count to be an int >= 10"):
        resumed.load_state_dict(dict(state, count=3))


def feed(monitor, steps, centre=lambda t: 0.0, entry=None):
    entry = entry or {"elbo": 0.0, "discriminator_loss": 0.6, "discriminator_accuracy": 0.7}
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        noise = float(torch.randn((), generator=gen))  # particle-mean noise, in sds / sqrt(8)
        monitor.update(step, entry, [centre(step) + noise / 8**0.5], [1.0])


@pytest.mark.parametrize(
    "steps, drift, warns",
    [(400, 0.0, False), (400, 0.002, False), (400, 0.02, True), (150, 0.02, True), (10, 1.0, None)],
)
def test_end_of_training_warns_when_the_globals_still_move(steps, drift, warns):
    # drift: sds per step; over the last 200-step window's quarters, 150 x drift.
    monitor = TrainingMonitor(window=200)
    monitor.joint = False
    feed(monitor, steps, centre=lambda t: drift * t)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        shift = monitor.check_convergence()
    messages = [str(w.message) for w in caught if w.category is LFVIWarning]
    if warns is None:
        assert shift is None and not messages
        return
    assert any("LFVI has not converged" in m for m in messages) is warns, (shift, messages)


def test_point_mass_globals_are_not_judged_by_the_convergence_check():
    # A Delta guide (variational EM) has sd 0: a move of 1e-3 once read as 1e9 sds.
    monitor = TrainingMonitor(window=200)
    monitor.joint = False
    entry = {"elbo": 0.0, "discriminator_loss": 0.6, "discriminator_accuracy": 0.7}
    for step in range(400):
        monitor.update(step, entry, [2.0 + 1e-5 * step, 0.01 * step], [0.0, 1.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        shift = monitor.check_convergence()
    assert shift == pytest.approx(1.5)  # the second global alone: 150 steps x 0.01 sds
    assert any("LFVI has not converged" in str(w.message) for w in caught)
    monitor = TrainingMonitor(window=200)
    monitor.joint = False
    for step in range(400):
        monitor.update(step, entry, [2.0 + 1e-5 * step], [0.0])
    assert monitor.check_convergence() is None


def test_a_window_whose_mean_accuracy_is_saturated_warns():
    # The grammar RNN's default fit: accuracy 0.993 on average over its last window,
    # learned nothing, and stayed silent (fewer than 95% of its steps above 0.99).
    monitor = TrainingMonitor(window=200)
    monitor.joint = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        for step in range(200):
            accuracy = 1.0 if step % 10 else 0.93  # 90% of steps at 1.0, mean 0.993
            entry = {"elbo": 0.0, "discriminator_loss": 0.05, "discriminator_accuracy": accuracy}
            monitor.update(step, entry, [0.0], [1.0])
    assert any("discriminator is saturated" in str(w.message) for w in caught)


def test_point_mass_globals_are_not_judged_by_the_at_chance_check():
    # Variational EM's point estimate moving while the joint classifier is at chance
    # once read as "centre by 83467652797.7 sds" (grammar notebook's helper report).
    entry = {"elbo": 0.0, "discriminator_loss": 0.69, "discriminator_accuracy": 0.5}

    def useless_warnings(spread):
        monitor = TrainingMonitor(window=200)
        monitor.joint = True
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LFVIWarning)
            for step in range(200):
                monitor.update(step, entry, [2.0 + 1e-3 * step, 0.0], spread)
        return [str(w.message) for w in caught if "at chance" in str(w.message)]

    assert useless_warnings([0.0, 0.0]) == []
    # a real sd is still judged: 150 steps x 1e-3 = 0.15 = 3.75 sds of 0.04
    (message,) = useless_warnings([0.04, 1.0])
    assert "centre by 3.8 sds" in message


def test_fit_ends_with_the_convergence_check():
    # 100 steps at lr 0.02 take the guide's mean from 0 most of the way to the posterior's
    # (1.5, sd 0.03), still moving. (At lr 0.01 the move over the window, about one of the
    # guide's still-wide sds, sat on the threshold: seed 0 stayed under it with
    # normalizer="auto"; the guide check warned there all the same.)
    problem = ConjugateNormal()
    elbo = LFVI()
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.02}), elbo)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        fit(svi, problem.data, num_steps=100, progress=False)
    messages = [str(w.message) for w in caught if w.category is LFVIWarning]
    assert any("has not converged after 100 steps" in m for m in messages), messages
    # One global: the largest and the smallest spread ratio are the same.
    last = elbo.history[-1]
    assert last["wide_global_ratio"] == last["prior_sd_ratio"] > 0


@pytest.mark.parametrize("ratio, warns", [(1.2, False), (3.0, True)])
def test_a_global_guide_wider_than_its_prior_warns(ratio, warns):
    monitor = TrainingMonitor(window=10)
    monitor.joint = False
    entry = {
        "elbo": 0.0,
        "discriminator_loss": 0.6,
        "discriminator_accuracy": 0.7,
        "wide_global_ratio": ratio,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        feed(monitor, 40, entry=entry)
    messages = [str(w.message) for w in caught if w.category is LFVIWarning]
    assert any("as wide as its prior (unconstrained" in m for m in messages) is warns, messages


@pytest.mark.parametrize(
    "width, accuracy, expected",
    [
        (0.3, 0.7, set()),  # a healthy posterior
        (0.9, 0.7, set()),  # per-step largest ratio about 1.7: it used to warn "wide"
        (1.0, 0.5, {"at_prior"}),  # per-step smallest ratio about 0.1: it used to stay silent
        (2.0, 0.7, {"wide_globals"}),
    ],
)
def test_global_spread_checks_pool_two_particles_over_the_window(width, accuracy, expected):
    # Ten global components, two particles a step: each step's spread of a
    # component is one degree of freedom, and the largest (smallest) of ten
    # such ratios is biased high (low). Pooled over the window they are not.
    monitor = TrainingMonitor(window=50)
    monitor.joint = False
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", LFVIWarning)
        for step in range(200):
            guide_var = (width * torch.randn(2, 10, generator=gen)).var(0)
            prior_var = torch.randn(64, 10, generator=gen).var(0)
            spreads = (guide_var / prior_var).sqrt()
            entry = {
                "elbo": 0.0,
                "discriminator_loss": 0.6,
                "discriminator_accuracy": accuracy,
                "prior_sd_ratio": float(spreads.min()),
                "wide_global_ratio": float(spreads.max()),
            }
            monitor.update(step, entry, [], [], guide_var.tolist(), prior_var.tolist())
    assert monitor.warned & {"at_prior", "wide_globals"} == expected


@pytest.mark.parametrize("beyond, warns", [(None, True), (0.2, False), (8.0, True)])
def test_a_wide_global_warns_only_if_it_spills_beyond_the_prior(beyond, warns):
    # One observation can leave a posterior wider than its prior (bimodal near
    # the ends of a uniform prior: sbibm's slcp), but inside the prior's range.
    monitor = TrainingMonitor(window=10)
    monitor.joint = False
    entry = {"elbo": 0.0, "discriminator_loss": 0.6, "discriminator_accuracy": 0.7}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        for step in range(40):
            # Two components: the first as wide as its prior, the second 2x.
            spread = [] if beyond is None else [1.0, beyond]
            monitor.update(step, entry, [], [], [1.0, 4.0], [1.0, 1.0], spread)
    messages = [str(w.message) for w in caught if w.category is LFVIWarning]
    assert any("2.0x as wide as its prior" in m for m in messages) is warns, messages


@pytest.mark.parametrize(
    "guide_sd, low, high",
    [(1.0, 0.6, 1.6), (0.3, 0.0, 0.01), (2.0, 45.0, 180.0)],
)
def test_global_draws_beyond_the_prior_are_counted_against_the_priors_own_rate(guide_sd, low, high):
    # Prior N(0, 1), 32 x 64 prior draws a step: a draw of the prior itself
    # falls beyond their range with probability 2 / (n + 1); a guide N(0, 2)
    # with probability 2 P(|Z| > 3.4 / 2), about 90 times as often.
    from pyro_lfvi.pairing import pair_joints
    from pyro_lfvi.step_checks import global_variances

    data = torch.zeros(3)

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", ImplicitSite(lambda m: m + torch.randn_like(m), mu), obs=data)

    def guide(data):
        pyro.sample("mu", dist.Normal(0.0, guide_sd))

    plate = pyro.plate("particles", 64, dim=-2)
    beyond = []
    for _ in range(400):
        pair = pair_joints(plate(model), plate(guide), (data,), {}, "particles", 64, 1.0)
        beyond += global_variances(pair).beyond_prior
    assert low <= sum(beyond) / len(beyond) < high


def test_lfvi_gives_the_monitor_the_globals_variances_and_a_checkpoint_keeps_them():
    problem = ConjugateNormal()
    elbo = LFVI(num_particles=2)
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    for _ in range(5):
        svi.step(problem.data)
    state = elbo.monitor.state_dict()
    assert [len(v) for v in state["guide_var"]] == [1] * 5  # one global, mu
    assert all(v[0] > 0 for v in state["prior_var"])
    resumed = TrainingMonitor()
    assert [len(v) for v in state["beyond_prior"]] == [1] * 5
    older = {k: v for k, v in state.items() if k not in ("guide_var", "prior_var", "beyond_prior")}
    resumed.load_state_dict(older)  # a state saved before the variances were kept
    assert resumed.state_dict()["guide_var"] == []
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    with pytest.raises(ValueError, match="Expected a TrainingMonitor state of plain numbers"):
        resumed.load_state_dict(dict(state, guide_var=[["wide"]]))


@pytest.mark.parametrize("particles", [2, 8])
@pytest.mark.parametrize("width", [0.5, 1.5])
def test_local_spread_ratio_is_unbiased_with_few_particles(particles, width):
    # 2,000 locals with prior N(0, 1) and a guide N(0, width): one step's figure
    # is a median over the locals of variances from `particles` draws, which is
    # 0.45 of the truth with two draws before the chi-square correction.
    from pyro_lfvi.pairing import pair_joints
    from pyro_lfvi.step_checks import pair_checks

    data = torch.zeros(2000)

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", ImplicitSite(lambda m: m + torch.randn_like(m), mu + z), obs=data)

    def guide(data):
        pyro.sample("mu", dist.Normal(0.0, 0.1))
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Normal(0.0, width))

    plate = pyro.plate("particles", particles, dim=-2)
    pair = pair_joints(plate(model), plate(guide), (data,), {}, "particles", particles, 2.0)
    assert pair_checks(pair)["local_sd_ratio"] == pytest.approx(width, rel=0.1)
