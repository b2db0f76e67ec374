"""The ratio estimator recovers known log density ratios."""

import pyro
import pytest
import torch
import torch.distributions as td

from pyro_lfvi import LFVI, DiscriminatorError, MLPDiscriminator, hinge_loss, log_loss
from pyro_lfvi.examples import ConjugateNormal


def fit(net, sample_p, sample_q, loss_fn, steps=1500):
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-4)
    for _ in range(steps):
        xp, xq = sample_p(1024), sample_q(1024)
        loss = loss_fn(net({"x": xp}, {}, {}), net({"x": xq}, {}, {}))
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    return net


def test_log_loss_recovers_gaussian_log_ratio():
    p, q = td.Normal(0.0, 1.0), td.Normal(1.0, 1.5)
    sample_p = lambda n: p.sample((1, n, 1))  # noqa: E731
    sample_q = lambda n: q.sample((1, n, 1))  # noqa: E731
    net = MLPDiscriminator(1, (32, 32))
    net.fit_standardization(sample_p(2000), sample_q(2000))
    fit(net, sample_p, sample_q, log_loss)
    x = torch.linspace(-1.5, 2.0, 50)
    with torch.no_grad():
        learned = net({"x": x.view(1, -1, 1)}, {}, {}).squeeze(0)
    exact = p.log_prob(x) - q.log_prob(x)
    # Tolerance 0.15 nats where both densities have mass (|x| within ~2 sd);
    # measured max error 0.06 with this seed.
    assert (learned - exact).abs().max() < 0.15


def test_hinge_loss_recovers_the_sign_of_the_log_ratio():
    p, q = td.Normal(0.0, 1.0), td.Normal(2.0, 1.0)
    sample_p = lambda n: p.sample((1, n, 1))  # noqa: E731
    sample_q = lambda n: q.sample((1, n, 1))  # noqa: E731
    net = MLPDiscriminator(1, (16,))
    fit(net, sample_p, sample_q, hinge_loss, steps=500)
    x = torch.tensor([-1.0, 0.0, 0.5, 1.5, 2.0, 3.0])
    with torch.no_grad():
        learned = net({"x": x.view(1, -1, 1)}, {}, {}).squeeze(0)
    assert torch.equal(learned > 0, x < 1.0)


def test_globals_are_broadcast_over_points_and_inputs_standardised():
    net = MLPDiscriminator(3, (8,))
    obs = {"x": torch.randn(2, 5, 2) * 10 + 3}
    glob = {"b": torch.randn(2, 1)}
    net.fit_standardization(torch.cat([obs["x"], glob["b"].unsqueeze(1).expand(2, 5, 1)], -1))
    assert net(obs, {}, glob).shape == (2, 5)
    assert float(net.standardization[0, 0].detach()) == pytest.approx(
        float(obs["x"][..., 0].mean()), abs=1e-4
    )


def _conjugate_problem():
    return ConjugateNormal(num_data=40, batch_size=10)


def test_summary_feeds_the_default_discriminator_its_statistics():
    problem = _conjugate_problem()
    seen = []

    def summary(observed):
        seen.append(tuple(observed["x"].shape))
        return {"x": torch.cat([observed["x"], observed["x"] ** 2], -1)}

    elbo = LFVI(summary=summary, estimator="joint")
    pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo).step(
        problem.data
    )
    assert seen and seen[0] == (8, 10, 1)
    assert elbo.discriminator is not None
    assert elbo.discriminator.net[0].in_features == 3  # x, x^2, mu


@pytest.mark.parametrize(
    "summary, match",
    [
        (lambda obs: obs["x"], "non-empty dict of tensors"),
        (lambda obs: {"x": obs["x"][0]}, r"summary\['x'\] to have shape"),
        (lambda obs: obs["missing"], "summary function raised KeyError"),
    ],
)
def test_bad_summary_is_reported_and_leaves_the_store_alone(summary, match):
    problem = _conjugate_problem()
    with pytest.raises(DiscriminatorError, match=match):
        LFVI(summary=summary).loss(problem.model, problem.guide, problem.data)
    assert "lfvi_discriminator$$$net.0.weight" not in pyro.get_param_store()


def test_summary_with_a_custom_discriminator_is_refused():
    with pytest.raises(ValueError, match="summary only with the default discriminator"):
        LFVI(discriminator=MLPDiscriminator(2), summary=lambda obs: obs)
