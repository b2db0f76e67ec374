"""Variational families: implicit local guides, autoguides, variational EM, learned simulators.

Statistical tests state their tolerance and compare with exact answers
(quadrature, grids, closed-form MAP); ``benchmarks/guides.py`` reproduces
the figures over several seeds.
"""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from fitting import decaying_adam, standardized_errors
from pyro.distributions import constraints
from pyro.infer import SVI
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoGaussian,
    AutoGuideList,
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoStructured,
    init_to_value,
)

from pyro_lfvi import (
    LFVI,
    ContrastiveRatioEstimator,
    ImplicitDensityError,
    ImplicitSite,
    JointRatioEstimator,
    LFVIWarning,
    ModelStructureError,
)
from pyro_lfvi.examples import BimodalLocals, ConjugateNormal, HierarchicalNormal


def decaying_svi(model, guide, elbo, num_steps, lr, final_lr):
    return SVI(model, guide, decaying_adam(num_steps, lr, final_lr), elbo)


@pytest.mark.slow
def test_implicit_local_guide_matches_the_normal_guide_tolerances():
    # The hierarchical model of tests/test_accuracy.py, same seed, same steps and
    # the same tolerances as its Normal local guide; theta_j = loc_j + scale_j * h(noise).
    pyro.set_rng_seed(1)
    problem = HierarchicalNormal()
    svi = decaying_svi(problem.model, problem.implicit_guide, LFVI(), 5000, 0.02, 0.001)
    for _ in range(5000):
        svi.step(problem.data)
    with torch.no_grad():
        draws = problem.noise_network(
            pyro.param("theta_loc").expand(4000, -1), pyro.param("theta_scale").expand(4000, -1)
        )
    fitted = problem.fitted()
    fitted["theta"] = (draws.mean(0), draws.std(0))
    err = standardized_errors(fitted, problem.exact())
    for name in ("mu", "log_tau"):
        assert abs(err[name]["mean_error_sd"]) < 1.5, (name, err)
        assert 1 / 1.5 < err[name]["sd_ratio"] < 1.5, (name, err)
    assert err["theta"]["mean_error_sd"] < 0.75, err


def fit_bimodal(implicit, num_steps):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    problem = BimodalLocals()
    guide = problem.implicit_guide if implicit else problem.guide
    svi = decaying_svi(problem.model, guide, LFVI(), num_steps, 0.01, 0.0005)
    for _ in range(num_steps):
        svi.step(problem.data)
    return problem, problem.local_wasserstein(problem.guide_draws(implicit)).mean()


@pytest.mark.slow
def test_implicit_guide_is_closer_than_a_normal_guide_to_bimodal_local_posteriors():
    # Metric: the 1-Wasserstein distance between guide draws and each exact local
    # posterior (grid), averaged over the 100 points. Measured (seed 0, 3000 steps):
    # 0.25 implicit against 0.50 Normal; we require a margin of 25%.
    _, w_normal = fit_bimodal(False, 3000)
    problem, w_implicit = fit_bimodal(True, 3000)
    assert w_implicit < 0.75 * w_normal, (float(w_implicit), float(w_normal))
    # Both modes are used: every point has 20-80% of its draws on each side.
    positive = (problem.guide_draws(True) > 0).float().mean(0)
    assert float(((positive - 0.5).abs() < 0.3).float().mean()) > 0.9


