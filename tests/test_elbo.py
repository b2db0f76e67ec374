"""The pairing of model and guide: hand-computed ELBO, gradient routing, p-side."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.params import param_with_module_name
from torch import nn

from pyro_lfvi import LFVI, ImplicitSite

N, M, TAU = 10, 4, 3.0


class Bilinear(nn.Module):
    """r(x, beta) = a * x * beta + b, a fixed, known ratio estimator."""

    def __init__(self, a=0.7, b=-0.2):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, observed, local, global_):
        x = observed["x"].squeeze(-1)
        beta = global_["beta"]
        return self.a * x * beta + self.b


def make_problem(record):
    data = torch.linspace(-1.0, 2.0, N)

    def sim(beta):
        record.setdefault("sim_in", []).append(beta.detach().clone())
        out = beta + torch.randn_like(beta)
        record.setdefault("sim", []).append(out.detach().clone())
        return out

    def model(data):
        beta = pyro.sample("beta", dist.Normal(0.0, TAU))
        with pyro.plate("data", N, subsample_size=M) as idx:
            record["idx"] = idx.clone()
            pyro.sample("x", ImplicitSite(sim, beta), obs=data[idx])

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.3))
        scale = pyro.param("scale", torch.tensor(0.5), constraint=constraints.positive)
        beta = pyro.sample("beta", dist.Normal(loc, scale))
        record["beta"] = beta.detach().clone()

    return data, model, guide


def hand_elbo(data, record, a, b, loc, scale, normalize):
    beta = record["beta"]
    x = data[record["idx"]]
    r = a * x * beta + b
    if normalize:
        r = r - (torch.logsumexp(r, 0) - math.log(M))
    log_p = dist.Normal(0.0, TAU).log_prob(beta)
    log_q = dist.Normal(loc, scale).log_prob(beta)
    return log_p - log_q + (N / M) * r.sum()


@pytest.mark.parametrize("normalize", [False, True])
def test_elbo_estimate_equals_hand_computed_value(normalize):
    record = {}
    data, model, guide = make_problem(record)
    elbo = LFVI(num_particles=1, discriminator=Bilinear(), self_normalize=normalize)
    loss = elbo.loss(model, guide, data)
    expected = hand_elbo(data, record, 0.7, -0.2, 0.3, 0.5, normalize)
    assert loss == pytest.approx(-float(expected), rel=1e-5)


def test_gradients_route_elbo_to_guide_and_scoring_rule_to_discriminator():
    record = {}
    data, model, guide = make_problem(record)
    net = Bilinear()
    elbo = LFVI(num_particles=1, discriminator=net, self_normalize=False)
    elbo.loss_and_grads(model, guide, data)
    store = pyro.get_param_store()
    got_loc = store.get_param("loc").unconstrained().grad.clone()
    got_scale = store.get_param("scale").unconstrained().grad.clone()
    got_a, got_b = net.a.grad.clone(), net.b.grad.clone()

    # Hand computation with the same draws: the ELBO through beta only ...
    loc = torch.tensor(0.3, requires_grad=True)
    log_scale = torch.tensor(0.5).log().requires_grad_()
    eps = (record["beta"] - 0.3) / 0.5
    beta = loc + log_scale.exp() * eps
    x = data[record["idx"]]
    a, b = torch.tensor(0.7), torch.tensor(-0.2)
    hand = (
        dist.Normal(0.0, TAU).log_prob(beta)
        - dist.Normal(loc, log_scale.exp()).log_prob(beta)
        + (N / M) * (a * x * beta + b).sum()
    )
    (-hand).backward()
    assert torch.allclose(got_loc, loc.grad, atol=1e-5)
    assert torch.allclose(got_scale, log_scale.grad, atol=1e-5)

    # ... and the scoring rule on detached samples into the weights only.
    a_ = torch.tensor(0.7, requires_grad=True)
    b_ = torch.tensor(-0.2, requires_grad=True)
    x_p = record["sim"][-1]
    bd = record["beta"]
    d_loss = F.softplus(-(a_ * x_p * bd + b_)).mean() + F.softplus(a_ * x * bd + b_).mean()
    d_loss.backward()
    assert torch.allclose(got_a, a_.grad, atol=1e-5)
    assert torch.allclose(got_b, b_.grad, atol=1e-5)


def test_discriminator_weights_get_no_elbo_gradient():
    record = {}
    data, model, guide = make_problem(record)
    net = Bilinear()
    no_scoring = lambda lp, lq: 0.0 * (lp.sum() + lq.sum())  # noqa: E731
    elbo = LFVI(num_particles=1, discriminator=net, ratio_loss=no_scoring)
    elbo.loss_and_grads(model, guide, data)
    assert float(net.a.grad.abs()) == 0.0 and float(net.b.grad.abs()) == 0.0
    assert float(pyro.get_param_store().get_param("loc").unconstrained().grad.abs()) > 0


def test_subsample_scale_n_over_m_is_applied():
    record = {}
    data, model, guide = make_problem(record)
    net = Bilinear(a=0.0, b=1.0)  # r = 1 for every point
    elbo = LFVI(num_particles=1, discriminator=net, self_normalize=False)
    loss = elbo.loss(model, guide, data)
    beta = record["beta"]
    global_term = dist.Normal(0.0, TAU).log_prob(beta) - dist.Normal(0.3, 0.5).log_prob(beta)
    assert -loss == pytest.approx(float(global_term) + N, rel=1e-5)


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, observed, local, global_):
        self.calls.append((observed["x"].detach().clone(), local["z"].detach().clone()))
        return self.w * observed["x"].sum(-1)


@pytest.mark.parametrize("local_prior", ["explicit", "implicit"])
def test_p_side_locals_come_from_the_model_prior_not_the_guide(local_prior):
    data = torch.zeros(6)

    def prior_sim(loc):
        return loc + 0.01 * torch.randn_like(loc)

    def model(data):
        beta = pyro.sample("beta", dist.Normal(100.0, 0.01))
        with pyro.plate("data", len(data)):
            if local_prior == "explicit":
                z = pyro.sample("z", dist.Normal(beta, 0.01))
            else:
                z = pyro.sample("z", ImplicitSite(prior_sim, beta))
            pyro.sample("x", ImplicitSite(lambda z: z + 0.01 * torch.randn_like(z), z), obs=data)

    def guide(data):
        pyro.sample("beta", dist.Normal(100.0, 0.01))
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Normal(-100.0, 0.01))

    net = Recorder()
    LFVI(num_particles=2, discriminator=net).loss_and_grads(model, guide, data)
    p_side = [(x, z) for x, z in net.calls if (x - 100).abs().max() < 1]
    assert p_side, "the p-side was never shown to the discriminator"
    for _, z in p_side:
        assert (z - 100).abs().max() < 1  # z' ~ p(z | beta), near 100
    for x, z in net.calls:
        # Data (0) or simulations from the prior (100), never from the guide (-100).
        assert bool(((x.abs() < 1) | ((x - 100).abs() < 1)).all())
        if bool((x.abs() < 1).all()):
            assert (z + 100).abs().max() < 1  # q-side pairs data with guide locals


@pytest.mark.parametrize("vectorize", [True, False])
def test_particles_average_the_hand_computed_elbo(vectorize):
    # Every particle's guide draw and minibatch enter the estimate once, whether
    # the particles run in one vectorised pass or one after another.
    calls = []

    def recorded(_, key):
        def wrapper(data):
            record = {}
            _, model, guide = make_problem(record)
            out = {"model": model, "guide": guide}[key](data)
            calls.append((key, record))
            return out

        return wrapper

    data = make_problem({})[0]
    elbo = LFVI(
        num_particles=3,
        vectorize_particles=vectorize,
        discriminator=Bilinear(),
        self_normalize=False,
        widen=1.0,
    )
    model, guide = recorded(None, "model"), recorded(None, "guide")
    elbo.loss(model, guide, data)  # the first call also traces both once to set up
    calls.clear()
    loss = elbo.loss(model, guide, data)
    guides = [r for k, r in calls if k == "guide"]
    models = [r for k, r in calls if k == "model"]
    # Per pairing: one guide run, then the q-side and the p-side model runs.
    q_models = models[0::2]
    expected = []
    for g, m in zip(guides, q_models, strict=True):
        beta = g["beta"].reshape(-1, 1)
        r = 0.7 * data[m["idx"]] * beta - 0.2
        log_p = dist.Normal(0.0, TAU).log_prob(beta)
        log_q = dist.Normal(0.3, 0.5).log_prob(beta)
        expected.append((log_p - log_q).squeeze(-1) + (N / M) * r.sum(-1))
    expected = torch.cat(expected).mean()
    assert len(guides) == (1 if vectorize else 3)
    assert loss == pytest.approx(-float(expected), rel=1e-5)


def test_default_discriminator_lives_in_param_store_and_resumes(tmp_path):
    record = {}
    data, model, guide = make_problem(record)
    elbo = LFVI(estimator="joint")
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    for _ in range(3):
        svi.step(data)
    names = list(pyro.get_param_store().keys())
    key = lambda n: param_with_module_name("lfvi_discriminator", n)  # noqa: E731
    assert any(key(n) in names for n, _ in elbo.discriminator.named_parameters())
    path = tmp_path / "params.pt"
    pyro.get_param_store().save(path)
    saved = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    pyro.clear_param_store()
    pyro.get_param_store().load(path)
    fresh = LFVI(estimator="joint")
    fresh.loss(model, guide, data)  # builds a new net, then adopts the stored weights
    for name, param in fresh.discriminator.named_parameters():
        assert torch.equal(param.detach(), saved[key(name)])


@pytest.mark.parametrize("estimator", ["contrastive", "joint"])
def test_elbo_module_trains_guide_and_ratio_estimator_with_torch_optim(estimator):
    record = {}
    data, model, guide = make_problem(record)
    module = LFVI(estimator=estimator)(model, guide)
    module(data)  # data-dependent initialisation, as in Pyro's ELBOModule recipe
    params = [p for p in module.parameters() if p.requires_grad]
    net = module.discriminator if estimator == "joint" else module.ratio_estimator
    assert len(params) == len(list(net.parameters())) > 0
    opt = torch.optim.SGD([*params, pyro.param("loc").unconstrained()], lr=0.01)
    before = [p.detach().clone() for p in params]
    loss = module(data)
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params, strict=False))


def test_guide_only_global_sites_count_in_log_q_as_in_trace_elbo():
    """AutoDiagonalNormal keeps log q(beta) in an auxiliary (guide-only) latent site."""
    from pyro.infer.autoguide import AutoDiagonalNormal, init_to_mean

    record = {}
    data, model, _ = make_problem(record)
    guide = AutoDiagonalNormal(model, init_loc_fn=init_to_mean, init_scale=0.5)
    elbo = LFVI(num_particles=1, discriminator=Bilinear(), self_normalize=False)
    loss = elbo.loss(model, guide, data)
    beta = record["sim_in"][-1].reshape(-1)[0]  # the p-side simulator saw the guide's beta
    x = data[record["idx"]]
    log_q = dist.Normal(guide.loc.detach(), guide.scale.detach()).log_prob(beta).sum()
    r = 0.7 * x * beta - 0.2
    expected = dist.Normal(0.0, TAU).log_prob(beta) - log_q + (N / M) * r.sum()
    assert loss == pytest.approx(-float(expected), rel=1e-5)
