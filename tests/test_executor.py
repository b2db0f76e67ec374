"""Simulators run by a ``concurrent.futures.Executor``: process and thread pools, Dask."""

import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyro_lfvi import LFVI, ImplicitSite, SimulatorError
from pyro_lfvi.handlers import name_implicit_sites


# Module-level simulators: worker processes import them by name.
def noisy(loc, scale, rng):
    """One batch element: numpy draws from the generator the site passes."""
    return loc + scale * rng.normal(size=np.shape(loc))


def record_types(loc, label, rng):
    return np.array([isinstance(loc, np.ndarray), isinstance(label, str), float(rng.random())])


def fails_on_negative(loc, rng):
    if loc < 0:
        raise ValueError("negative location")
    return loc + rng.normal()


def no_rng(loc):
    return loc


class InlineExecutor(Executor):
    """An executor that runs each task at once, in the caller's thread."""

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:
            future.set_exception(err)
        return future


@pytest.fixture(scope="module")
def pools():
    with ProcessPoolExecutor(1) as one, ProcessPoolExecutor(2) as two:
        yield {1: one, 2: two}


def simulate(executor, chunksize=None, seed=0):
    """A (2, 4) batch of 3-vectors under ``seed``, and torch's next draw after it."""
    pyro.set_rng_seed(seed)
    site = ImplicitSite(
        noisy,
        torch.arange(12.0).reshape(4, 3),
        0.5,
        param_event_dims=(1, 0),
        event_shape=(3,),
        executor=executor,
        chunksize=chunksize,
    )
    return site.sample((2,)), torch.rand(())


def test_draws_identical_for_any_number_of_workers_and_chunks(pools):
    reference, after = simulate(InlineExecutor())
    assert reference.shape == (2, 4, 3) and reference.dtype == torch.float32
    assert len(set(reference.flatten().tolist())) == reference.numel()  # one seed per row
    with ThreadPoolExecutor(3) as threads:
        runs = [
            simulate(pools[1]),
            simulate(pools[2]),
            simulate(pools[2], chunksize=1),
            simulate(pools[2], chunksize=3),
            simulate(threads),
        ]
    for value, next_draw in runs:
        assert torch.equal(value, reference)
        assert torch.equal(next_draw, after)
    assert not torch.equal(simulate(pools[2], seed=1)[0], reference)


def test_rows_arrive_as_numpy_with_a_generator():
    site = ImplicitSite(
        record_types,
        torch.zeros(5, 2),
        "label",
        param_event_dims=(1, 0),
        event_shape=(3,),
        executor=InlineExecutor(),
    )
    value = site.sample()
    assert value.shape == (5, 3)
    assert torch.equal(value[:, :2], torch.ones(5, 2))
    scalar = ImplicitSite(noisy, torch.zeros(3), 1, executor=InlineExecutor())
    assert scalar.sample((2,)).shape == (2, 3) and scalar.vectorized is False


def test_without_executor_nothing_changes():
    calls = []

    def one_at_a_time(loc):
        calls.append(type(loc))
        return float(loc) + 1.0

    site = ImplicitSite(one_at_a_time, torch.zeros(2, 3), vectorized=False)
    assert site.vectorized is False and site.executor is None
    assert ImplicitSite(one_at_a_time, torch.zeros(2)).vectorized is True
    state = torch.get_rng_state()
    assert torch.equal(site.sample(), torch.ones(2, 3))
    assert torch.equal(torch.get_rng_state(), state)  # no seeds drawn in process
    assert calls == [torch.Tensor] * 6


def test_bad_executor_arguments():
    with pytest.raises(ValueError, match="vectorized=False"):
        ImplicitSite(noisy, torch.zeros(3), 1.0, executor=InlineExecutor(), vectorized=True)
    with pytest.raises(ValueError, match="reparameterized=False with an executor"):
        ImplicitSite(noisy, torch.zeros(3), 1.0, executor=InlineExecutor(), reparameterized=True)
    with pytest.raises(ValueError, match=r"concurrent\.futures\.Executor"):
        ImplicitSite(noisy, torch.zeros(3), 1.0, executor=4)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="chunksize"):
            ImplicitSite(noisy, torch.zeros(3), 1.0, executor=InlineExecutor(), chunksize=bad)


def named_sample(site, name="x"):
    def model():
        return pyro.sample(name, site)

    return name_implicit_sites(model)()


def test_unpicklable_simulator_says_define_it_at_module_level(pools):
    def nested(loc, rng):
        return loc

    site = ImplicitSite(nested, torch.zeros(3), executor=pools[2])
    with pytest.raises(SimulatorError, match=r"site 'x'.*cannot be pickled.*at module level"):
        named_sample(site)
    # A thread pool pickles nothing: the same simulator runs.
    with ThreadPoolExecutor(2) as threads:
        site = ImplicitSite(nested, torch.zeros(3), executor=threads)
        assert torch.equal(named_sample(site), torch.zeros(3))


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_worker_error_names_site_and_row(pools, kind):
    loc = torch.tensor([[1.0, 2.0, -1.0], [1.0, 1.0, 1.0]])
    with ThreadPoolExecutor(2) as threads:
        executor = pools[2] if kind == "process" else threads
        site = ImplicitSite(fails_on_negative, loc, executor=executor, chunksize=2)
        with pytest.raises(SimulatorError, match=r"site 'x' raised ValueError: negative") as info:
            named_sample(site)
    assert "batch element (0, 2) (row 2 of 6" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_simulator_without_rng_keyword_gets_a_hint():
    site = ImplicitSite(no_rng, torch.zeros(3), executor=InlineExecutor())
    with pytest.raises(SimulatorError, match=r"rng=numpy.random.Generator"):
        named_sample(site)


def train(executor, steps=3):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    data = torch.tensor([0.3, 1.1, 0.8, -0.2, 0.5, 1.4])

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", ImplicitSite(noisy, mu, 1.0, executor=executor), obs=data)

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), LFVI(num_particles=4))
    losses = [svi.step(data) for _ in range(steps)]
    store = pyro.get_param_store()
    return losses, {name: store[name].detach().clone() for name in store.keys()}


def test_lfvi_trains_identically_with_one_and_two_workers(pools):
    losses_1, params_1 = train(pools[1])
    losses_2, params_2 = train(pools[2])
    assert all(np.isfinite(losses_1))
    assert losses_1 == losses_2
    assert params_1.keys() == params_2.keys() and "loc" in params_1
    for name, value in params_1.items():
        assert torch.equal(value, params_2[name]), name
    assert not torch.equal(params_1["loc"], torch.tensor(0.0))


def test_dask_local_cluster_gives_the_same_draws():
    distributed = pytest.importorskip("distributed")
    reference, _ = simulate(InlineExecutor())
    start = time.perf_counter()
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        value, _ = simulate(client.get_executor(), chunksize=2)
    assert torch.equal(value, reference)
    assert time.perf_counter() - start < 60
