"""Fit a built-in implicit model and print the posterior beside the truth.

python -m pyro_lfvi.demo            # about a minute on 2 CPU cores
python -m pyro_lfvi.demo --steps 500 --quiet
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import torch
from tqdm.auto import tqdm

from .elbo import LFVI
from .examples import HierarchicalNormal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pyro_lfvi.demo",
        description="Fit a hierarchical model whose likelihood is a simulator, with LFVI.",
    )
    parser.add_argument("--steps", type=int, default=4000, help="SVI steps (default 4000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")

    torch.set_num_threads(min(2, torch.get_num_threads()))
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    problem = HierarchicalNormal()
    print(
        f"Model: {problem.num_groups} groups, each with its own mean theta_j ~ Normal(mu, tau),\n"
        f"and {problem.num_obs} observations per group drawn by a simulator (no likelihood).\n"
        f"LFVI trains a classifier to tell simulated groups from real ones and uses its\n"
        f"logit as the missing log-likelihood ratio. {args.steps} steps, 20 groups a step.\n"
    )
    elbo = LFVI()
    lr, final_lr = 0.02, 0.001
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": (final_lr / lr) ** (1 / args.steps)})
    svi = pyro.infer.SVI(problem.model, problem.guide, optim, elbo)
    start = time.perf_counter()
    bar = tqdm(range(args.steps), disable=args.quiet, desc="LFVI", unit="step")
    for step in bar:
        svi.step(problem.data)
        if step % 50 == 0:
            h = elbo.history[-1]
            bar.set_postfix(elbo=f"{h['elbo']:.1f}", acc=f"{h['discriminator_accuracy']:.2f}")
    seconds = time.perf_counter() - start

    exact, fit = problem.exact(), problem.fitted()
    print(f"\nPosterior after {args.steps} steps ({seconds:.0f} s): mean ± sd")
    print(f"{'':<10}{'truth':>8}{'exact posterior':>20}{'LFVI':>20}")

    def row(label: str, truth: float, key: str, j: int | None = None) -> None:
        cells = []
        for mean, sd in (exact[key], fit[key]):
            m, s = (mean, sd) if j is None else (mean[j], sd[j])
            cells.append(f"{float(m):>12.3f} ± {float(s):.3f}")
        print(f"{label:<10}{truth:>8.3f}{''.join(cells)}")

    row("mu", problem.true_mu, "mu")
    row("log tau", math.log(problem.true_tau), "log_tau")
    for j in range(3):
        row(f"theta_{j}", float(problem.true_theta[j]), "theta", j)
    rmse = float((((fit["theta"][0] - exact["theta"][0]) / exact["theta"][1]) ** 2).mean().sqrt())
    print(f"\nAll {problem.num_groups} group means: RMSE {rmse:.2f} exact posterior sds.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
