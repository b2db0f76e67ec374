"""ArviZ conversion: groups, names, dims, shapes, and a summary against the exact answer."""

import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from fitting import train

from pyro_lfvi import LFVI, EstimatorCheck, ImplicitSite, LFVIWarning, to_inference_data
from pyro_lfvi.examples import ConjugateNormal, HierarchicalNormal

ARVIZ_1 = int(az.__version__.split(".")[0]) >= 1


def groups_of(data):
    return set(data.children) if ARVIZ_1 else set(data.groups())


def _three_steps():
    """The hierarchical example (7 groups, minibatches of 3) after three steps."""
    problem = HierarchicalNormal(num_groups=7, batch_size=3)
    elbo = LFVI()
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    for _ in range(3):
        svi.step(problem.data)
    return problem, elbo


def _args(problem):
    return problem.model, problem.guide, problem.data


def test_groups_names_dims_and_shapes_with_subsampled_locals():
    problem, elbo = _three_steps()
    idata = to_inference_data(
        *_args(problem),
        num_samples=25,
        num_chains=2,
        lfvi=elbo,
        dims={"y": ["obs"]},
        coords={"groups": [f"g{j}" for j in range(7)]},
    )
    assert groups_of(idata) == {
        "posterior",
        "posterior_predictive",
        "observed_data",
        "prior",
        "prior_predictive",
        "training_history",
    }
    post = idata["posterior"]
    assert set(post.data_vars) == {"mu", "tau", "theta"}
    assert post["mu"].dims == ("chain", "draw") and post["mu"].shape == (2, 25)
    assert post["theta"].dims == ("chain", "draw", "groups")
    assert post["theta"].shape == (2, 25, 7)
    assert list(post["groups"].values) == [f"g{j}" for j in range(7)]
    pp = idata["posterior_predictive"]["y"]
    assert pp.dims == ("chain", "draw", "groups", "obs") and pp.shape == (2, 25, 7, 10)
    obs = idata["observed_data"]["y"]
    assert obs.dims == ("groups", "obs")
    np.testing.assert_array_equal(obs.values, problem.data.numpy())  # every point, once
    assert idata["prior"]["theta"].shape == (2, 25, 7)
    assert idata["prior_predictive"]["y"].shape == (2, 25, 7, 10)
    stats = idata["training_history"]
    assert stats["elbo"].dims == ("step",) and stats.sizes["step"] == 3
    assert set(stats.data_vars) >= {"elbo", "discriminator_loss", "discriminator_accuracy"}
    # Locals drawn for every group: each group's draws differ from the others'.
    theta = post["theta"].values.reshape(-1, 7)
    assert np.unique(theta.mean(0).round(6)).size == 7


def counting_problem(num_data, batch_size):
    """Many data points in minibatches, a local per point; records the number of
    simulations and of local draws the model and the guide make."""
    counts = {"simulated": 0, "local draws": 0}

    def simulate(theta):
        counts["simulated"] += theta.numel()
        return theta + torch.randn_like(theta)

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", num_data, subsample_size=batch_size) as idx:
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            counts["local draws"] += theta.numel()
            pyro.sample("x", ImplicitSite(simulate, theta), obs=data[idx])

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("mu", dist.Normal(loc, 0.5))
        with pyro.plate("data", num_data, subsample_size=batch_size) as idx:
            theta = pyro.sample("theta", dist.Normal(loc + 0 * data[idx], 0.7))
            counts["local draws"] += theta.numel()

    return model, guide, counts


