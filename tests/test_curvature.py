"""Bartlett's identity on known log likelihoods, and the check's warnings built on it."""

import math
import warnings

import pyro
import pytest
import torch

from pyro_lfvi import LFVI, ContrastiveRatioEstimator, LFVIWarning, check_ratio_estimator, fit
from pyro_lfvi.contrastive import ContrastiveNetwork
from pyro_lfvi.curvature import MAX_COORDINATES, Curvature, curvature
from pyro_lfvi.examples import ConjugateNormal, GaussianLinear, HierarchicalNormal


class ExactLogLikelihood:
    """A stand-in for the contrastive network whose logit is ``shrink`` times
    the simulator's exact log likelihood, ``log Normal(x | mu, 1)``."""

    theta = staticmethod(ContrastiveNetwork.theta)

    def __init__(self, shrink=1.0, latent_curvature=0.0, centre=0.0, marginal_sd=1.0):
        self.shrink = shrink
        self.latent_curvature = latent_curvature
        self.centre = centre
        self.marginal_sd = marginal_sd

    def embed(self, observed):
        return observed["x"]

    def classify(self, embedded, local, global_):
        # With latent_curvature, minus log m(x), the simulations' marginal, and a
        # function of the latents alone, convex with that curvature.
        mu = self.theta(local, global_, embedded.shape[:-1])[..., 0]
        x = embedded[..., 0]
        logit = self.shrink * torch.distributions.Normal(mu, 1.0).log_prob(x)
        if self.latent_curvature:
            marginal = torch.distributions.Normal(self.centre, self.marginal_sd).log_prob(x)
            logit = logit - marginal + 0.5 * self.latent_curvature * (mu - self.centre) ** 2
        return logit


def conjugate_pairs(scale_factor=1.0, num=64):
    problem = ConjugateNormal()
    sd = problem.exact()["mu"][1]
    pyro.param("mu_loc", torch.tensor(problem.true_mu))
    pyro.param("mu_scale", torch.tensor(scale_factor * sd))
    elbo = LFVI()
    with torch.no_grad():
        pairs = [
            elbo._pair(problem.model, problem.guide, (problem.data,), {})[0] for _ in range(num)
        ]
    return pairs, sd


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_exact_log_likelihood_satisfies_the_identity(seed):
    # The score's variance and the negative curvature of log Normal(x | mu, 1)
    # are both 1 per data point; the guide sits at the exact posterior.
    torch.manual_seed(seed)
    pairs, sd = conjugate_pairs()
    (name, c), *rest = curvature(ExactLogLikelihood(), pairs).items()
    assert name == "mu" and not rest
    assert c.points == 1000
    assert abs(c.score_variance - 1.0) < 0.05 and abs(c.curvature - 1.0) < 1e-4
    assert abs(c.guide_precision * sd**2 - 1.0) < 0.2  # 8 particles x 64 pairs: 3 standard errors
    assert 0.9 < c.sd_factor < 1.1 and 0.9 < c.width < 1.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_shrunk_logit_predicts_a_too_wide_posterior(seed):
    # Half the log likelihood: a guide following it would be sqrt(2) too wide.
    torch.manual_seed(seed)
    pairs, _ = conjugate_pairs()
    c = curvature(ExactLogLikelihood(shrink=0.5), pairs)["mu"]
    assert abs(c.ratio - 2.0) < 0.15
    assert abs(c.sd_factor - math.sqrt(2.0)) < 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_function_of_the_latents_alone_is_normalised_away(seed):
    # The exact log ratio plus a convex function of mu alone: the raw logit's curvature
    # (1 - 4 = -3 per data point) breaks the identity, but the self-normalised logit,
    # which the ELBO uses, is the exact one again.
    torch.manual_seed(seed)
    pairs, sd = conjugate_pairs()
    problem = ConjugateNormal()
    net = ExactLogLikelihood(
        latent_curvature=4.0, centre=problem.true_mu, marginal_sd=(1 + (2 * sd) ** 2) ** 0.5
    )
    raw = curvature(net, pairs)["mu"]
    assert abs(raw.curvature + 3.0) < 0.05 and raw.sd_factor == math.inf
    estimator = ContrastiveRatioEstimator()

    def normalizer(pair, valid, local, global_):
        return estimator.log_normalizer(net, pair, valid, local, global_)

    before = torch.get_rng_state()
    c = curvature(net, pairs, normalizer)["mu"]
    assert torch.equal(torch.get_rng_state(), before)
    assert abs(c.ratio - 1.0) < 0.15 and 0.9 < c.sd_factor < 1.1, c


