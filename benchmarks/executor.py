"""Speed-up of ``ImplicitSite(..., executor=...)`` on an expensive numpy simulator.

The simulator is a Gillespie (exact Markov jump) SIR epidemic in plain numpy: one
parameter set per call, thousands of events in a Python loop, some milliseconds per
call. The benchmark simulates a fixed batch of rows in process
(``vectorized=False``) and through a ``ProcessPoolExecutor`` with each number of
workers, the configurations interleaved in every repeat, and reports ratios of
median times (speed-ups), all measured in one run::

    OMP_NUM_THREADS=1 python benchmarks/executor.py --rows 64 --repeats 5 --workers 1 2

The speed-up is bounded by the cores that are free: on a machine shared with
other jobs, two workers may not get two cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from pyro_lfvi import ImplicitSite

POPULATION = 2000
INITIAL = 10
TIMES = np.linspace(0.0, 30.0, 31)  # observed: infected counts on days 0..30


def gillespie_sir(beta: float, gamma: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Infected counts at ``TIMES`` of one stochastic SIR epidemic (Gillespie's algorithm)."""
    rng = np.random.default_rng() if rng is None else rng
    beta, gamma = float(beta), float(gamma)  # in process, they come as 0-d tensors
    s, i, t = POPULATION - INITIAL, INITIAL, 0.0
    out = np.zeros(len(TIMES))
    k = 0
    while k < len(TIMES):
        rate_infect = beta * s * i / POPULATION
        total = rate_infect + gamma * i
        if total == 0.0:  # extinct: the count stays at zero
            out[k:] = i
            break
        t += rng.exponential(1.0 / total)
        while k < len(TIMES) and TIMES[k] < t:
            out[k] = i
            k += 1
        if rng.random() * total < rate_infect:
            s, i = s - 1, i + 1
        else:
            i -= 1
    return out


def make_site(beta: torch.Tensor, gamma: torch.Tensor, executor: object) -> ImplicitSite:
    if executor is None:
        return ImplicitSite(gillespie_sir, beta, gamma, event_shape=TIMES.shape, vectorized=False)
    return ImplicitSite(gillespie_sir, beta, gamma, event_shape=TIMES.shape, executor=executor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="batch elements per simulation")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    beta = 1.0 + torch.rand(args.rows)  # R0 between 2.5 and 5 with gamma = 0.4
    gamma = torch.full((args.rows,), 0.4)
    pools = {w: ProcessPoolExecutor(w) for w in args.workers}
    configs: dict[str, object] = {"in process": None}
    configs.update({f"{w} worker{'s' * (w > 1)}": pools[w] for w in args.workers})
    try:
        draws = {}
        for name, executor in configs.items():  # warm-up: start the workers
            torch.manual_seed(args.seed)
            draws[name] = make_site(beta, gamma, executor).sample()
        pooled = [v for name, v in draws.items() if name != "in process"]
        same = all(torch.equal(v, pooled[0]) for v in pooled)
        times: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(args.repeats):
            for name, executor in configs.items():
                site = make_site(beta, gamma, executor)
                start = time.perf_counter()
                site.sample()
                times[name].append(time.perf_counter() - start)
    finally:
        for pool in pools.values():
            pool.shutdown()

    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["in process"]
    one = next((name for name in configs if name.startswith("1 worker")), None)
    print(f"rows {args.rows}, repeats {args.repeats}, medians of interleaved runs")
    cores, load = os.cpu_count(), os.getloadavg()[0]
    print(f"{cores} cores, load average {load:.2f} (over 1 minute, this run included)")
    print(f"simulator cost in process: {1000 * base / args.rows:.1f} ms per row")
    print(f"{'configuration':<14} {'speed-up vs in process':>24} {'vs 1 worker':>12}")
    for name in configs:
        vs_one = f"{median[one] / median[name]:.2f}" if one else "-"
        print(f"{name:<14} {base / median[name]:>24.2f} {vs_one:>12}")
    print(f"draws identical for {', '.join(pooled and list(configs)[1:])}: {same}")
    print(
        f"command: OMP_NUM_THREADS=1 python benchmarks/executor.py --rows {args.rows} "
        f"--repeats {args.repeats} --workers {' '.join(map(str, args.workers))}"
    )


if __name__ == "__main__":
    main()