@pytest.mark.slow  # a 1,000-3,000-step fit; the default suite stays under 10 minutes
def test_autodelta_on_globals_is_variational_em_and_recovers_the_map():
    data = 2.0 + 0.7 * torch.randn(1000)

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
        with pyro.plate("data", len(data), subsample_size=100) as i:
            site = ImplicitSite(lambda m, s: m + s * torch.randn_like(m), loc, scale)
            pyro.sample("x", site, obs=data[i])

    start = {"loc": torch.tensor(0.0), "scale": torch.tensor(1.0)}
    guide = AutoDelta(model, init_loc_fn=init_to_value(values=start))
    svi = decaying_svi(model, guide, LFVI(), 3000, 0.01, 0.0002)
    for _ in range(3000):
        svi.step(data)
    # The exact MAP (in the constrained space, as AutoDelta's ELBO uses).
    loc = torch.tensor(0.0, requires_grad=True)
    log_scale = torch.tensor(0.0, requires_grad=True)
    lbfgs = torch.optim.LBFGS([loc, log_scale], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        s = log_scale.exp()
        log_post = (
            dist.Normal(0.0, 10.0).log_prob(loc)
            + dist.LogNormal(0.0, 2.0).log_prob(s)
            + dist.Normal(loc, s).log_prob(data).sum()
        )
        (-log_post).backward()
        return -log_post

    lbfgs.step(closure)
    scale = float(log_scale.detach().exp())
    fitted = guide.median()
    # Within one posterior sd (loc: s/sqrt(N); scale: s/sqrt(2N)); measured
    # -0.51 / 0.32 sd (seed 0), -0.71 / 0.07 sd (seed 1).
    assert abs(float(fitted["loc"].detach()) - float(loc)) < scale / 1000**0.5
    assert abs(float(fitted["scale"].detach()) - scale) < scale / 2000**0.5


@pytest.mark.slow  # a 1,000-3,000-step fit; the default suite stays under 10 minutes
@pytest.mark.xfail(
    strict=True,
    reason="with normalizer='auto' the mean ends 0.59 exact sds off (sd 1.02x) at seed 0 "
    "(it was within 0.5 with the former normaliser, 'all'); a miss of the 0.5-sd target",
)
def test_flow_autoguide_for_globals():
    problem = ConjugateNormal()
    guide = AutoIAFNormal(problem.model, hidden_dim=[8], num_transforms=1)
    svi = decaying_svi(problem.model, guide, LFVI(), 3000, 0.01, 0.0005)
    for _ in range(3000):
        svi.step(problem.data)
    draws = torch.stack([guide()["mu"].detach() for _ in range(2000)])
    mean, sd = problem.exact()["mu"]
    # Tolerance: mean within 0.5 exact sds, sd within 1.5x.
    assert abs(float(draws.mean()) - mean) / sd < 0.5
    assert 1 / 1.5 < float(draws.std()) / sd < 1.5


@pytest.mark.slow  # about 40 s
def test_autoguidelist_combines_an_autoguide_for_globals_with_an_implicit_local_guide():
    pyro.set_rng_seed(1)
    problem = HierarchicalNormal()

    def local_guide(data):
        # AutoGuideList has already opened the model's plates: enter its own.
        problem.implicit_locals(guide.plates["groups"])

    guide = AutoGuideList(problem.model)
    guide.append(AutoNormal(pyro.poutine.block(problem.model, expose=["mu", "tau"])))
    guide.append(local_guide)
    svi = decaying_svi(problem.model, guide, LFVI(), 2000, 0.02, 0.002)
    for _ in range(2000):
        svi.step(problem.data)
    mu = guide[0].median()["mu"]
    mean, sd = problem.exact()["mu"]
    # A shorter run than the accuracy tests: mu within 2 exact sds.
    assert abs(float(mu) - float(mean)) / float(sd) < 2.0


def test_autoguidelist_part_that_opens_a_plate_again_gets_advice():
    problem = HierarchicalNormal()

    def local_guide(data):
        with pyro.plate("groups", problem.num_groups, subsample_size=problem.batch_size):
            pyro.sample("theta", dist.Normal(0.0, 1.0))

    guide = AutoGuideList(problem.model)
    guide.append(AutoNormal(pyro.poutine.block(problem.model, expose=["mu", "tau"])))
    guide.append(local_guide)
    with pytest.raises(ModelStructureError, match=r"guide.plates\['groups'\]") as info:
        LFVI().loss(problem.model, guide, problem.data)
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("autoguide", [AutoGaussian, AutoStructured])
def test_autoguides_that_need_the_model_density_say_which_guides_work(autoguide):
    problem = ConjugateNormal()
    svi = SVI(problem.model, autoguide(problem.model), pyro.optim.Adam({"lr": 0.01}), LFVI())
    with pytest.raises(ModelStructureError, match="use AutoNormal, AutoDiagonalNormal") as info:
        svi.step(problem.data)
    assert isinstance(info.value.__cause__, ImplicitDensityError)
    assert not list(pyro.get_param_store().keys())


def test_autonormal_local_guide_density_is_its_auxiliary_normal():
    # AutoNormal draws each site as a point mass on the transform of an
    # auxiliary Normal draw; LFVI must use that Normal as log q(z_n).
    from pyro_lfvi.pairing import local_guide_densities

    problem = HierarchicalNormal()
    guide = AutoNormal(problem.model)
    guide_trace = pyro.poutine.trace(guide).get_trace(problem.data)
    model_trace = pyro.poutine.trace(
        pyro.poutine.replay(problem.model, trace=guide_trace)
    ).get_trace(problem.data)
    density = local_guide_densities(guide_trace, model_trace, ["theta", "tau"], 16)
    for name in ("theta", "tau"):
        aux = guide_trace.nodes[f"{name}_unconstrained"]
        value = guide_trace.nodes[name]["value"]
        expected = aux["fn"].log_prob(aux["value"])
        if name == "tau":  # positive support: minus log |d tau / d u| = -u
            expected = expected - aux["value"]
        assert torch.allclose(density[name].log_prob(value), expected, atol=1e-5)


def test_point_mass_local_guide_is_refused_with_advice():
    problem = HierarchicalNormal()
    guide = AutoDelta(problem.model)
    with pytest.raises(ModelStructureError, match="Local site 'theta' has a point-mass guide"):
        LFVI().loss(problem.model, guide, problem.data)
    assert not list(pyro.get_param_store().keys())


def adversarial_problem(reparameterized):
    data = 2.0 + 0.7 * torch.randn(1000)

    def model(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", len(data), subsample_size=100) as i:
            site = ImplicitSite(
                lambda m, s: m + s * torch.randn_like(m),
                loc,
                scale,
                reparameterized=reparameterized,
            )
            pyro.sample("x", site, obs=data[i])

    def guide(data):
        pass

    return data, model, guide


# Seeds 1 and 2 are slow (a 1,500-step fit each), so the default suite stays under 10 minutes.
@pytest.mark.parametrize(
    "seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]
)
def test_adversarial_mode_fits_a_differentiable_simulator_to_data(seed):
    pyro.set_rng_seed(seed)
    data, model, guide = adversarial_problem(reparameterized=True)
    svi = decaying_svi(model, guide, LFVI(model_params="adversarial"), 1500, 0.01, 0.0005)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LFVIWarning)
        for _ in range(1500):
            svi.step(data)
    # The simulator reproduces the data's location and scale within 0.15 data sds. (A
    # classifier-estimated KL gradient is noisier than the moments' standard errors:
    # the scale's error reached 6 of them on some seeds, before and after the
    # contrastive estimator arrived.)
    sd = float(data.std())
    assert abs(float(pyro.param("loc").detach()) - float(data.mean())) < 0.15 * sd
    assert abs(float(pyro.param("scale").detach()) - sd) < 0.15 * sd


def test_model_params_without_gradient_warn_by_default():
    data, model, guide = adversarial_problem(reparameterized=True)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), LFVI())
    with pytest.warns(LFVIWarning, match=r"Model parameters \['loc', 'scale'\].*AutoDelta"):
        svi.step(data)


