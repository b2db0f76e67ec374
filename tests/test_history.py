"""History: reads like a list of dicts, stores columns, stays bounded."""

import math

import numpy as np
import pyro
import pytest
import torch

from pyro_lfvi import LFVI, History, load_checkpoint, save_checkpoint
from pyro_lfvi.examples import ConjugateNormal


def rows(n, start=0):
    return [{"elbo": float(i), "acc": 0.5 + i / 1000} for i in range(start, start + n)]


def test_reads_like_the_list_of_dicts_it_was_given():
    history = History()
    for row in rows(7):
        history.append(row)
    assert len(history) == 7 and history.num_steps == 7
    assert history[-1] == {"elbo": 6.0, "acc": 0.506}
    assert history[2:4] == rows(7)[2:4]
    assert list(history) == rows(7)
    assert history == rows(7)
    assert history != rows(6)
    assert history.keys() == ["elbo", "acc"]
    np.testing.assert_array_equal(history.column("elbo"), np.arange(7.0))
    np.testing.assert_array_equal(history.steps, np.arange(7))


def test_a_figure_missing_from_some_steps_is_missing_from_their_rows():
    history = History()
    history.append({"elbo": 1.0})
    history.append({"elbo": 2.0, "debug": 0.3})
    history.append({"elbo": 3.0})
    assert list(history) == [{"elbo": 1.0}, {"elbo": 2.0, "debug": 0.3}, {"elbo": 3.0}]
    column = history.column("debug")
    assert math.isnan(column[0]) and column[1] == 0.3 and math.isnan(column[2])


@pytest.mark.parametrize("max_rows", [2, 5, 8, 1000])
def test_a_long_run_keeps_evenly_spaced_steps_and_always_the_newest(max_rows):
    history = History(max_rows=max_rows)
    num_steps = 10_000
    for step in range(num_steps):
        history.append({"elbo": float(step)})
        assert history[-1] == {"elbo": float(step)}
        assert len(history) <= max_rows
    steps = history.steps
    assert len(history) >= max_rows // 2
    # Each row is its own step's, and the rows before the newest one are evenly spaced.
    np.testing.assert_array_equal(history.column("elbo"), steps.astype(float))
    assert steps[-1] == num_steps - 1 and steps[0] == 0
    gaps = np.diff(steps[:-1])
    assert (gaps == gaps[0]).all() if gaps.size else True
    assert history.num_steps == num_steps


def test_memory_does_not_grow_with_the_number_of_steps():
    history = History(max_rows=1000)
    for step in range(2000):
        history.append({"elbo": float(step), "acc": 0.5})
    size = sum(a.nbytes for a in vars(history).values() if isinstance(a, np.ndarray))
    size += sum(a.nbytes for c in (history._columns, history._present) for a in c.values())
    for step in range(2000, 50_000):
        history.append({"elbo": float(step), "acc": 0.5})
    later = sum(a.nbytes for a in vars(history).values() if isinstance(a, np.ndarray))
    later += sum(a.nbytes for c in (history._columns, history._present) for a in c.values())
    assert later == size


@pytest.mark.parametrize(
    "num_steps, max_rows",
    # 1000 rows: more than the 64 a fresh History reserves at first
    [(3, 8), (17, 8), (64, 8), (1000, 100_000)],
)
def test_state_dict_round_trip_resumes_as_if_never_stopped(num_steps, max_rows):
    full, first = History(max_rows=max_rows), History(max_rows=max_rows)
    for row in rows(num_steps):
        full.append(row)
        first.append(row)
    resumed = History()
    resumed.load_state_dict(first.state_dict())
    assert resumed == first and resumed.num_steps == num_steps
    for row in rows(40, start=num_steps):
        full.append(row)
        resumed.append(row)
    assert resumed == full
    np.testing.assert_array_equal(resumed.steps, full.steps)


def test_malformed_states_and_arguments_are_refused():
    with pytest.raises(ValueError, match=r"Expected max_rows >= 2, actual 1"):
        History(max_rows=1)
    with pytest.raises(ValueError, match=r"Expected max_rows to be an integer >= 1, actual 0"):
        History(max_rows=0)
    history = History()
    with pytest.raises(ValueError, match=r"Expected a History state_dict, actual one failing"):
        history.load_state_dict({"max_rows": 10})
    state = History().state_dict()
    state["columns"] = {"elbo": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"with 0 rows in every column"):
        history.load_state_dict(state)
    with pytest.raises(KeyError, match=r"History has no figure 'loss'; it has \[\]"):
        history.column("loss")
    with pytest.raises(IndexError, match=r"History index 0 out of range for 0 rows"):
        history[0]
    with pytest.raises(TypeError, match=r"Expected an int or a slice as the history index"):
        history["elbo"]  # type: ignore[call-overload]


def train(elbo, steps):
    problem = ConjugateNormal()
    optim = pyro.optim.Adam({"lr": 0.01})
    svi = pyro.infer.SVI(problem.model, problem.guide, optim, elbo)
    for _ in range(steps):
        svi.step(problem.data)
    return optim


def test_lfvi_history_is_bounded_and_its_callback_counts_every_step():
    seen = []
    elbo = LFVI(history_size=4, callback=lambda step, entry: seen.append(step))
    train(elbo, 9)
    assert isinstance(elbo.history, History)
    assert seen == list(range(9))
    assert elbo.history.steps.tolist() == [0, 4, 8]
    assert set(elbo.history[-1]) >= {"elbo", "discriminator_loss", "discriminator_accuracy"}


def test_checkpoints_keep_the_history_and_read_the_older_list_of_dicts(tmp_path):
    elbo = LFVI(history_size=4)
    optim = train(elbo, 6)
    save_checkpoint(tmp_path / "run.pt", optim, elbo)
    restored = LFVI()
    load_checkpoint(tmp_path / "run.pt", optim, restored)
    assert restored.history == elbo.history and restored.history.max_rows == 4
    np.testing.assert_array_equal(restored.history.steps, elbo.history.steps)
    # A checkpoint written before History stored the history as a list of dicts.
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    state["lfvi"]["history"] = [dict(row) for row in elbo.history]
    torch.save(state, tmp_path / "old.pt")
    older = LFVI()
    load_checkpoint(tmp_path / "old.pt", optim, older)
    assert older.history == list(elbo.history) and older.history.num_steps == len(elbo.history)
