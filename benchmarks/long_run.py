"""Resident memory of long runs: does ``LFVI.history`` grow with the steps?

Two measurements, in one process each (``--part``):

- ``train``: SVI + LFVI on :class:`~pyro_lfvi.examples.ConjugateNormal` for
  ``--steps`` steps, resident memory (RSS) read every ``--every`` steps; the
  slope of RSS over the second half of the run, in bytes per step, gives the
  extrapolation to 10^6 steps. The history grows until it holds
  ``--history-size`` rows (about 90 bytes a row) and no further: with a
  history size below the steps, the slope is that of everything else.
- ``history``: the history alone, the real per-step entries of that run
  appended 10^6 times, as the bounded :class:`~pyro_lfvi.History` and as the
  list of dicts that ``LFVI.history`` was before it::

    OMP_NUM_THREADS=1 python benchmarks/long_run.py --part train --steps 10000
    OMP_NUM_THREADS=1 python benchmarks/long_run.py --part train --steps 10000 --history-size 1000
    OMP_NUM_THREADS=1 python benchmarks/long_run.py --part history --steps 1000000
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

import numpy as np
import pyro

from pyro_lfvi import LFVI, History
from pyro_lfvi.examples import ConjugateNormal

MB = 2**20


def rss() -> float:
    """Current resident memory in bytes (Linux), else the peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def train(steps: int, every: int, history_size: int) -> None:
    pyro.set_rng_seed(0)
    problem = ConjugateNormal()
    elbo = LFVI(history_size=history_size)
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.005}), elbo)
    marks: list[tuple[int, float]] = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        svi.step(problem.data)
        if step % every == 0:
            gc.collect()
            marks.append((step, rss()))
            print(f"step {step:>8}: RSS {marks[-1][1] / MB:8.1f} MB", flush=True)
    seconds = time.perf_counter() - start
    half = [(s, r) for s, r in marks if s > steps // 2]
    slope = float(np.polyfit([s for s, _ in half], [r for _, r in half], 1)[0])
    print(f"{steps} steps in {seconds:.0f} s ({steps / seconds:.0f} steps/s)")
    print(f"history: {len(elbo.history)} rows of {elbo.history.num_steps} steps")
    print(
        f"RSS slope over the second half: {slope:.1f} bytes/step; extrapolated growth "
        f"from {steps} to 10^6 steps: {slope * (10**6 - steps) / MB:.1f} MB"
    )


def history(steps: int) -> None:
    pyro.set_rng_seed(0)
    problem = ConjugateNormal()
    elbo = LFVI()
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.005}), elbo)
    for _ in range(3):
        svi.step(problem.data)
    entry = dict(elbo.history[-1])
    print(f"one step's entry: {len(entry)} figures")
    for name, make in (("History (bounded, columnar)", History), ("list of dicts", list)):
        gc.collect()
        before = rss()
        store = make()
        for step in range(steps):
            # A new dict of new floats each step, as LFVI records them.
            store.append({k: v + step for k, v in entry.items()})
        gc.collect()
        grown = rss() - before
        print(f"{name:>28}: {steps} steps, {len(store)} rows kept, RSS +{grown / MB:.1f} MB")
        del store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["train", "history"], required=True)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument(
        "--history-size", type=int, default=100_000, help="LFVI(history_size=...) in train"
    )
    args = parser.parse_args()
    if args.part == "train":
        train(args.steps, args.every, args.history_size)
    else:
        history(args.steps)


if __name__ == "__main__":
    main()
