"""Speed of LFVI through ``pyro.infer.SVI`` against a plain torch loop.

Both sides do the same computation per step on the conjugate Normal example,
with the default estimator (``--estimator contrastive``): eight vectorised
draws of the global from a Normal guide, the training globals spread twice as
wide within the prior's range, one simulator call for every (particle, data
point), the contrastive classifier (robust running standardisation, an ELU MLP)
on the joint simulations and on two shuffled pairings, its log ratio at the
observed data self-normalised over 64 of the step's simulations, the ELBO, one
backward pass and one Adam step over the guide's and the classifier's
parameters. ``--estimator joint`` times the paper's joint classifier against
its own plain loop. The plain loops do not run LFVI's diagnostics, checks and
traces: the ratio is what those cost. The two sides are interleaved in every
repeat, so that machine noise hits both::

    OMP_NUM_THREADS=1 python benchmarks/speed.py --steps 300 --batch-size 100
    OMP_NUM_THREADS=1 python benchmarks/speed.py --steps 100 --batch-size 1000

``--profile`` then profiles the SVI + LFVI step (cProfile) and prints where its
time goes, by part, in milliseconds per step (profiling slows every part, so
compare the parts with each other, not with the timings above).
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import time
from collections.abc import Callable

import pyro
import torch
import torch.nn.functional as F

from pyro_lfvi import LFVI, MLPDiscriminator
from pyro_lfvi.examples import ConjugateNormal


def seconds_per_step(step: Callable[[], object], steps: int, warmup: int) -> float:
    """Mean wall time of ``step()`` over ``steps`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def fresh_svi(problem: ConjugateNormal, estimator: str) -> pyro.infer.SVI:
    """SVI with LFVI on ``problem``, from an empty param store."""
    pyro.clear_param_store()
    elbo = LFVI(estimator=estimator)
    return pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)


def time_svi(problem: ConjugateNormal, steps: int, warmup: int, estimator: str) -> float:
    svi = fresh_svi(problem, estimator)
    return seconds_per_step(lambda: svi.step(problem.data), steps, warmup)


# The parts of an SVI + LFVI step, each measured by the cumulative time of one
# function (file name ending, function name), with the parts inside it; what a
# part's listed children leave over is printed as "the rest".
Part = tuple[str, tuple[str, str], list["Part"]]
PARTS: Part = (
    "the whole step (SVI.step)",
    ("pyro/infer/svi.py", "step"),
    [
        (
            "LFVI.loss_and_grads",
            ("pyro_lfvi/elbo.py", "loss_and_grads"),
            [
                (
                    "pairing the joints",
                    ("pyro_lfvi/pairing.py", "pair_joints"),
                    [
                        ("guide trace", ("pyro_lfvi/roles.py", "trace_guide"), []),
                        (
                            "model trace at the guide's draws",
                            ("pyro_lfvi/roles.py", "trace_model"),
                            [],
                        ),
                        ("training globals", ("pyro_lfvi/pairing.py", "widen_globals"), []),
                    ],
                ),
                (
                    "ratio estimator objectives",
                    ("pyro_lfvi/contrastive.py", "objectives"),
                    [("self-normaliser", ("pyro_lfvi/contrastive.py", "log_normalizer"), [])],
                ),
                ("per-step checks", ("pyro_lfvi/step_checks.py", "pair_checks"), []),
                ("per-step spreads", ("pyro_lfvi/step_checks.py", "global_variances"), []),
                ("history and monitor", ("pyro_lfvi/elbo.py", "_record"), []),
                ("backward pass", ("torch/autograd/__init__.py", "backward"), []),
            ],
        ),
        ("optimiser (one per parameter)", ("pyro/optim/optim.py", "__call__"), []),
    ],
)


def profile_svi(problem: ConjugateNormal, steps: int, warmup: int, estimator: str) -> None:
    """Print the time of each of ``PARTS`` per SVI + LFVI step, under cProfile."""
    svi = fresh_svi(problem, estimator)
    for _ in range(warmup):
        svi.step(problem.data)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        svi.step(problem.data)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]

    def ms(key: tuple[str, str]) -> float:
        path, name = key
        total = sum(v[3] for (f, _, n), v in stats.items() if f.endswith(path) and n == name)
        return total / steps * 1e3

    def show(part: Part, depth: int) -> None:
        label, key, children = part
        total = ms(key)
        print(f"  {'  ' * depth + label:<56s} {total:7.2f}")
        if children:
            for child in children:
                show(child, depth + 1)
            rest = total - sum(ms(child[1]) for child in children)
            print(f"  {'  ' * (depth + 1) + 'the rest':<56s} {rest:7.2f}")

    print(f"profile of {steps} SVI + LFVI steps (ms per step, under cProfile):")
    show(PARTS, 0)


def squash(z: torch.Tensor) -> torch.Tensor:
    over = (z.abs() - 4.0).clamp_min(0.0)
    return torch.where(over > 0, z.sign() * (4.0 + torch.log1p(over)), z)


def robust(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    med = feats.median(0).values
    return med, (1.4826 * (feats - med).abs().median(0).values).clamp_min(1e-8)


def time_plain_contrastive(problem: ConjugateNormal, steps: int, warmup: int) -> float:
    particles, widen, m, n, draws = 8, 2.0, problem.batch_size, problem.num_data, 64
    loc = torch.tensor(0.0, requires_grad=True)
    log_scale = torch.tensor(0.0, requires_grad=True)
    head = torch.nn.Sequential(
        torch.nn.Linear(2, 64),
        torch.nn.ELU(),
        torch.nn.Linear(64, 64),
        torch.nn.ELU(),
        torch.nn.Linear(64, 1),
    )
    opt = torch.optim.Adam([loc, log_scale, *head.parameters()], lr=0.01)
    prior = torch.distributions.Normal(0.0, problem.prior_scale)
    low, high = torch.quantile(prior.sample((512,)), torch.tensor([0.001, 0.999]))
    low, high = low - 0.1 * (high - low), high + 0.1 * (high - low)
    std = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # rows: location, scale of (x, beta)
    fitted = [False]

    def classify(x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([x, beta.expand_as(x)], -1)
        return head(squash((feats - std[0]) / std[1])).squeeze(-1)

    def step() -> None:
        idx = torch.randperm(n)[:m]
        x = problem.data[idx].expand(particles, m)
        scale = log_scale.exp()
        beta = loc + scale * torch.randn(particles, 1)
        b = beta.detach()
        b_wide = (b.mean(0) + widen * (b - b.mean(0))).clamp(low, high)
        x_sim = problem.simulate(b_wide.expand(particles, m))
        with torch.no_grad():
            loc_, scale_ = robust(torch.stack([x_sim, b_wide.expand_as(x_sim)], -1).reshape(-1, 2))
            if fitted[0]:
                std[0].lerp_(loc_, 0.02)
                std[1].copy_(std[1].log().lerp(scale_.log(), 0.02).exp())
            else:
                std[0].copy_(loc_), std[1].copy_(scale_)
                fitted[0] = True
        d_loss = F.softplus(-classify(x_sim, b_wide)).mean()
        for _ in range(2):
            shift = int(torch.randint(1, particles, ()))
            shuffled = x_sim.roll(shift, 0)[:, torch.randperm(m)]
            d_loss = d_loss + F.softplus(classify(shuffled, b_wide)).mean() / 2
        for w in head.parameters():  # the ELBO must not reach the weights
            w.requires_grad_(False)
        r = classify(x, beta)
        sims = x_sim.flatten()[torch.randperm(particles * m)[:draws]]
        grid = classify(sims.expand(particles, draws), beta)
        r = r - (torch.logsumexp(grid, -1, keepdim=True) - math.log(draws))
        for w in head.parameters():
            w.requires_grad_(True)
        log_q = torch.distributions.Normal(loc, scale).log_prob(beta)
        elbo = ((prior.log_prob(beta) - log_q).sum() + (n / m) * r.sum()) / particles
        opt.zero_grad()
        (-elbo + d_loss).backward()
        opt.step()

    return seconds_per_step(step, steps, warmup)


def time_plain(problem: ConjugateNormal, steps: int, warmup: int) -> float:
    particles, widen, m, n = 8, 5.0, problem.batch_size, problem.num_data
    loc = torch.tensor(0.0, requires_grad=True)
    log_scale = torch.tensor(0.0, requires_grad=True)
    net = MLPDiscriminator(2, (64, 64))
    params = [loc, log_scale, *net.parameters()]
    opt = torch.optim.Adam(params, lr=0.01)
    prior = torch.distributions.Normal(0.0, problem.prior_scale)

    def step() -> None:
        idx = torch.randperm(n)[:m]
        x = problem.data[idx].expand(particles, m).unsqueeze(-1)
        scale = log_scale.exp()
        beta = loc + scale * torch.randn(particles, 1)
        b = beta.detach()
        b_wide = b.mean(0, keepdim=True) + widen * (b - b.mean(0, keepdim=True))
        x_sim = problem.simulate(b_wide.expand(particles, m)).unsqueeze(-1)
        logits_p = net({"x": x_sim}, {}, {"mu": b_wide})
        logits_t = net({"x": x}, {}, {"mu": b_wide})
        d_loss = F.softplus(-logits_p).mean() + F.softplus(logits_t).mean()
        for w in net.parameters():  # the ELBO must not reach the weights
            w.requires_grad_(False)
        r = net({"x": x}, {}, {"mu": beta})
        for w in net.parameters():
            w.requires_grad_(True)
        r = r - (torch.logsumexp(r, -1, keepdim=True) - math.log(m))
        log_q = torch.distributions.Normal(loc, scale).log_prob(beta)
        elbo = ((prior.log_prob(beta) - log_q).sum() + (n / m) * r.sum()) / particles
        opt.zero_grad()
        (-elbo + d_loss).backward()
        opt.step()

    with torch.no_grad():
        b0 = loc + torch.randn(particles, 1)
        net.fit_standardization(
            torch.cat(
                [problem.data[:m].view(1, m, 1).expand(8, m, 1), b0.unsqueeze(1).expand(8, m, 1)],
                -1,
            )
        )
    return seconds_per_step(step, steps, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--estimator", choices=["contrastive", "joint"], default="contrastive")
    parser.add_argument(
        "--profile", action="store_true", help="then profile the SVI + LFVI step by part"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    problem = ConjugateNormal(batch_size=args.batch_size)
    svi_times, plain_times = [], []
    for _ in range(args.repeats):  # interleaved, so that machine noise hits both
        svi_times.append(time_svi(problem, args.steps, args.warmup, args.estimator))
        plain = time_plain_contrastive if args.estimator == "contrastive" else time_plain
        plain_times.append(plain(problem, args.steps, args.warmup))
    svi_t, plain_t = min(svi_times), min(plain_times)
    print(
        f"{args.estimator} estimator, batch size {args.batch_size}, 8 particles, "
        f"{args.steps} steps x {args.repeats}"
    )
    print(f"SVI + LFVI : {1 / svi_t:8.1f} steps/s ({svi_t * 1e3:.2f} ms/step)")
    print(f"plain torch: {1 / plain_t:8.1f} steps/s ({plain_t * 1e3:.2f} ms/step)")
    print(f"ratio (SVI+LFVI time / plain time): {svi_t / plain_t:.2f}")
    if args.profile:
        profile_svi(problem, args.steps, args.warmup, args.estimator)


if __name__ == "__main__":
    main()
