"""How far minibatched SVI gets with an *exact* likelihood: PooledSeries' twin.

The optimiser's share of the large-N error of ``benchmarks/scale.py``: the same
guide, minibatches of 100 series, 8 vectorised particles and learning-rate
schedule, but the explicit twin's log likelihood in place of LFVI's ratio
estimator, with independent or antithetic (mirrored) particles
(:mod:`pyro_lfvi.antithetic`). Prints the mean error (exact sds) and sd ratio
of each global against :meth:`PooledSeries.exact` every 1,000 steps.

    OMP_NUM_THREADS=1 python benchmarks/twin_svi.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse

import pyro
import torch
from fitting import decaying_adam, standardized_errors

from pyro_lfvi.antithetic import AntitheticMessenger
from pyro_lfvi.examples.series import PooledSeries

PARTICLES = 8


def fit(size: int, antithetic: bool, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    problem = PooledSeries(num_series=size, batch_size=100)

    plate = pyro.plate("particles", PARTICLES, dim=-2)
    guide = plate(problem.guide)
    if antithetic:
        guide = AntitheticMessenger(-2, PARTICLES)(guide)

    def loss(model: object, guide_: object, data: torch.Tensor) -> torch.Tensor:
        guide_trace = pyro.poutine.trace(guide).get_trace(data)
        replayed = pyro.poutine.replay(plate(problem.minibatch_twin), trace=guide_trace)
        model_trace = pyro.poutine.trace(replayed).get_trace(data)
        return (guide_trace.log_prob_sum() - model_trace.log_prob_sum()) / PARTICLES

    svi = pyro.infer.SVI(
        problem.minibatch_twin, guide, decaying_adam(args.steps, args.lr, args.final_lr), loss
    )
    for _ in range(args.steps):
        svi.step(problem.data)
    return standardized_errors(problem.fitted(), problem.exact())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--final-lr", type=float, default=0.00001)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for size in args.sizes:
        for antithetic in (False, True):
            err = fit(size, antithetic, args)
            cells = ", ".join(
                f"{k} {e['mean_error_sd']:+.2f} sd / {e['sd_ratio']:.2f}x" for k, e in err.items()
            )
            kind = "antithetic" if antithetic else "independent"
            print(f"N = {size:>6}, {PARTICLES} {kind} particles: {cells}", flush=True)


if __name__ == "__main__":
    main()