class GroupLogLikelihood:
    """A stand-in with local and global latents (``HierarchicalNormal``): the
    log likelihood of a group's points given its mean, plus ``extra(theta)``."""

    theta = staticmethod(ContrastiveNetwork.theta)

    def __init__(self, extra=None):
        self.extra = extra

    def embed(self, observed):
        return observed["y"]

    def classify(self, embedded, local, global_):
        theta = self.theta(local, global_, embedded.shape[:-1])  # theta, mu, tau
        logit = torch.distributions.Normal(theta[..., :1], 1.0).log_prob(embedded).sum(-1)
        return logit if self.extra is None else logit + self.extra(theta)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_normaliser_takes_off_any_function_of_the_latents(seed):
    # Local and global latents (rows normalised one by one): adding a function of the
    # latents alone changes the raw logit's identity but not the self-normalised one.
    torch.manual_seed(seed)
    problem = HierarchicalNormal()
    elbo = LFVI()
    with torch.no_grad():
        pairs = [elbo._pair(problem.model, problem.guide, (problem.data,), {})[0] for _ in range(8)]
    assert pairs[0].p_local and pairs[0].p_global
    estimator = ContrastiveRatioEstimator()

    def results(net, normalised):
        def normalizer(pair, valid, local, global_):
            return estimator.log_normalizer(net, pair, valid, local, global_)

        found = curvature(net, pairs, normalizer if normalised else None)
        return {k: (c.score_variance, c.curvature) for k, c in found.items()}

    plain = GroupLogLikelihood()
    before = torch.get_rng_state()
    results(plain, True)  # measured at LOCAL_ROWS random points of each pair's 20
    assert torch.equal(torch.get_rng_state(), before)
    shifted = GroupLogLikelihood(lambda t: 3.0 * t[..., 0] ** 2 - t[..., 0] * t[..., 1] + t[..., 2])
    assert set(results(plain, True)) == {"theta", "mu", "tau"}
    for name, (a, b) in results(plain, True).items():
        a2, b2 = results(shifted, True)[name]
        assert a2 == pytest.approx(a, rel=1e-4, abs=1e-4)
        assert b2 == pytest.approx(b, rel=1e-4, abs=1e-4)
    raw, raw_shifted = results(plain, False)["theta"], results(shifted, False)["theta"]
    assert raw_shifted[1] == pytest.approx(raw[1] - 6.0, rel=1e-4)


def test_a_guide_wider_than_its_likelihood_is_measured():
    torch.manual_seed(0)
    pairs, _ = conjugate_pairs(scale_factor=2.0)
    c = curvature(ExactLogLikelihood(), pairs)["mu"]
    assert 1.8 < c.width < 2.2


def test_curvature_properties():
    shrunk = Curvature(score_variance=0.25, curvature=0.5, guide_precision=500.0, points=1000)
    assert shrunk.ratio == 2.0 and shrunk.relevance == 2.0
    assert shrunk.sd_factor == pytest.approx(math.sqrt(2.0))
    assert shrunk.width == pytest.approx(1.0)
    # Negative curvature where the likelihood matters; a prior-dominated coordinate.
    assert Curvature(1.0, -0.5, 100.0, 1000).sd_factor == math.inf
    assert Curvature(1.0, -0.5, 1e6, 1000).sd_factor == 1.0
    assert Curvature(1.0, -0.5, 1e6, 1000).width == 0.0
    prior_bound = Curvature(1.0, 3.0, 1e6, 1000)
    assert prior_bound.sd_factor == pytest.approx(1 / math.sqrt(1 - 0.009 + 0.003), rel=1e-6)


def test_too_many_coordinates_are_not_measured():
    torch.manual_seed(0)
    problem = GaussianLinear(dim=MAX_COORDINATES + 1, data=torch.zeros(MAX_COORDINATES + 1))
    elbo = LFVI()
    with torch.no_grad():
        pair = elbo._pair(problem.model, problem.guide, (problem.data,), {})[0]
    assert curvature(ExactLogLikelihood(), [pair]) == {}


def test_check_warns_when_the_estimator_logit_is_shrunk():
    # A trained fit passes; the same network with its logit scaled by 1/4
    # breaks the identity (curvature 4x the score's variance), and the
    # posterior sds it predicts leave the 0.8-1.25x target.
    problem = GaussianLinear(dim=2, data=torch.tensor([0.3, -0.2]))
    elbo = LFVI()
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LFVIWarning)
        fit(svi, problem.data, num_steps=400, progress=False, check=False)
    kept = check_ratio_estimator(
        elbo, problem.model, problem.guide, problem.data, max_updates=100, warn=False
    )
    assert kept.failed == [], kept.curvature
    last = [m for m in elbo.estimator.network.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(0.25)
        last.bias.mul_(0.25)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        result = check_ratio_estimator(
            elbo, problem.model, problem.guide, problem.data, max_updates=100
        )
    assert any("breaks Bartlett's identity" in str(w.message) for w in caught), caught
    assert result.warned and set(result.failed) == {"theta[0]", "theta[1]"}
    for name in result.failed:
        assert abs(result.curvature[name].ratio / kept.curvature[name].ratio - 4.0) < 0.5
        assert result.curvature[name].sd_factor > 1.25
