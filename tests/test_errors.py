"""Bad input, in one table: each case gets the library's error with a message
that names the site, shape or value and says what to do, and leaves the
parameter store exactly as it was.

Inputs whose intent is unambiguous (numpy arrays, lists, float64, integers and
booleans as observations; float64 parameters) are converted instead, and the
last tests check that they train exactly like their float32 tensor twins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from torch import nn

from pyro_lfvi import (
    LFVI,
    ContrastiveRatioEstimator,
    ConvEmbedding,
    DeepSetEmbedding,
    DiscriminatorError,
    ImplicitSite,
    JointRatioEstimator,
    MLPDiscriminator,
    MLPEmbedding,
    ModelStructureError,
    NoiseNetwork,
    SimulatorError,
    TrainingMonitor,
    fit,
    plot_history,
    to_inference_data,
)

DATA = torch.randn(8)


def noisy(loc):
    return loc + torch.randn_like(loc)


def normal_guide(data):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def model_with(sim=noisy, prior=None, size=None, **site_kwargs):
    def model(data):
        mu = pyro.sample("mu", prior if prior is not None else dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data) if size is None else size):
            pyro.sample("x", ImplicitSite(sim, mu, **site_kwargs), obs=data)

    return model


def svi_with(model, guide, elbo=None):
    return pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo or LFVI())


def step(model, guide=normal_guide, data=DATA, elbo=None):
    return lambda: svi_with(model, guide, elbo).step(data)


def snapshot():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


# -- models and guides of the cases -------------------------------------------


def vector_model(data):
    theta = pyro.sample("mu", dist.Normal(torch.zeros(4), 1.0).to_event(1))
    with pyro.plate("data", len(data)):
        pyro.sample("x", ImplicitSite(lambda t: t.sum(-1) + torch.randn(t.shape), theta), obs=data)


def vector_guide(data):
    loc = pyro.param("loc", torch.tensor(0.0))
    pyro.sample("mu", dist.Normal(loc.expand(4), 1.0).to_event(1))


def vector_model_dim2(data):
    theta = pyro.sample("mu", dist.Normal(torch.zeros(4), 1.0).to_event(1))
    with pyro.plate("data", len(data), dim=-2):
        pyro.sample("x", ImplicitSite(noisy, theta), obs=data)


def positive_scale_model(data):
    s = pyro.sample("mu", dist.HalfNormal(1.0))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Normal(0.0, s))
        pyro.sample("x", ImplicitSite(noisy, z), obs=data)


def negative_guide(data):
    loc = pyro.param("loc", torch.tensor(0.0))
    pyro.sample("mu", dist.Normal(loc - 5.0, 0.1))
    with pyro.plate("data", len(data)):
        pyro.sample("z", dist.Normal(torch.zeros(len(data)), 1.0))


def poisson_model(data):
    k = pyro.sample("mu", dist.Poisson(3.0))
    with pyro.plate("data", len(data)):
        pyro.sample("x", ImplicitSite(noisy, k), obs=data)


def poisson_guide(data):
    pyro.sample("mu", dist.Poisson(pyro.param("scale", torch.tensor(1.0))))


def implicit_global_guide(data):
    loc = pyro.param("loc", torch.tensor(0.0))
    pyro.sample("mu", ImplicitSite(noisy, loc, reparameterized=True))


def two_latent_model(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("x", ImplicitSite(lambda m, s: m + s * torch.randn_like(m), mu, s), obs=data)


def unobserved_model(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("x", ImplicitSite(noisy, mu))


def twice_named_guide(data):
    normal_guide(data)
    with pyro.plate("data", len(data)), pyro.plate("data", len(data)):
        pass


class WrongShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, observed, local, global_):
        return self.w * observed["x"]  # (P, M, 1) instead of (P, M)


def divide_by_zero(mu):
    return mu / 0


def raise_inside(mu):
    raise ZeroDivisionError("division by zero")


# -- the table ------------------------------------------------------------------


@dataclass
class Case:
    id: str
    run: Callable[[], Any]
    error: type[Exception]
    match: str


CASES = [
    # Observed data
    Case(
        "observations fewer than the plate",
        step(model_with(size=10)),
        ModelStructureError,
        r"observed value of site 'x' to have shape \(10,\).*actual \(8,\); check that the data "
        r"plate's size",
    ),
    Case(
        "vector observations without event_shape",
        step(model_with(), data=torch.randn(8, 3)),
        ModelStructureError,
        r"site 'x'.*actual \(8, 3\); if each data point is a vector.*event_shape=\(3,\)",
    ),
    Case(
        "another model's ratio estimator left in the param store",
        step(
            model_with(
                sim=lambda mu: noisy(mu.unsqueeze(-1).expand(*mu.shape, 2)), event_shape=(2,)
            ),
            data=torch.randn(8, 2),
        ),
        ModelStructureError,
        r"'lfvi_ratio\$\$\$x_standardization' to have this model's shape \(2, 2\), actual "
        r"\(2, 1\).*pyro.clear_param_store\(\)",
    ),
    Case(
        "no observations (plate of size zero)",
        step(model_with(), data=torch.zeros(0)),
        ModelStructureError,
        r"A plate has size zero: there are no data points",
    ),
    Case(
        "observations that are not numbers",
        step(model_with(), data=["a", "b"]),
        ModelStructureError,
        r"observed value of site 'x' to be a tensor, numpy array or list of numbers, "
        r"actual list",
    ),
    Case(
        "complex observations",
        step(model_with(), data=torch.zeros(8, dtype=torch.complex64)),
        ModelStructureError,
        r"real observed values at site 'x', actual torch.complex64",
    ),
    Case(
        "NaN in the observations",
        step(model_with(), data=torch.tensor([0.0, float("nan")] * 4)),
        ModelStructureError,
        r"site 'x'.*NaN",
    ),
    Case(
        "model without an observed site",
        step(unobserved_model),
        ModelStructureError,
        r"at least one observed site.*obs=",
    ),
    # Shapes of sites, parameters and guides
    Case(
        "parameter vector without param_event_dims",
        step(vector_model, vector_guide),
        ModelStructureError,
        r"Site 'x' does not fit plate 'data'.*4 at dim -1 where the plate has 8.*"
        r"param_event_dims=1",
    ),
    Case(
        "vector global fed to a site in a dim -2 plate without param_event_dims",
        step(vector_model_dim2, vector_guide, data=DATA.unsqueeze(-1)),
        ModelStructureError,
        r"Site 'x' has batch shape \(.*8, 4\), whose dim -1 \(size 4\) no plate declares.*"
        r"param_event_dims=",
    ),
    Case(
        "max_plate_nesting below the model's plates",
        step(vector_model_dim2, vector_guide, DATA.unsqueeze(-1), LFVI(max_plate_nesting=1)),
        ModelStructureError,
        r"Expected max_plate_nesting >= 2 \(plate 'data' sits at dim -2\), actual 1",
    ),
    Case(
        "guide value shaped unlike the prior",
        step(model_with(), vector_guide),
        ModelStructureError,
        r"'mu' guide \(4,\) vs model \(\); give the guide's sites the model's shapes",
    ),
    Case(
        "Normal guide on a positive global feeding a Normal scale",
        step(positive_scale_model, negative_guide),
        ModelStructureError,
        r"guide's values of 'mu' \(GreaterThanEq\(lower_bound=0.0\)\) lie outside the support.*"
        r"LogNormal for a positive site",
    ),
    Case(
        "model latent missing from the guide",
        step(two_latent_model),
        ModelStructureError,
        r"guide.*lacks 's'",
    ),
    Case(
        "global with an implicit guide",
        step(model_with(), implicit_global_guide),
        ModelStructureError,
        r"Global site 'mu' has an implicit guide",
    ),
    Case(
        "global with a non-reparameterised guide",
        step(poisson_model, poisson_guide),
        ModelStructureError,
        r"Global site 'mu'.*without rsample \(Poisson\)",
    ),
    Case(
        "guide with two sites of one name",
        step(model_with(), twice_named_guide),
        ModelStructureError,
        r"guide has two sample sites named 'data'",
    ),
    # Simulators
    Case(
        "simulator of the wrong shape",
        step(model_with(sim=lambda mu: torch.zeros(3)), elbo=LFVI(num_particles=1)),
        SimulatorError,
        r"site 'x'.*shape \(8,\).*actual \(3,\)",
    ),
    Case(
        "simulator of the wrong shape under vectorised particles",
        step(model_with(sim=lambda mu: torch.zeros(8))),
        SimulatorError,
        r"site 'x'.*shape \(\d+, 8\).*actual \(8,\)",
    ),
    Case(
        "simulator returning NaN",
        step(model_with(sim=divide_by_zero)),
        SimulatorError,
        r"simulator of site\(s\) \['x'\] returned NaN or inf in every one of this step's "
        r"\d+ simulations",
    ),
    Case(
        "simulator returning inf, the paper's joint estimator",
        step(model_with(sim=lambda mu: mu + float("inf")), elbo=LFVI(estimator="joint")),
        SimulatorError,
        r"simulator of site 'x' returned \d+ NaN or inf value\(s\) out of \d+",
    ),
    Case(
        "simulator raising",
        step(model_with(sim=raise_inside)),
        SimulatorError,
        r"simulator of site 'x' raised ZeroDivisionError: division by zero \(called with "
        r"parameters \[\(\d+, 8\)\]",
    ),
    Case(
        "simulator returning None",
        step(model_with(sim=lambda mu: None)),
        SimulatorError,
        r"simulator of site 'x' to return a tensor or numpy array of numbers, actual NoneType",
    ),
    Case(
        "implicit global prior ignoring its batch",
        step(model_with(prior=ImplicitSite(lambda: torch.randn(()), batch_shape=()))),
        SimulatorError,
        r"site 'mu' to return shape",
    ),
    Case(
        "custom discriminator of the wrong output shape",
        step(model_with(), elbo=LFVI(discriminator=WrongShape(), discriminator_name="mine")),
        DiscriminatorError,
        r"shape \(8, 8\).*actual \(8, 8, 1\)",
    ),
    # ImplicitSite's arguments
    Case(
        "simulator that is not callable",
        lambda: ImplicitSite(3, torch.zeros(2)),
        ValueError,
        r"Expected a callable simulator, actual int",
    ),
    Case(
        "param_event_dims of the wrong length",
        lambda: ImplicitSite(noisy, torch.zeros(2), torch.zeros(2), param_event_dims=(1,)),
        ValueError,
        r"one param_event_dims entry per parameter \(2\), actual 1",
    ),
    Case(
        "param_event_dims beyond the parameter's dims",
        lambda: ImplicitSite(noisy, torch.tensor(0.0), param_event_dims=1),
        ValueError,
        r"parameter 0 to have at least 1 dims.*actual shape \(\)",
    ),
    Case(
        "param_event_dims not an int",
        lambda: ImplicitSite(noisy, torch.zeros(2), param_event_dims=0.5),
        ValueError,
        r"param_event_dims to be an int or one int per parameter, actual 0.5",
    ),
    Case(
        "param_event_dims negative",
        lambda: ImplicitSite(noisy, torch.zeros(2), param_event_dims=(-1,)),
        ValueError,
        r"each of param_event_dims to be an integer >= 0, actual -1",
    ),
    Case(
        "parameters of clashing batch shapes",
        lambda: ImplicitSite(noisy, torch.zeros(2), torch.zeros(3)),
        ValueError,
        r"broadcastable batch shapes, actual \[\(2,\), \(3,\)\]",
    ),
    Case(
        "negative event_shape",
        lambda: ImplicitSite(noisy, torch.zeros(2), event_shape=(-1,)),
        ValueError,
        r"each entry of event_shape to be an integer >= 0, actual -1",
    ),
    Case(
        "event_shape given as a string",
        lambda: ImplicitSite(noisy, torch.zeros(2), event_shape="3"),
        ValueError,
        r"event_shape to be a tuple of integers >= 0, actual '3'",
    ),
    Case(
        "support given as a string",
        lambda: ImplicitSite(noisy, torch.zeros(2), support="positive"),
        ValueError,
        r"support to be a torch constraint.*actual 'positive'",
    ),
    Case(
        "to_event beyond the batch rank",
        lambda: ImplicitSite(noisy, torch.zeros(4)).to_event(2),
        ValueError,
        r"reinterpreted_batch_ndims between 0 and the batch rank 1.*actual 2",
    ),
    Case(
        "expand to a clashing batch shape",
        lambda: ImplicitSite(noisy, torch.zeros(3)).expand((4,)),
        ValueError,
        r"batch shape broadcastable with \(3,\), actual \(4,\)",
    ),
    # LFVI's arguments
    *[
        Case(
            f"num_particles={bad!r}",
            lambda bad=bad: LFVI(num_particles=bad),
            ValueError,
            r"Expected num_particles to be an integer >= 1, actual",
        )
        for bad in (0, -1, 1.5, True, "2")
    ],
    Case(
        "unknown ratio loss",
        lambda: LFVI(ratio_loss="kl"),
        ValueError,
        r"ratio_loss to be 'log', 'hinge'.*actual 'kl'",
    ),
    Case(
        "unknown estimator",
        lambda: LFVI(estimator="nope"),
        ValueError,
        r"estimator to be 'contrastive', 'joint', 'likelihood', a RatioEstimator or None"
        r".*actual 'nope'",
    ),
    Case(
        "joint options with the contrastive estimator",
        lambda: LFVI(estimator="contrastive", ratio_loss="hinge"),
        ValueError,
        r"no options of the joint classifier with estimator='contrastive', actual ratio_loss",
    ),
    Case(
        "estimator options given to LFVI beside an estimator object",
        lambda: LFVI(estimator=ContrastiveRatioEstimator(), hidden_sizes=(8,)),
        ValueError,
        r"actual hidden_sizes given to LFVI as well.*ContrastiveRatioEstimator\(\.\.\.\)",
    ),
    Case(
        "discriminator that is not a module",
        lambda: LFVI(discriminator=lambda *a: None),
        ValueError,
        r"Expected discriminator to be a torch\.nn\.Module",
    ),
    Case(
        "widen below 1",
        lambda: LFVI(widen=0.5),
        ValueError,
        r"Expected widen >= 1",
    ),
    Case(
        "a history of one row",
        lambda: LFVI(history_size=1),
        ValueError,
        r"Expected history_size >= 2, actual 1",
    ),
    Case(
        "hidden_sizes with a zero",
        lambda: LFVI(hidden_sizes=(64, 0)),
        ValueError,
        r"each of hidden_sizes to be an integer >= 1, actual 0",
    ),
    Case(
        "hidden_sizes as a string",
        lambda: JointRatioEstimator(hidden_sizes="64"),
        ValueError,
        r"hidden_sizes to be a sequence of integers >= 1.*actual '64'",
    ),
    Case(
        "empty discriminator_name",
        lambda: LFVI(discriminator_name=""),
        ValueError,
        r"discriminator_name to be a non-empty str",
    ),
    Case(
        "warmup_steps negative",
        lambda: LFVI(warmup_steps=-1),
        ValueError,
        r"warmup_steps to be an integer >= 0, actual -1",
    ),
    Case(
        "discriminator_optim not a Pyro optimiser",
        lambda: LFVI(discriminator_optim=torch.optim.Adam),
        ValueError,
        r"discriminator_optim to be a pyro\.optim optimiser",
    ),
    Case(
        "summary with a custom discriminator",
        lambda: LFVI(summary=lambda x: x, discriminator=nn.Linear(2, 1)),
        ValueError,
        r"summary only with the default discriminator",
    ),
    # Estimators, networks and helpers
    Case(
        "contrastive nan_policy unknown",
        lambda: ContrastiveRatioEstimator(nan_policy="ignore"),
        ValueError,
        r"nan_policy 'drop' or 'raise', actual 'ignore'",
    ),
    Case(
        "contrastive normalizer unknown",
        lambda: ContrastiveRatioEstimator(normalizer="mine"),
        ValueError,
        r"normalizer 'auto', 'all' or 'others', actual 'mine'",
    ),
    Case(
        "normalizer='others' with two particles",
        step(
            model_with(),
            elbo=LFVI(num_particles=2, estimator=ContrastiveRatioEstimator(normalizer="others")),
        ),
        ValueError,
        r"num_particles >= 3 with normalizer='others', actual 2",
    ),
    Case(
        "contrastive momentum out of range",
        lambda: ContrastiveRatioEstimator(momentum=2.0),
        ValueError,
        r"momentum in \(0, 1\], actual 2.0",
    ),
    Case(
        "contrastive embedding of the wrong type",
        lambda: ContrastiveRatioEstimator(embedding="conv"),
        ValueError,
        r"embedding to be a torch\.nn\.Module, a dict of them by observed site, or None, "
        r"actual str",
    ),
    Case(
        "MLP embedding of zero inputs",
        lambda: MLPEmbedding(0, 4),
        ValueError,
        r"in_size to be an integer >= 1, actual 0",
    ),
    Case(
        "convolutional embedding of zero channels",
        lambda: ConvEmbedding(0, 4),
        ValueError,
        r"channels to be an integer >= 1, actual 0",
    ),
    Case(
        "set embedding of negative output size",
        lambda: DeepSetEmbedding(2, -1),
        ValueError,
        r"out_size to be an integer >= 1, actual -1",
    ),
    Case(
        "noise network without noise",
        lambda: NoiseNetwork(2, noise_dim=0),
        ValueError,
        r"noise_dim to be an integer >= 1, actual 0",
    ),
    Case(
        "noise network given the wrong number of inputs",
        lambda: NoiseNetwork(2)(torch.zeros(3)),
        ValueError,
        r"Expected 2 input tensor\(s\) \(NoiseNetwork\(inputs=2\)\), actual 1 in all",
    ),
    Case(
        "discriminator of zero inputs",
        lambda: MLPDiscriminator(0),
        ValueError,
        r"input_size to be an integer >= 1, actual 0",
    ),
    Case(
        "monitor window of zero steps",
        lambda: TrainingMonitor(window=0),
        ValueError,
        r"window to be an integer >= 1, actual 0",
    ),
    Case(
        "monitor saturation above 1",
        lambda: TrainingMonitor(saturation=2.0),
        ValueError,
        r"saturation in \(0.5, 1\], actual 2.0",
    ),
    Case(
        "fit for zero steps",
        lambda: fit(svi_with(model_with(), normal_guide), DATA, num_steps=0),
        ValueError,
        r"num_steps to be an integer >= 1, actual 0",
    ),
    Case(
        "plot_history of something else",
        lambda: plot_history(3),
        ValueError,
        r"training history LFVI\.history \(a list of dicts, one per step\), actual int",
    ),
    Case(
        "plot_history of an empty history",
        lambda: plot_history([]),
        ValueError,
        r"non-empty training history",
    ),
    Case(
        "to_inference_data of zero draws",
        lambda: to_inference_data(model_with(), normal_guide, DATA, num_samples=0),
        ValueError,
        r"num_samples to be an integer >= 1, actual 0",
    ),
    Case(
        "to_inference_data of zero chains",
        lambda: to_inference_data(model_with(), normal_guide, DATA, num_chains=0),
        ValueError,
        r"num_chains to be an integer >= 1, actual 0",
    ),
]


@pytest.fixture
def trained_store():
    """A store of trained guide and ratio-estimator values: "untouched" means something."""
    svi = svi_with(model_with(), normal_guide)
    for _ in range(2):
        svi.step(DATA)
    return snapshot()


def test_the_table_is_long_enough():
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, trained_store):
    with pytest.raises(case.error, match=case.match):
        case.run()
    after = snapshot()
    assert after.keys() == trained_store.keys()
    for name, value in trained_store.items():
        assert torch.equal(value, after[name]), name


def test_a_failing_first_step_stores_nothing():
    with pytest.raises(SimulatorError):
        svi_with(model_with(sim=lambda mu: torch.zeros(3)), normal_guide).step(DATA)
    assert snapshot() == {}


# -- conversions instead of errors ----------------------------------------------


def fit_params(model, guide, data, steps=3):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = svi_with(model, guide)
    for _ in range(steps):
        svi.step(data)
    return {k: v.detach().double() for k, v in pyro.get_param_store().items()}


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda x: x.numpy(), id="numpy float32"),
        pytest.param(lambda x: x.numpy().astype(np.float64), id="numpy float64"),
        pytest.param(lambda x: x.double(), id="torch float64"),
        pytest.param(lambda x: x.tolist(), id="list"),
    ],
)
def test_observations_are_converted_like_their_tensor_twin(convert):
    data = DATA.double().float()  # exactly representable in both dtypes
    expected = fit_params(model_with(), normal_guide, data)
    actual = fit_params(model_with(), normal_guide, convert(data))
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(actual[name], expected[name], atol=1e-5), name


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_and_boolean_observations_train_as_floats(dtype):
    data = (DATA > 0).to(dtype)
    expected = fit_params(model_with(), normal_guide, data.float())
    actual = fit_params(model_with(), normal_guide, data)
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_float64_guide_parameters_train():
    # float64 draws consume the random stream differently, so the run cannot
    # match a float32 one draw for draw; it must train, in float64.
    def guide64(data):
        loc = pyro.param("loc", torch.tensor(np.log(0.4)))  # a float64 tensor
        scale = pyro.param(
            "scale", torch.tensor(1.0, dtype=torch.float64), constraint=constraints.positive
        )
        pyro.sample("mu", dist.Normal(loc, scale))

    svi = svi_with(model_with(), guide64)
    losses = [svi.step(DATA) for _ in range(5)]
    assert all(np.isfinite(losses))
    loc = pyro.param("loc").detach()
    assert loc.dtype == torch.float64 and float(loc) != pytest.approx(np.log(0.4), abs=1e-6)
