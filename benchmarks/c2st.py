"""Classifier two-sample test (C2ST) of LFVI's posterior on sbibm tasks.

Three tasks of sbibm 1.1.0, each with its observation 1 (N = 1):

* ``gaussian_linear`` has an exact Gaussian posterior, so the reference samples
  are exact draws; the guide is LFVI's mean-field Normal;
* ``two_moons`` and ``slcp`` have multimodal posteriors; the reference samples
  are the first 5,000 of sbibm's, shipped in ``pyro_lfvi/examples/data/``; the
  guides are spline-coupling flows (see :class:`pyro_lfvi.examples.TwoMoons`
  and :class:`pyro_lfvi.examples.SLCP`), not mean-field.

C2ST is the held-out accuracy of a classifier telling 5,000 guide draws from
5,000 reference draws: 0.5 means indistinguishable (sbibm's metric; its target
here is at most 0.70). LFVI runs with its defaults (``LFVI()``: 64 particles,
hence 64 simulator calls, per step with one observation, and no widening) and
ClippedAdam whose learning rate decays from ``--lr`` to ``--final-lr``. Each run
states its simulator calls (particles x steps); the budget is 10^5 (1,560 steps).

    python benchmarks/c2st.py --task gaussian_linear --seeds 0 1 2 --steps 1560
    python benchmarks/c2st.py --task two_moons --seeds 0 1 2 --steps 1560
    python benchmarks/c2st.py --task slcp --seeds 0 1 2 --steps 1560

Options other than LFVI's defaults: ``--estimator likelihood``
(:class:`pyro_lfvi.LikelihoodEstimator` in place of the contrastive
estimator), ``--particles`` and ``--widen`` (LFVI's ``num_particles`` and
``widen``), ``--replay`` (the ratio estimator's ``replay``), ``--refine``
(its ``refine_steps``), ``--ratio-lr`` (initial learning rate of the
ratio estimator's weights, decaying like the guide's), ``--no-mirror`` (an
unmirrored flow guide), ``--check`` (run fit's end-of-training checks, and
print :func:`pyro_lfvi.check_ratio_estimator`'s gain and the range of its
curvature test's sd factors). Measured on one shared CPU core (observation 1,
seeds 0, 1, 2; times vary with the machine's load):

===============  =========  =====  =========  ====================  ===============
task             settings   steps  sim calls  C2ST (seeds 0, 1, 2)  time
===============  =========  =====  =========  ====================  ===============
gaussian_linear  defaults    1560     99,840  0.532, 0.520, 0.515   8, 10, 9 s
two_moons        defaults    1560     99,840  0.749, 0.735, 0.683   62, 61, 67 s
two_moons        replay 1k   1560     99,840  0.768, 0.733, 0.628   68, 64, 71 s
two_moons        replay 4k   1560     99,840  0.743, 0.734, 0.639   88, 86, 90 s
two_moons        B           1560     99,840  0.661, 0.685, 0.629   276, 210, 100 s
two_moons        former       390     99,840  0.929, 0.917, 0.898   49, 48, 47 s
slcp             defaults    1560     99,840  0.960, 0.971, 0.975   69, 136, 69 s
slcp             replay 1k   1560     99,840  0.852, 0.843, 0.925   77, 76, 77 s
slcp             replay 4k   1560     99,840  0.811, 0.786, 0.848   97, 95, 98 s
slcp             B           1560     99,840  0.903 (seed 0 only)   100 s
slcp             former       390     99,840  0.983, 0.980, 0.981   77, 71, 69 s
===============  =========  =====  =========  ====================  ===============

Replay 1k and 4k: ``--replay 1024`` and ``--replay 4096``: each update of the
ratio estimator also trains on the latest steps' simulations, up to 1,024
(16 steps of 64) or 4,096 in all. B: the defaults and ``--ratio-lr 0.03``.
Former: LFVI's defaults before 64 particles and no widening became the
defaults with one observation (``--particles 256 --widen 2 --steps 390``):
widening spreads the ratio estimator's training globals around the
particles' mean, which for the mirrored guides lies between the modes.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Any

import pyro
import torch
from fitting import train
from torch import nn

from pyro_lfvi import (
    LFVI,
    ContrastiveRatioEstimator,
    LFVIWarning,
    LikelihoodEstimator,
    check_ratio_estimator,
    to_inference_data,
)
from pyro_lfvi.examples import SIR, SLCP, BernoulliGLM, GaussianLinear, TwoMoons

Task = GaussianLinear | TwoMoons | SLCP | BernoulliGLM | SIR

TASKS: dict[str, type[Task]] = {
    "bernoulli_glm": BernoulliGLM,
    "gaussian_linear": GaussianLinear,
    "sir": SIR,
    "two_moons": TwoMoons,
    "slcp": SLCP,
}


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


def moment_errors(draws: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, float]:
    """The largest error of the guide's marginal means, in reference sds, and the
    smallest and largest ratio of its marginal sds to the reference's (issue 8's
    targets: within 0.5 sd, and 0.8-1.25x; for a multimodal posterior these
    moments say less than C2ST)."""
    ref_sd = reference.std(0)
    error = ((draws.mean(0) - reference.mean(0)) / ref_sd).abs().max()
    ratio = draws.std(0) / ref_sd
    return float(error), float(ratio.min()), float(ratio.max())


def fit(
    problem: Task,
    steps: int,
    lr: float,
    final_lr: float,
    elbo: LFVI,
    ratio_lr: float | None = None,
    check: bool = False,
) -> None:
    """Train with ClippedAdam decaying from ``lr`` to ``final_lr`` (``ratio_lr``, if
    given, is the initial learning rate of the ratio estimator's weights; ``check``
    runs :func:`pyro_lfvi.fit`'s end-of-training checks)."""
    if ratio_lr is None:
        train(problem, num_steps=steps, lr=lr, final_lr=final_lr, elbo=elbo, check=check)  # type: ignore[arg-type]
        return
    decay = (final_lr / lr) ** (1.0 / steps)

    def per_param(name: str) -> dict[str, float]:
        start = ratio_lr if name.startswith(("lfvi_ratio", "lfvi_discriminator")) else lr
        return {"lr": start, "lrd": decay}

    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.ClippedAdam(per_param), elbo)
    for _ in range(steps):
        svi.step(problem.data)


