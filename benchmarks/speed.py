"""Speed of LFVI through ``pyro.infer.SVI`` against a plain torch loop.

Both sides do the same computation per step on the conjugate Normal example:
eight vectorised draws of the global from a Normal guide, the widened training
globals, one simulator call per draw, the default MLP discriminator on the
p-side and the q-side, the self-normalised ELBO, one backward pass and one Adam
step over the guide's and the discriminator's parameters.

    python benchmarks/speed.py --steps 300 --batch-size 100
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import torch
import torch.nn.functional as F

from pyro_lfvi import LFVI, MLPDiscriminator
from pyro_lfvi.examples import ConjugateNormal


def time_svi(problem: ConjugateNormal, steps: int, warmup: int) -> float:
    pyro.clear_param_store()
    # The plain loop below is the joint classifier's computation: time that estimator.
    elbo = LFVI(estimator="joint")
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    for _ in range(warmup):
        svi.step(problem.data)
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(problem.data)
    return (time.perf_counter() - start) / steps


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
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    problem = ConjugateNormal(batch_size=args.batch_size)
    svi_times, plain_times = [], []
    for _ in range(args.repeats):  # interleaved, so that machine noise hits both
        svi_times.append(time_svi(problem, args.steps, args.warmup))
        plain_times.append(time_plain(problem, args.steps, args.warmup))
    svi_t, plain_t = min(svi_times), min(plain_times)
    print(f"batch size {args.batch_size}, 8 particles, {args.steps} steps x {args.repeats}")
    print(f"SVI + LFVI : {1 / svi_t:8.1f} steps/s ({svi_t * 1e3:.2f} ms/step)")
    print(f"plain torch: {1 / plain_t:8.1f} steps/s ({plain_t * 1e3:.2f} ms/step)")
    print(f"ratio (SVI+LFVI time / plain time): {svi_t / plain_t:.2f}")


if __name__ == "__main__":
    main()
