"""Posterior accuracy of LFVI (default settings) against exact posteriors.

Runs the two models of the test suite over several seeds and prints, per
site, the error of the posterior mean in exact posterior sds (RMSE over
groups for the local means) and the ratio of posterior sds.

    python benchmarks/accuracy.py --seeds 0 1 2
    python benchmarks/accuracy.py --models hierarchical --summary   # on group means
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch

from pyro_lfvi import LFVI
from pyro_lfvi.examples import ConjugateNormal, HierarchicalNormal, standardized_errors, train


def run(name: str, seed: int, summary: bool) -> tuple[dict[str, dict[str, float]], float]:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    problem: ConjugateNormal | HierarchicalNormal
    if name == "conjugate":
        problem = ConjugateNormal()
        train(problem, num_steps=6000, lr=0.01, final_lr=0.0002)
    else:
        problem = HierarchicalNormal()
        elbo = LFVI(summary=problem.summary) if summary else None
        train(problem, num_steps=5000, lr=0.02, final_lr=0.001, elbo=elbo)
    return standardized_errors(problem.fitted(), problem.exact()), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["conjugate", "hierarchical"])
    parser.add_argument(
        "--summary",
        action="store_true",
        help="hierarchical model: discriminator on each group's mean (LFVI(summary=...))",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':<13}{'seed':>5}  {'site':<8}{'mean err (sd)':>14}{'sd ratio':>10}{'time':>8}")
    for name in args.models:
        for seed in args.seeds:
            errors, seconds = run(name, seed, args.summary)
            for site, e in errors.items():
                print(
                    f"{name:<13}{seed:>5}  {site:<8}{e['mean_error_sd']:>14.3f}"
                    f"{e['sd_ratio']:>10.3f}{seconds:>7.0f}s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
