"""Resuming from a checkpoint continues bit for bit; a seed reproduces a whole fit."""

import pathlib
import pickle
import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from torch.distributions import ExpTransform, transform_to

from pyro_lfvi import (
    LFVI,
    CheckpointError,
    ContrastiveRatioEstimator,
    ImplicitSite,
    LikelihoodEstimator,
    load_checkpoint,
    save_checkpoint,
)
from pyro_lfvi.examples import HierarchicalNormal


def new_run(replay=0):
    """A small hierarchical fit: LFVI's defaults; with ``replay``, the contrastive
    estimator replaying that many simulations; ``replay="likelihood"``, the neural
    likelihood (replayed simulations and a private optimiser's moments)."""
    problem = HierarchicalNormal(num_groups=6, batch_size=3)
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.999})
    if replay == "likelihood":
        elbo = LFVI(estimator=LikelihoodEstimator(replay=100))
    else:
        elbo = LFVI(estimator=ContrastiveRatioEstimator(replay=replay)) if replay else LFVI()
    svi = pyro.infer.SVI(problem.model, problem.guide, optim, elbo)
    return problem, optim, elbo, svi


def params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


@pytest.mark.parametrize("replay", [0, 1024, "likelihood"])
def test_resume_matches_uninterrupted_run_bit_for_bit(tmp_path, replay):
    steps = 20
    pyro.set_rng_seed(3)
    problem, _, elbo, svi = new_run(replay)
    for _ in range(steps):
        svi.step(problem.data)
    uninterrupted, history = params(), list(elbo.history)

    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    problem, optim, elbo, svi = new_run(replay)
    for _ in range(steps // 2):
        svi.step(problem.data)
    save_checkpoint(tmp_path / "ckpt.pt", optim, elbo)

    # A fresh process would start here: new objects, empty store, other RNG state.
    pyro.clear_param_store()
    pyro.set_rng_seed(12345)
    _, optim, elbo, svi = new_run(replay)
    load_checkpoint(tmp_path / "ckpt.pt", optim, elbo)
    for _ in range(steps - steps // 2):
        svi.step(problem.data)
    resumed = params()
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    assert elbo.history == history


def test_same_seed_reproduces_the_whole_fit_including_the_lazy_discriminator():
    fits = []
    for _ in range(2):
        pyro.clear_param_store()
        pyro.set_rng_seed(7)
        problem, _, elbo, svi = new_run()
        for _ in range(10):
            svi.step(problem.data)
        fits.append((params(), elbo.history))
    (a, ha), (b, hb) = fits
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ha == hb


# --- Safe loading: only tensors and plain data, validated before anything is restored ---


class _Payload:
    """Unpickles to a call of Path.touch(marker): stands for any code a crafted file runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b or (a != a and b != b)  # NaN equals NaN here


def _everything(optim, elbo, rng=None):
    """All that load_checkpoint could change, copied (and the param tensors themselves)."""
    store = pyro.get_param_store()
    state = store.get_state()
    return {
        "param_objects": {name: id(p) for name, p in state["params"].items()},
        "params": {name: p.detach().clone() for name, p in state["params"].items()},
        "constraints": {name: id(c) for name, c in state["constraints"].items()},
        "optim": optim.get_state(),
        "history": [dict(entry) for entry in elbo.history],
        "monitor": elbo.monitor.state_dict(),
        "monitor_object": id(elbo.monitor),
        "max_plate_nesting": elbo.max_plate_nesting,
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(legacy=False),
        "python": random.getstate(),
        "generator": None if rng is None else rng.bit_generator.state,
    }


@pytest.fixture
def trained(tmp_path):
    """A run with a checkpoint at step 4 that has gone on to step 6 (so they differ)."""
    problem, optim, elbo, svi = new_run()
    for _ in range(4):
        svi.step(problem.data)
    path = tmp_path / "good.pt"
    save_checkpoint(path, optim, elbo)
    for _ in range(2):
        svi.step(problem.data)
    return path, optim, elbo


def _tampered(good, path, change):
    state = torch.load(good, weights_only=True)
    replaced = change(state)  # changes the state in place, or returns another content
    torch.save(state if replaced is None else replaced, path)
    return path


def test_a_crafted_pickle_is_refused_without_running_it_or_touching_anything(trained, tmp_path):
    good, optim, elbo = trained
    marker = tmp_path / "payload-ran"
    evil = _tampered(good, tmp_path / "evil.pt", _set(["lfvi", "history", 0], _Payload(marker)))
    # The payload is live: an unsafe load runs it.
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    before = _everything(optim, elbo)
    with pytest.raises(
        CheckpointError, match="holds objects other than tensors and plain data"
    ) as info:
        load_checkpoint(evil, optim, elbo)
    message = str(info.value)
    assert str(evil) in message and "untrusted source" in message
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()
    assert _same(_everything(optim, elbo), before)


def _drop(*path):
    def change(state):
        *parents, last = path
        for key in parents:
            state = state[key]
        del state[last]

    return change


def _set(path, value):
    def change(state):
        *parents, last = path
        for key in parents:
            state = state[key]
        state[last] = value

    return change


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda s: [1, 2, 3], r"not a pyro_lfvi checkpoint \(no 'format'"),
        (_drop("format"), r"not a pyro_lfvi checkpoint"),
        (_drop("version"), r"has no format 'version'"),
        (_set(["version"], 2), r"format version is 2, expected 1"),
        (_drop("rng"), r"lacks the key\(s\) \['rng'\]"),
        (_drop("generators"), r"lacks the key\(s\) \['generators'\]"),
        (
            _set(["constraints", "mu_scale"], {"class": "_Nope", "module": "torch", "args": {}}),
            r"constraint of param 'mu_scale' cannot be rebuilt",
        ),
        (
            _set(["constraints", "mu_scale"], {"name": "os.system"}),
            r"constraint of param 'mu_scale' cannot be rebuilt",
        ),
        (_set(["params", "mu_loc"], [0.0]), r"param 'mu_loc' is not a tensor"),
        (_drop("lfvi", "monitor", "elbo"), r"LFVI monitor cannot be restored"),
        (_set(["lfvi", "monitor", "window"], 0), r"LFVI monitor cannot be restored"),
        (_drop("lfvi", "history"), r"'lfvi' lacks the key\(s\) \['history'\]"),
        (_set(["lfvi", "estimator"], {"replay": 3}), r"ratio estimator state cannot be restored"),
        (
            _set(["lfvi", "estimator"], {"replay": [{"observed": {}}]}),
            r"ratio estimator state cannot be restored",
        ),
        # The last checks: a failure there must not leave the earlier parts restored.
        (
            _set(["rng", "torch"], torch.zeros(3, dtype=torch.uint8)),
            r"torch RNG state is not valid",
        ),
        (_set(["rng", "python"], (3, [1, 2], None)), r"Python RNG state is not valid"),
        (_set(["generators"], {"simulator": {}}), r"'simulator' was saved but not passed"),
    ],
)
def test_a_checkpoint_of_the_wrong_layout_or_version_is_refused_untouched(
    trained, tmp_path, change, problem
):
    good, optim, elbo = trained
    bad = _tampered(good, tmp_path / "bad.pt", change)
    before = _everything(optim, elbo)
    with pytest.raises(CheckpointError, match=problem) as info:
        load_checkpoint(bad, optim, elbo)
    assert str(bad) in str(info.value) and "nothing was restored" in str(info.value)
    assert _same(_everything(optim, elbo), before)


def test_the_file_is_tensors_and_plain_data_that_torch_load_weights_only_reads(trained):
    good, _, _ = trained
    state = torch.load(good, weights_only=True)
    assert state["format"] == "pyro_lfvi.checkpoint" and state["version"] == 1

    def plain(value):
        if isinstance(value, dict):
            return all(type(k) in (str, int) and plain(v) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return isinstance(value, torch.Tensor) or type(value) in (str, int, float, bool, type(None))

    assert plain(state)
    assert state["constraints"]["mu_scale"] == {"name": "positive"}
    assert state["constraints"]["mu_loc"] == {"name": "real"}


def test_a_checkpoint_written_before_the_estimator_had_state_loads(trained, tmp_path):
    good, optim, elbo = trained
    old = _tampered(good, tmp_path / "old.pt", _drop("lfvi", "estimator"))
    load_checkpoint(old, optim, elbo)
    assert elbo.estimator.state_dict() == {"replay": []}


def test_the_replayed_simulations_are_saved_and_restored(tmp_path):
    problem, optim, elbo, svi = new_run(replay=1024)
    for _ in range(4):
        svi.step(problem.data)
    save_checkpoint(tmp_path / "replay.pt", optim, elbo)
    saved = torch.load(tmp_path / "replay.pt", weights_only=True)["lfvi"]["estimator"]["replay"]
    assert len(saved) == 3  # 86 particles x 3 points a step: 1,024 rows hold 3 steps
    pyro.clear_param_store()
    _, optim, elbo, _ = new_run(replay=1024)
    load_checkpoint(tmp_path / "replay.pt", optim, elbo)
    restored = elbo.estimator.state_dict()["replay"]
    assert len(restored) == 3
    for a, b in zip(saved, restored, strict=True):
        for part in ("observed", "local", "global"):
            assert a[part].keys() == b[part].keys() and a[part]
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
        assert torch.equal(a["valid"], b["valid"])


class NumpySimulator:
    """A simulator that owns its numpy Generator (not numpy's global random state)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def __call__(self, mu):
        mu = np.asarray(mu, dtype=np.float64)
        return mu + self.rng.normal(size=mu.shape)


def numpy_run(seed):
    simulator = NumpySimulator(seed)

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", ImplicitSite(simulator, mu), obs=data)

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    optim = pyro.optim.Adam({"lr": 0.05})
    elbo = LFVI(num_particles=4)
    return simulator, optim, elbo, pyro.infer.SVI(model, guide, optim, elbo)


def test_a_simulator_owning_a_numpy_generator_resumes_bit_for_bit_when_it_is_passed(tmp_path):
    data, steps = torch.linspace(-1.0, 2.0, 6), 12
    pyro.set_rng_seed(3)
    _, _, elbo, svi = numpy_run(seed=11)
    for _ in range(steps):
        svi.step(data)
    uninterrupted, history = params(), list(elbo.history)

    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    simulator, optim, elbo, svi = numpy_run(seed=11)
    for _ in range(steps // 2):
        svi.step(data)
    save_checkpoint(tmp_path / "ckpt.pt", optim, elbo, generators={"simulator": simulator.rng})

    # A fresh process: its simulator's generator starts elsewhere until restored.
    pyro.clear_param_store()
    pyro.set_rng_seed(12345)
    simulator, optim, elbo, svi = numpy_run(seed=999)
    with pytest.raises(CheckpointError, match="'simulator' was saved but not passed"):
        load_checkpoint(tmp_path / "ckpt.pt", optim, elbo)
    with pytest.raises(CheckpointError, match="'sim' was not saved in it"):
        load_checkpoint(tmp_path / "ckpt.pt", optim, elbo, generators={"sim": simulator.rng})
    load_checkpoint(tmp_path / "ckpt.pt", optim, elbo, generators={"simulator": simulator.rng})
    for _ in range(steps - steps // 2):
        svi.step(data)
    resumed = params()
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    assert elbo.history == history


@pytest.mark.parametrize(
    "kind", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64]
)
def test_every_numpy_bit_generator_is_restored_in_place(tmp_path, kind):
    rng = np.random.Generator(kind(5))
    rng.normal(size=3)
    optim = pyro.optim.Adam({"lr": 0.1})
    save_checkpoint(tmp_path / "g.pt", optim, generators={"g": rng})
    expected = rng.normal(size=5)
    other = np.random.Generator(kind(6))
    load_checkpoint(tmp_path / "g.pt", optim, generators={"g": other})
    np.testing.assert_array_equal(other.normal(size=5), expected)

    wrong = np.random.Generator(np.random.PCG64DXSM(0))
    before = wrong.bit_generator.state
    with pytest.raises(CheckpointError, match="numpy generator 'g' does not fit the PCG64DXSM"):
        load_checkpoint(tmp_path / "g.pt", optim, generators={"g": wrong})
    assert wrong.bit_generator.state == before


def test_constraints_are_rebuilt_from_plain_data(tmp_path):
    made = {
        "real": constraints.real,
        "positive": constraints.positive,
        "interval": constraints.interval(-1.0, 2.0),
        "tensor_bound": constraints.greater_than(torch.tensor(0.5)),
        "independent": constraints.independent(constraints.interval(0.0, 3.0), 1),
        "simplex": constraints.simplex,
        "softplus_positive": constraints.softplus_positive,
        "lower_cholesky": constraints.lower_cholesky,
    }
    init = {
        "real": torch.tensor(0.3),
        "positive": torch.tensor(2.0),
        "interval": torch.tensor(0.5),
        "tensor_bound": torch.tensor(1.5),
        "independent": torch.tensor([0.5, 1.0, 2.5]),
        "simplex": torch.tensor([0.2, 0.3, 0.5]),
        "softplus_positive": torch.tensor(0.7),
        "lower_cholesky": torch.tensor([[1.0, 0.0], [0.5, 2.0]]),
    }
    for name, constraint in made.items():
        pyro.param(name, init[name], constraint=constraint)
    values = params()
    optim = pyro.optim.Adam({"lr": 0.1})
    save_checkpoint(tmp_path / "c.pt", optim)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["constraints"]["interval"] == {
        "class": "_Interval",
        "module": "torch",
        "args": {"lower_bound": -1.0, "upper_bound": 2.0},
    }

    pyro.clear_param_store()
    load_checkpoint(tmp_path / "c.pt", optim)
    rebuilt = pyro.get_param_store().get_state()["constraints"]
    for name, constraint in made.items():
        assert type(rebuilt[name]) is type(constraint), name
        assert torch.allclose(pyro.param(name).detach(), init[name]), name
        assert torch.equal(pyro.param(name).detach(), values[name]), name
    # Named constraints come back as the very objects; the others as equal ones.
    assert rebuilt["positive"] is constraints.positive
    assert rebuilt["softplus_positive"] is constraints.softplus_positive
    assert rebuilt["interval"].upper_bound == 2.0
    assert rebuilt["independent"].reinterpreted_batch_ndims == 1
    assert rebuilt["independent"].base_constraint.upper_bound == 3.0
    assert torch.equal(rebuilt["tensor_bound"].lower_bound, torch.tensor(0.5))


class _Odd(constraints.Constraint):
    """A user's own constraint: a checkpoint cannot store it as plain data."""

    def check(self, value):
        return value > 0


transform_to.register(_Odd)(lambda constraint: ExpTransform())


def test_save_refuses_state_it_could_not_load_safely(tmp_path):
    optim = pyro.optim.Adam({"lr": 0.1})
    pyro.param("odd", torch.tensor(1.0), constraint=_Odd())
    with pytest.raises(CheckpointError, match=r"constraint .* of param 'odd'"):
        save_checkpoint(tmp_path / "odd.pt", optim)
    pyro.clear_param_store()
    _, optim, elbo, _ = new_run()
    elbo.max_plate_nesting = np.float64(1.0)
    with pytest.raises(CheckpointError, match=r"\['lfvi'\]\['max_plate_nesting'\] is a float64"):
        save_checkpoint(tmp_path / "np.pt", optim, elbo)
    assert not (tmp_path / "odd.pt").exists() and not (tmp_path / "np.pt").exists()