@pytest.mark.parametrize("prior", [True, False])
def test_globals_only_never_draw_every_local_or_simulate(prior):
    num_data, batch_size, draws = 20_000, 50, 200
    model, guide, counts = counting_problem(num_data, batch_size)
    data = torch.randn(num_data)
    idata = to_inference_data(
        model, guide, data, num_samples=draws, num_chains=1, var_names=["mu"], prior=prior
    )
    assert groups_of(idata) == ({"posterior", "prior"} if prior else {"posterior"})
    assert list(idata["posterior"].data_vars) == ["mu"]
    assert idata["posterior"]["mu"].shape == (1, draws)
    if prior:
        assert list(idata["prior"].data_vars) == ["mu"]
    # No simulation at all, and local draws for one minibatch, not every data point.
    assert counts["simulated"] == 0
    assert counts["local draws"] <= 3 * draws * batch_size < draws * num_data / 10
    # Naming the observed site brings the predictive groups back, over every point.
    part = to_inference_data(
        model, guide, data, num_samples=2, num_chains=1, var_names=["mu", "x"], prior=False
    )
    assert groups_of(part) == {"posterior", "posterior_predictive", "observed_data"}
    assert part["posterior_predictive"]["x"].shape == (1, 2, num_data)
    assert counts["simulated"] == 2 * num_data


def test_var_names_must_name_sites():
    model, guide, _ = counting_problem(100, 10)
    data = torch.randn(100)
    with pytest.raises(ValueError, match=r"Expected var_names among the model's latent and "):
        to_inference_data(model, guide, data, var_names=["sigma"])
    with pytest.raises(ValueError, match=r"Expected var_names to be a list of site names"):
        to_inference_data(model, guide, data, var_names="mu")


@pytest.mark.skipif(ARVIZ_1, reason="InferenceData API is ArviZ 0.x; 1.x returns a DataTree")
def test_arviz_functions_run_without_shape_warnings():
    problem = ConjugateNormal(num_data=50, batch_size=10)
    pyro.param("mu_loc", torch.tensor(1.0))
    idata = to_inference_data(problem.model, problem.guide, problem.data, num_samples=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        az.summary(idata, var_names=["mu"])
        az.ess(idata, var_names=["mu"])
        az.rhat(idata, var_names=["mu"])


@pytest.mark.slow  # a 1,000-3,000-step fit; the default suite stays under 10 minutes
def test_summary_of_fitted_conjugate_model_matches_exact_posterior():
    problem = ConjugateNormal()
    train(problem, num_steps=3000, lr=0.01, final_lr=0.0005)
    idata = to_inference_data(problem.model, problem.guide, problem.data, num_samples=1000)
    summary = az.summary(idata, var_names=["mu"], kind="stats")
    mean, sd = problem.exact()["mu"]
    # Tolerance: 0.5 exact sds for the mean (training error plus Monte Carlo
    # error of 4000 draws, ~0.02 sd), a factor 1.3 for the sd.
    assert abs(summary.loc["mu", "mean"] - mean) < 0.5 * sd
    assert 1 / 1.3 < summary.loc["mu", "sd"] / sd < 1.3


@pytest.mark.skipif(not ARVIZ_1, reason="needs ArviZ >= 1.0 (Python >= 3.12)")
def test_arviz_1_returns_a_datatree():  # pragma: no cover - runs where ArviZ 1.x is installed
    import xarray as xr

    problem = ConjugateNormal(num_data=20, batch_size=5)
    data = to_inference_data(problem.model, problem.guide, problem.data, num_samples=10)
    assert isinstance(data, xr.DataTree)
    assert data["posterior"]["mu"].shape == (4, 10)
    az.summary(data, var_names=["mu"])


def test_sequential_plates_train_and_convert():
    # Each iteration of a sequential plate is a site of its own: no data plate
    # along a dim is shared, so each observed site is one whole observation.
    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        for i in pyro.plate("groups", 2):
            with pyro.plate(f"data_{i}", 5):
                pyro.sample(
                    f"x_{i}", ImplicitSite(lambda m: m + torch.randn_like(m), mu), obs=data[i]
                )

    def guide(data):
        pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

    data = torch.randn(2, 5)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), LFVI())
    assert np.isfinite(svi.step(data))
    idata = to_inference_data(model, guide, data, num_samples=10, num_chains=2)
    assert idata["posterior"]["mu"].shape == (2, 10)
    assert idata["posterior_predictive"]["x_1"].dims == ("chain", "draw", "data_1")


