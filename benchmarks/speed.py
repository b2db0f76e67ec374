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
traces: the ratio is what those cost.

With the contrastive estimator it also times the floor of the stock loop: the
plain loop's computation inside ``pyro.infer.SVI`` with the fewest Pyro calls
that loop needs (traces of the guide and of the model, the classifier
registered with ``pyro.module``, Pyro's optimiser with one torch optimiser per
parameter), the model run twice as LFVI runs it (at the guide's draws, then
at the training globals for the simulations) and once (the simulator called
directly, as one model run for both sides would). No LFVI can go below that
floor inside ``SVI.step``. All sides are interleaved in every repeat, so that
machine noise hits them all::

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
from pyro import poutine

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


class PlainContrastive:
    """The contrastive estimator's computation written out in torch for the
    conjugate example (8 particles, training globals spread twice as wide and
    clamped to the prior's range, robust running standardisation, an ELU MLP,
    two shuffled pairings, the ratio self-normalised over 64 simulations):
    what both the plain loop and the SVI floor run."""

    particles, widen, draws = 8, 2.0, 64

    def __init__(self, problem: ConjugateNormal) -> None:
        self.problem = problem
        self.head = torch.nn.Sequential(
            torch.nn.Linear(2, 64),
            torch.nn.ELU(),
            torch.nn.Linear(64, 64),
            torch.nn.ELU(),
            torch.nn.Linear(64, 1),
        )
        self.prior = torch.distributions.Normal(0.0, problem.prior_scale)
        low, high = torch.quantile(self.prior.sample((512,)), torch.tensor([0.001, 0.999]))
        self.low, self.high = low - 0.1 * (high - low), high + 0.1 * (high - low)
        self.std = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # rows: location, scale of (x, beta)
        self.fitted = False

    def training_globals(self, beta: torch.Tensor) -> torch.Tensor:
        b = beta.detach()
        return (b.mean(0) + self.widen * (b - b.mean(0))).clamp(self.low, self.high)

    def classify(self, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([x, beta.expand_as(x)], -1)
        return self.head(squash((feats - self.std[0]) / self.std[1])).squeeze(-1)

    def terms(
        self, x: torch.Tensor, beta: torch.Tensor, b_wide: torch.Tensor, x_sim: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's loss and the ELBO (the guide's log density left to the
        caller's ``log_q``-free part: prior and ratio terms minus ``log_q``)."""
        particles, m, draws = self.particles, x.shape[-1], self.draws
        with torch.no_grad():
            loc_, scale_ = robust(torch.stack([x_sim, b_wide.expand_as(x_sim)], -1).reshape(-1, 2))
            if self.fitted:
                self.std[0].lerp_(loc_, 0.02)
                self.std[1].copy_(self.std[1].log().lerp(scale_.log(), 0.02).exp())
            else:
                self.std[0].copy_(loc_), self.std[1].copy_(scale_)
                self.fitted = True
        d_loss = F.softplus(-self.classify(x_sim, b_wide)).mean()
        for _ in range(2):
            shift = int(torch.randint(1, particles, ()))
            shuffled = x_sim.roll(shift, 0)[:, torch.randperm(m)]
            d_loss = d_loss + F.softplus(self.classify(shuffled, b_wide)).mean() / 2
        for w in self.head.parameters():  # the ELBO must not reach the weights
            w.requires_grad_(False)
        r = self.classify(x, beta)
        sims = x_sim.flatten()[torch.randperm(particles * m)[:draws]]
        grid = self.classify(sims.expand(particles, draws), beta)
        r = r - (torch.logsumexp(grid, -1, keepdim=True) - math.log(draws))
        for w in self.head.parameters():
            w.requires_grad_(True)
        ratio = (self.problem.num_data / m) * r.sum()
        return d_loss, (self.prior.log_prob(beta).sum() + ratio) / particles


def time_plain_contrastive(problem: ConjugateNormal, steps: int, warmup: int) -> float:
    plain = PlainContrastive(problem)
    loc = torch.tensor(0.0, requires_grad=True)
    log_scale = torch.tensor(0.0, requires_grad=True)
    opt = torch.optim.Adam([loc, log_scale, *plain.head.parameters()], lr=0.01)
    m, n = problem.batch_size, problem.num_data

    def step() -> None:
        x = problem.data[torch.randperm(n)[:m]].expand(plain.particles, m)
        scale = log_scale.exp()
        beta = loc + scale * torch.randn(plain.particles, 1)
        b_wide = plain.training_globals(beta)
        x_sim = problem.simulate(b_wide.expand(plain.particles, m))
        d_loss, elbo = plain.terms(x, beta, b_wide, x_sim)
        log_q = torch.distributions.Normal(loc, scale).log_prob(beta).sum() / plain.particles
        opt.zero_grad()
        (log_q - elbo + d_loss).backward()
        opt.step()

    return seconds_per_step(step, steps, warmup)


class FloorELBO(pyro.infer.ELBO):
    """
    :class:`PlainContrastive`'s computation inside ``pyro.infer.SVI`` with the
    fewest Pyro calls that the stock loop needs: a trace of the guide, a trace
    of the model at its draws (observed data, prior), a trace of the model at
    the training globals (the simulations; ``simulate_in_torch`` calls the
    simulator directly instead, as one model run for both sides would), the
    classifier registered with ``pyro.module``, and Pyro's optimiser, one per
    parameter. No checks, no history, no general site handling: the least
    overhead any LFVI could have in the stock loop.
    """

    def __init__(self, problem: ConjugateNormal, simulate_in_torch: bool = False) -> None:
        super().__init__(max_plate_nesting=1)
        self.plain = PlainContrastive(problem)
        self.simulate_in_torch = simulate_in_torch

    def loss(
        self, model: Callable[..., object], guide: Callable[..., object], *args: object
    ) -> float:
        raise NotImplementedError("timing only: see loss_and_grads")

    def _get_trace(self, *args: object, **kwargs: object) -> tuple[object, object]:
        raise NotImplementedError("timing only: see loss_and_grads")

    def loss_and_grads(
        self, model: Callable[..., object], guide: Callable[..., object], *args: object
    ) -> float:
        plain = self.plain
        plate = pyro.plate("particles", plain.particles, dim=-2)
        guide_trace = poutine.trace(plate(guide)).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(plate(model), trace=guide_trace)).get_trace(
            *args
        )
        beta = guide_trace.nodes["mu"]["value"]
        x = model_trace.nodes["x"]["value"].expand(plain.particles, -1)
        b_wide = plain.training_globals(beta)
        with torch.no_grad():
            if self.simulate_in_torch:
                x_sim = plain.problem.simulate(b_wide.expand_as(x))
            else:
                replayed = poutine.Trace()
                replayed.add_node("data", **model_trace.nodes["data"])
                replayed.add_node("mu", **dict(guide_trace.nodes["mu"], value=b_wide))
                sims = poutine.uncondition(poutine.replay(plate(model), trace=replayed))
                x_sim = poutine.trace(sims).get_trace(*args).nodes["x"]["value"]
        pyro.module("floor_classifier", plain.head)
        d_loss, elbo = plain.terms(x, beta, b_wide, x_sim)
        log_q = guide_trace.nodes["mu"]["fn"].log_prob(beta).sum() / plain.particles
        (log_q - elbo + d_loss).backward()
        return float((log_q - elbo).detach())


def time_floor(problem: ConjugateNormal, steps: int, warmup: int, simulate_in_torch: bool) -> float:
    pyro.clear_param_store()
    elbo = FloorELBO(problem, simulate_in_torch)
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    return seconds_per_step(lambda: svi.step(problem.data), steps, warmup)


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
    times: dict[str, list[float]] = {"svi": [], "plain": [], "floor": [], "floor2": []}
    for _ in range(args.repeats):  # interleaved, so that machine noise hits all
        times["svi"].append(time_svi(problem, args.steps, args.warmup, args.estimator))
        plain = time_plain_contrastive if args.estimator == "contrastive" else time_plain
        times["plain"].append(plain(problem, args.steps, args.warmup))
        if args.estimator == "contrastive":
            times["floor"].append(time_floor(problem, args.steps, args.warmup, False))
            times["floor2"].append(time_floor(problem, args.steps, args.warmup, True))
    best = {k: min(v) for k, v in times.items() if v}
    print(
        f"{args.estimator} estimator, batch size {args.batch_size}, 8 particles, "
        f"{args.steps} steps x {args.repeats}"
    )
    labels = {
        "svi": "SVI + LFVI",
        "plain": "plain torch",
        "floor": "SVI floor, the model run twice",
        "floor2": "SVI floor, the model run once",
    }
    for key, t in best.items():
        print(f"{labels[key]:<31s}: {1 / t:8.1f} steps/s ({t * 1e3:.2f} ms/step)")
    print(f"ratio (SVI+LFVI time / plain time): {best['svi'] / best['plain']:.2f}")
    if "floor" in best:
        print(
            "the stock loop's floor / plain time: "
            f"{best['floor'] / best['plain']:.2f} (the model run twice), "
            f"{best['floor2'] / best['plain']:.2f} (once)"
        )
    if args.profile:
        profile_svi(problem, args.steps, args.warmup, args.estimator)


if __name__ == "__main__":
    main()
