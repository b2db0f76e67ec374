"""Classifier two-sample test (C2ST) of LFVI's posterior on sbibm's gaussian_linear task.

The task (sbibm 1.1.0, observation 1) has an exact Gaussian posterior, so the
reference samples are exact draws. C2ST is the held-out accuracy of a classifier
telling 5,000 guide draws from 5,000 reference draws: 0.5 means indistinguishable
(sbibm's metric; its target here is at most 0.70). Each run states its simulator
calls (particles x steps).

    python benchmarks/c2st.py --seeds 0 1 2 --steps 390 1500
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch
from torch import nn

from pyro_lfvi import LFVI
from pyro_lfvi.examples import GaussianLinear, train


def c2st(a: torch.Tensor, b: torch.Tensor, seed: int = 0, epochs: int = 300) -> float:
    """Held-out accuracy (two folds) of an MLP telling samples ``a`` from ``b``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([a, b])
    y = torch.cat([torch.zeros(len(a)), torch.ones(len(b))])
    x = (x - x.mean(0)) / x.std(0)
    order = torch.randperm(len(x), generator=gen)
    folds = order.chunk(2)
    scores = []
    for k in range(2):
        test, fit = folds[k], folds[1 - k]
        net = nn.Sequential(
            nn.Linear(x.shape[1], 10 * x.shape[1]),
            nn.ReLU(),
            nn.Linear(10 * x.shape[1], 10 * x.shape[1]),
            nn.ReLU(),
            nn.Linear(10 * x.shape[1], 1),
        )
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(epochs):
            for batch in fit[torch.randperm(len(fit), generator=gen)].split(500):
                loss = nn.functional.binary_cross_entropy_with_logits(
                    net(x[batch]).squeeze(-1), y[batch]
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            pred = (net(x[test]).squeeze(-1) > 0).float()
        scores.append(float((pred == y[test]).float().mean()))
    return sum(scores) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=[390, 1500])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'steps':>6}{'sim calls':>11}{'seed':>6}{'C2ST':>8}{'mean err (sd)':>15}{'time':>8}")
    for steps in args.steps:
        for seed in args.seeds:
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            problem = GaussianLinear()
            elbo = LFVI()
            start = time.perf_counter()
            train(problem, num_steps=steps, lr=0.01, final_lr=0.0005, elbo=elbo)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                loc, scale = problem.fitted()["theta"]
                draws = loc + scale * torch.randn(5000, problem.dim)
            reference = problem.exact_samples(5000)
            mean, sd = problem.exact()["theta"]
            err = float((((loc.double() - mean) / sd) ** 2).mean().sqrt())
            score = c2st(draws, reference, seed)
            calls = steps * elbo.num_particles
            print(
                f"{steps:>6}{calls:>11}{seed:>6}{score:>8.3f}{err:>15.3f}{seconds:>7.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
