"""The end-of-training jitter of the guide's globals: known answers, and the monitor's warning."""

import math
import warnings

import pyro
import pytest
import torch
from fitting import meets_targets, standardized_errors, train

from pyro_lfvi import LFVI, LFVIWarning, TrainingMonitor
from pyro_lfvi.convergence import JITTER_SDS, jitter, largest_move, pooled_sds
from pyro_lfvi.examples.series import PooledSeries

ENTRY = {"elbo": 0.0, "discriminator_loss": 0.6, "discriminator_accuracy": 0.7}


def wander(sd, tau, seed, steps=200, particles=8, drift=0.0):
    """Particle means of one global (guide sd 1): an Ornstein-Uhlenbeck wander of
    stationary sd ``sd`` and correlation time ``tau`` steps, a linear drift, and the
    particles' noise (sd 1 / sqrt(particles))."""
    gen = torch.Generator().manual_seed(seed)
    a = math.exp(-1.0 / tau)
    x = sd * float(torch.randn((), generator=gen))
    rows = []
    for t in range(steps):
        x = a * x + sd * math.sqrt(1 - a * a) * float(torch.randn((), generator=gen))
        noise = float(torch.randn((), generator=gen)) / math.sqrt(particles)
        rows.append([x + drift * t + noise])
    return rows


def test_the_jitter_of_a_square_wave_is_its_amplitude():
    # Blocks of 10 steps alternately at +a and -a, no particle noise: the block means'
    # variance is a^2 (times 20 / 18 for the trend's two degrees of freedom), less the
    # step-to-step changes' share (19 jumps of 2a in 199 steps, over 2 x 10).
    a = 0.4
    rows = [[a if (t // 10) % 2 == 0 else -a] for t in range(200)]
    variance = a * a * 20 / 18 - (19 * (2 * a) ** 2 / 199 / 2) / 10
    (value,) = jitter(rows, [[1.0]] * 200)
    # the trend of an alternating sequence is not quite zero: 1% tolerance
    assert value == pytest.approx(math.sqrt(variance), rel=0.01)
    (scaled,) = jitter([[r[0] * 3] for r in rows], [[3.0]] * 200)  # in units of the sd
    assert scaled == pytest.approx(value)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("particles", [2, 8])
def test_particle_noise_and_a_steady_drift_are_not_jitter(seed, particles):
    # 0.01 sds per step: a move of 1.5 sds over the window's quarters, which the
    # move check reports; the jitter check reads the residual about the trend.
    rows = wander(0.0, 10, seed, particles=particles, drift=0.01)
    (value,) = jitter(rows, [[1.0]] * 200)
    assert value < JITTER_SDS


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_guide_wandering_by_half_a_sd_is_caught(seed):
    # The minibatched PooledSeries at a final learning rate of 5e-4 wandered by
    # 0.6-0.85 exact sds over its last 500 steps.
    (value,) = jitter(wander(0.6, 20, seed), [[1.0]] * 200)
    assert value > JITTER_SDS


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_particles_spreads_are_pooled_not_averaged(seed):
    # Two particles a step: each step's sd has one degree of freedom and averages
    # 0.80 of the guide's sd (sqrt(2 / pi)); the jitter's and the move's unit
    # must not shrink by that much.
    gen = torch.Generator().manual_seed(seed)
    spread = [[float(torch.randn(2, generator=gen).std())] for _ in range(4000)]
    assert pooled_sds(spread)[0] == pytest.approx(1.0, abs=0.05)
    assert sum(s[0] for s in spread) / 4000 == pytest.approx(math.sqrt(2 / math.pi), abs=0.05)
    rows = wander(0.4, 20, seed, steps=2000, particles=2)
    (honest,) = jitter(rows, spread[:2000])
    (exact,) = jitter(rows, [[1.0]] * 2000)
    assert honest == pytest.approx(exact, rel=0.15)


def test_point_masses_and_short_windows_are_not_measured():
    rows = [[2.0 + 1e-5 * (t % 2), 0.1 * (t % 7)] for t in range(200)]
    assert jitter(rows, [[0.0, 1.0]] * 200)[0] is None
    assert jitter(rows, [[0.0, 1.0]] * 200)[1] is not None
    assert jitter(rows[:39], [[0.0, 1.0]] * 39) == [None, None]
    # steps that recorded no globals (a warmup without particles) are left out
    mixed = [[]] * 50 + [r[1:] for r in rows]
    assert jitter(mixed, [[]] * 50 + [[1.0]] * 200) == jitter(rows, [[0.0, 1.0]] * 200)[1:]
    assert largest_move([0.0, 2.0], [1.0, 2.0], [0.5, 0.0]) == 2.0


@pytest.mark.parametrize("sd, warns", [(0.6, True), (0.0, False)])
def test_the_monitor_warns_when_the_guide_did_not_settle(sd, warns):
    monitor = TrainingMonitor(window=200)
    monitor.joint = False
    for step, row in enumerate(wander(sd, 20, seed=0, steps=400)):
        monitor.update(step, ENTRY, row, [1.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        monitor.check_convergence()
    messages = [str(w.message) for w in caught if w.category is LFVIWarning]
    assert monitor.final_jitter is not None
    assert (monitor.final_jitter > JITTER_SDS) is warns
    assert (
        any("did not settle" in m and "a tenth of its final value" in m for m in messages) is warns
    )
    assert not any("has not converged" in m for m in messages)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minibatched_series_whose_guide_jitters_is_warned(seed):
    # 2,000 series in minibatches of 100, the accuracy tests' schedule (lr 0.01 to
    # 0.0005 over 3,000 steps): Adam's last steps are a large fraction of the
    # posterior sd (0.0035 for `a`), and the guide jitters at the end on every seed.
    # With normalizer="auto" (measured in stop 37, development machine) seeds 0 and
    # 1 miss the targets (means within 0.5 exact sd, sds within 0.8-1.25x) by
    # their means: a -1.14 and +1.03 sds. Seed 2 ends at the sd target's edge: here
    # a -0.34 sds / 1.236x, log sigma -0.09 / 1.2497x (within), on CI's machine
    # a +0.07 / 1.253x, log sigma +0.41 / 1.262x (a miss; stop 36): whether the
    # warning was right there is not asserted. Seed 0 ended silently before the
    # jitter check existed.
    pyro.set_rng_seed(seed)
    problem = PooledSeries()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        elbo = train(problem, 3000, lr=0.01, final_lr=0.0005, elbo=LFVI(), check=False)
    err = standardized_errors(problem.fitted(), problem.exact())
    messages = [str(w.message) for w in caught if w.category is LFVIWarning]
    assert elbo.monitor.final_jitter > JITTER_SDS
    assert any("did not settle" in m for m in messages), (err, messages)
    if seed != 2:
        assert not meets_targets(err), err  # the warning was right to be raised