def reweighted_draws(problem: Task, elbo: LFVI, num: int) -> tuple[torch.Tensor, Any]:
    """``(num, dim)`` draws of ``to_inference_data(..., lfvi=elbo)`` after a fit (its
    end-of-training check run; by default reweighted where the check found a lag), and the
    ``posterior`` group they came in."""
    guide_trace = pyro.poutine.trace(problem.guide).get_trace(problem.data)
    latent = next(n for n, v in guide_trace.nodes.items() if v["type"] == "sample")
    idata = to_inference_data(
        problem.model,
        problem.guide,
        problem.data,
        num_samples=num,
        num_chains=1,
        lfvi=elbo,
        prior=False,
        var_names=[latent],
    )
    post = idata.posterior
    return torch.as_tensor(post[latent].values).reshape(num, -1).float(), post


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="gaussian_linear")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=[1560])
    parser.add_argument("--lr", type=float, default=0.01, help="initial learning rate")
    parser.add_argument("--final-lr", type=float, default=0.0005, help="final learning rate")
    parser.add_argument(
        "--ratio-lr", type=float, default=None, help="initial learning rate of the ratio estimator"
    )
    parser.add_argument(
        "--particles", type=int, default=None, help="LFVI's num_particles (default: LFVI's)"
    )
    parser.add_argument("--widen", type=float, default=None, help="LFVI's widen (default: LFVI's)")
    parser.add_argument(
        "--estimator",
        choices=["default", "likelihood"],
        default="default",
        help="LFVI's default (contrastive) or LikelihoodEstimator()",
    )
    parser.add_argument(
        "--replay",
        type=int,
        default=None,
        help="the estimator's replay=... (default: the estimator's own)",
    )
    parser.add_argument(
        "--refine",
        type=int,
        default=None,
        help="ContrastiveRatioEstimator(refine_steps=...) (default: the estimator's, off)",
    )
    parser.add_argument(
        "--no-mirror", action="store_true", help="two_moons, slcp: an unmirrored flow guide"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="run fit's end-of-training checks, print check_ratio_estimator's gain and "
        "every LFVIWarning the fit raised",
    )
    parser.add_argument(
        "--reweight",
        action="store_true",
        help="also score to_inference_data(..., lfvi=elbo)'s draws (by default the guide's, "
        "importance-resampled by the end-of-training check's copy of the ratio estimator; "
        "runs the check)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    options: dict[str, Any] = {
        k: v for k, v in (("num_particles", args.particles), ("widen", args.widen)) if v is not None
    }
    print(
        f"task {args.task}, estimator {args.estimator}, lr {args.lr} -> {args.final_lr}, "
        f"ratio lr {args.ratio_lr}, "
        f"replay {args.replay or 'default'}, refine {args.refine or 'default'}, "
        f"LFVI({', '.join(f'{k}={v}' for k, v in options.items())})"
        + (", unmirrored guide" if args.no_mirror else "")
    )
    gain_header = f"{'gain':>8}{'sd factors':>13}" if args.check else ""
    print(
        f"{'steps':>6}{'sim calls':>11}{'seed':>6}{'C2ST':>8}{'mean err':>10}{'sd ratios':>13}"
        f"{'time':>8}{gain_header}"
    )
    for steps in args.steps:
        for seed in args.seeds:
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            task = TASKS[args.task]
            problem = task(mirror=not args.no_mirror) if task in (TwoMoons, SLCP) else task()
            if args.estimator == "likelihood":
                given = {"replay": args.replay, "refine_steps": args.refine}
                options["estimator"] = LikelihoodEstimator(
                    **{k: v for k, v in given.items() if v is not None}
                )
            elif args.replay is not None or args.refine is not None:
                options["estimator"] = ContrastiveRatioEstimator(
                    replay=args.replay or 0, refine_steps=args.refine or 0
                )
            elbo = LFVI(**options)
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", LFVIWarning)
                fit(
                    problem,
                    steps,
                    args.lr,
                    args.final_lr,
                    elbo,
                    args.ratio_lr,
                    args.check or args.reweight,
                )
            seconds = time.perf_counter() - start
            raised = [str(w.message)[:70] for w in caught if issubclass(w.category, LFVIWarning)]
            draws = problem.guide_samples(5000)
            reference = problem.reference_samples(5000)
            score = c2st(draws, reference, seed)
            error, low, high = moment_errors(draws, reference)
            calls = steps * elbo.num_particles
            over = "  (over the 10^5 budget)" if calls > 100_000 else ""
            reweighted = ""
            if args.reweight:
                with warnings.catch_warnings(record=True) as kept:
                    warnings.simplefilter("always", LFVIWarning)
                    resampled, post = reweighted_draws(problem, elbo, 5000)
                r_error, r_low, r_high = moment_errors(resampled, reference)
                reweighted = (
                    f"  reweighted: C2ST {c2st(resampled, reference, seed):.3f}, mean err "
                    f"{r_error:.2f}, sds {r_low:.2f}-{r_high:.2f}, ESS "
                    f"{post.attrs['reweighted_effective_fraction']:.2f}"
                    + (
                        ""
                        if post.attrs["reweighted"]
                        else " (the guide's draws: "
                        + ("weights collapsed)" if kept else "the check found no lag)")
                    )
                )
            gain = ""
            if args.check:
                result = check_ratio_estimator(
                    elbo, problem.model, problem.guide, problem.data, warn=False
                )
                factors = [c.sd_factor for c in result.curvature.values()] or [math.nan]
                gain = f"{result.gain:>8.3f}{min(factors):>7.2f}-{max(factors):<5.2f}"
                if result.shift:  # the likelihood estimator's: what the lag moves
                    moves = result.shift.values()
                    largest = max(abs(m.mean) for m in moves)
                    low_sd, high_sd = (f(m.sd_factor for m in moves) for f in (min, max))
                    effective = next(iter(moves)).effective
                    gain += (
                        f"  moves {largest:.2f} sds, sd {low_sd:.2f}-{high_sd:.2f}x, "
                        f"ESS {effective:.2f}"
                    )
            print(
                f"{steps:>6}{calls:>11}{seed:>6}{score:>8.3f}{error:>10.2f}{low:>7.2f}-{high:.2f}"
                f"{seconds:>7.0f}s{gain}{over}{reweighted}"
                + (f"  warnings: {raised or 'none'}" if args.check else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