def _per_point(pair, total):
    """Values per particle and data point whose minibatch sum, scaled to the full
    data, is ``total`` (one per particle)."""
    points, full = pair.roles.num_points, pair.roles.full_size
    return (total / full).reshape(-1, 1).expand(pair.num_particles, points)


def _checked_at_exact_posterior(slope):
    """The conjugate example's guide at the exact posterior, and an LFVI whose check
    reports a refined log likelihood that tilts it by ``exp(slope (mu - m) / s)``."""
    problem = ConjugateNormal()
    mean, sd = (float(v) for v in problem.exact()["mu"])
    pyro.param("mu_loc", torch.tensor(mean))
    pyro.param("mu_scale", torch.tensor(sd))
    elbo = LFVI()

    def online(pair):
        return torch.zeros(pair.num_particles, pair.roles.num_points)

    def refined(pair):
        return _per_point(pair, slope * (pair.q_global["mu"].reshape(-1) - mean) / sd)

    # A copy that beat the estimator by 1 nat: the check found a lag.
    elbo.estimator_check = EstimatorCheck(
        1.0, 0.0, 0, 0, True, log_ratios=lambda: (online, refined)
    )
    return problem, elbo, mean, sd


def _reweighted_mu(problem, elbo, num_samples):
    """The posterior group of ``mu`` alone, reweighted, in two chains."""
    args = (problem.model, problem.guide, problem.data)
    options = {"num_chains": 2, "lfvi": elbo, "reweight": True, "prior": False}
    return to_inference_data(*args, num_samples=num_samples, var_names=["mu"], **options)[
        "posterior"
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reweighting_tilts_the_globals_as_the_checks_copy_says(seed):
    # A Normal(m, s) guide reweighted by exp(a (mu - m) / s) is Normal(m + a s, s).
    # Tolerances: the targets halved for the mean (0.25 sds), its 0.8-1.25x for the sd.
    pyro.set_rng_seed(seed)
    slope = 0.5
    problem, elbo, mean, sd = _checked_at_exact_posterior(slope)
    post = _reweighted_mu(problem, elbo, 250)
    assert post.attrs["reweighted"] == 1
    assert post.attrs["reweighted_effective_fraction"] == pytest.approx(
        np.exp(-(slope**2)), abs=0.1
    )
    mu = post["mu"].values
    assert mu.shape == (2, 250)
    assert abs(mu.mean() - (mean + slope * sd)) < 0.25 * sd
    assert 0.8 < mu.std() / sd < 1.25


def test_reweighting_whose_weights_collapse_keeps_the_guides_draws_and_warns():
    pyro.set_rng_seed(0)
    problem, elbo, mean, sd = _checked_at_exact_posterior(50.0)
    with pytest.warns(LFVIWarning, match="kept the guide's draws instead of reweighting") as record:
        post = _reweighted_mu(problem, elbo, 100)
    assert record[0].filename == __file__  # the warning points at the caller's line
    assert post.attrs["reweighted"] == 0 and post.attrs["reweighted_effective_fraction"] < 0.25
    assert abs(post["mu"].values.mean() - mean) < 0.25 * sd


def test_reweighting_draws_locals_at_the_resampled_globals():
    # Equal weights (a copy that changed nothing): the globals are the guide's
    # draws, each once, and the locals and simulations have their usual shapes.
    pyro.set_rng_seed(0)
    problem, elbo = _three_steps()

    def same(pair):
        return torch.zeros(pair.num_particles, pair.roles.num_points)

    elbo.estimator_check = EstimatorCheck(1.0, 0.0, 0, 0, True, log_ratios=lambda: (same, same))
    idata = to_inference_data(
        *_args(problem), num_samples=25, num_chains=2, lfvi=elbo, reweight=True
    )
    post = idata["posterior"]
    assert post.attrs["reweighted"] == 1
    assert post.attrs["reweighted_effective_fraction"] == pytest.approx(1.0)
    assert post["mu"].shape == (2, 25) and post["theta"].shape == (2, 25, 7)
    assert np.unique(post["mu"].values).size == 50
    assert idata["posterior_predictive"]["y"].shape == (2, 25, 7, 10)


def test_a_copy_no_better_than_the_estimator_reweights_nothing():
    # Gain 0: the check found no lag, so the copy's log ratios are not even asked for.
    pyro.set_rng_seed(0)
    problem, elbo, mean, sd = _checked_at_exact_posterior(0.5)

    def unused():
        raise AssertionError("a copy that did not improve must not reweight")

    elbo.estimator_check = EstimatorCheck(0.5, 0.5, 0, 0, False, log_ratios=unused)
    post = _reweighted_mu(problem, elbo, 100)
    assert post.attrs["reweighted"] == 0 and post.attrs["reweighted_effective_fraction"] == 1.0
    assert abs(post["mu"].values.mean() - mean) < 0.25 * sd


def test_the_default_reweights_where_the_check_found_a_lag():
    # reweight="auto": the same tilt as reweight=True, without asking.
    pyro.set_rng_seed(0)
    slope = 0.5
    problem, elbo, mean, sd = _checked_at_exact_posterior(slope)
    args = (problem.model, problem.guide, problem.data)
    post = to_inference_data(*args, num_samples=250, lfvi=elbo, prior=False, var_names=["mu"])[
        "posterior"
    ]
    assert post.attrs["reweighted"] == 1
    assert abs(post["mu"].values.mean() - (mean + slope * sd)) < 0.25 * sd


def test_the_default_keeps_the_guides_draws_where_it_cannot_reweight():
    # No lfvi, an lfvi never checked, or the joint classifier's check: the guide's
    # draws, without an error or a reweighting attribute.
    pyro.set_rng_seed(0)
    problem, elbo, mean, sd = _checked_at_exact_posterior(5.0)
    args = (problem.model, problem.guide, problem.data)
    options = {"num_samples": 250, "prior": False, "var_names": ["mu"]}
    unchecked = LFVI()
    joint = LFVI()
    joint.estimator_check = EstimatorCheck(1.0, 0.0, 0, 0, True)  # no log ratios
    for lfvi in (None, unchecked, joint):
        post = to_inference_data(*args, lfvi=lfvi, **options)["posterior"]
        assert "reweighted" not in post.attrs
        assert abs(post["mu"].values.mean() - mean) < 0.25 * sd
    post = to_inference_data(*args, lfvi=elbo, reweight=False, **options)["posterior"]
    assert "reweighted" not in post.attrs
    assert abs(post["mu"].values.mean() - mean) < 0.25 * sd


def test_reweight_must_be_true_false_or_auto():
    problem = ConjugateNormal()
    args = (problem.model, problem.guide, problem.data)
    with pytest.raises(ValueError, match="Expected reweight=True, False or 'auto', actual 'yes'"):
        to_inference_data(*args, num_samples=10, reweight="yes")


def test_reweighting_needs_a_checked_lfvi_with_a_log_likelihood():
    problem = ConjugateNormal()
    args = (problem.model, problem.guide, problem.data)
    with pytest.raises(ValueError, match="Expected lfvi=<the LFVI instance used to fit>"):
        to_inference_data(*args, num_samples=10, reweight=True)
    elbo = LFVI()
    with pytest.raises(ValueError, match="actual one never checked"):
        to_inference_data(*args, num_samples=10, lfvi=elbo, reweight=True)
    elbo.estimator_check = EstimatorCheck(1.0, 0.0, 0, 0, True)  # the joint classifier's
    with pytest.raises(ValueError, match="actual the joint classifier"):
        to_inference_data(*args, num_samples=10, lfvi=elbo, reweight=True)
