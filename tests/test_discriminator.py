"""The ratio estimator recovers known log density ratios."""

import pytest
import torch
import torch.distributions as td

from pyro_lfvi import MLPDiscriminator, hinge_loss, log_loss


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
    with pytest.raises(ValueError, match="Expected input_size >= 1, actual 0"):
        MLPDiscriminator(0)