def test_model_params_of_a_non_differentiable_simulator_warn_in_adversarial_mode():
    data, model, guide = adversarial_problem(reparameterized=False)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), LFVI(model_params="adversarial"))
    with pytest.warns(LFVIWarning, match="reparameterized=True"):
        svi.step(data)


def test_point_mass_globals_are_spread_for_the_discriminator():
    from pyro_lfvi.pairing import pair_joints

    problem = ConjugateNormal()
    guide = AutoDelta(problem.model)
    plate = pyro.plate("particles", 8, dim=-2)
    pair = pair_joints(plate(problem.model), plate(guide), (problem.data,), {}, "particles", 8, 5.0)
    assert float(pair.q_global["mu"].std()) == 0.0
    assert 0.2 < float(pair.p_global["mu"].std()) < 1.0  # point_spread 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model_params": "em"}, "model_params to be None or 'adversarial'"),
        ({"contrast_draws": 1}, "contrast_draws >= 2"),
        ({"point_spread": 0.0}, "point_spread to be a number > 0"),
    ],
)
def test_guide_related_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LFVI(**kwargs)


@pytest.mark.parametrize(
    "autoguide, estimator",
    [
        (AutoNormal, ContrastiveRatioEstimator),
        (AutoDiagonalNormal, ContrastiveRatioEstimator),
        (AutoMultivariateNormal, ContrastiveRatioEstimator),
        (AutoDelta, JointRatioEstimator),  # a point mass: variational EM
    ],
)
def test_autoguides_on_globals_get_the_estimator_their_family_needs(autoguide, estimator):
    # An autoguide's point masses sit on transforms of auxiliary draws: a
    # distribution, for the default estimator. Taking them for variational EM
    # sent AutoDiagonalNormal to the joint classifier, which left mu 401 exact
    # sds off on ConjugateNormal's seed 0 (3000 steps; 0.25 sds with this fix).
    problem = ConjugateNormal()
    elbo = LFVI()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LFVIWarning)
        SVI(problem.model, autoguide(problem.model), pyro.optim.Adam({"lr": 0.01}), elbo).step(
            problem.data
        )
    assert type(elbo.estimator) is estimator
