"""How LFVI's training controls change posterior accuracy (conjugate Normal).

Fits ``ConjugateNormal()`` (N = 1000, minibatches of 100, exact posterior
known) with one setting of the ratio estimator's training controls per row
and prints, per seed, the error of the posterior mean of ``mu`` in exact
posterior sds, the ratio of fitted to exact posterior sd, steps per second
and wall time. Every row runs 6000 steps with a learning rate decaying from
0.01 to 0.0002 (ClippedAdam, as in ``benchmarks/accuracy.py``) unless the
row says otherwise:

* ``default``: ``train(problem, 6000, lr=0.01, final_lr=0.0002)``, one joint
  update of guide and discriminator by one shared ClippedAdam (clip_norm 10).
* ``dsteps3``: ``discriminator_steps=3`` with its own ClippedAdam on the same
  schedule (0.01 -> 0.0002 over the run; its lrd is taken to the power 1/3
  because ClippedAdam decays once per update and it makes three per step).
* ``dsteps3_lr1e-3``: the same, the discriminator's ClippedAdam at a constant
  lr 0.001 (no decay).
* ``dlr_x1/3``, ``dlr_x3``: one SVI ClippedAdam with per-parameter arguments
  (``pyro.optim.ClippedAdam(lambda name: {...})``): the discriminator's
  parameters (names ``lfvi_discriminator.*``) get 1/3 or 3 times the guide's
  lr, with the same decay factor.
* ``clip1``: ClippedAdam with ``clip_norm=1.0`` instead of 10.
* ``warmup500``: ``warmup_steps=500``.
* ``particles1``: ``num_particles=1`` (no vectorised particles, so ``widen``
  has no effect) instead of 8.

Warnings raised during a run (e.g. :class:`~pyro_lfvi.LFVIWarning`) are
printed under its row; a run that raises is reported as crashed.

    python benchmarks/training_controls.py                    # all rows, seeds 0 1
    python benchmarks/training_controls.py --settings default clip1 --seeds 0 --steps 1000

Results (``python benchmarks/training_controls.py``, 6000 steps, seeds 0 1,
``torch.set_num_threads(1)``, package at commit dcbd5cc; 2-core machine, the
other core busy; no warnings, no crashes):

    setting          seed  mean err (sd)  sd ratio  steps/s    time
    default             0          0.130     1.030    137.6     44s
    default             1          0.116     1.026    148.7     40s
    dsteps3             0         -0.084     0.992     52.3    115s
    dsteps3             1          0.374     1.000     51.0    118s
    dsteps3_lr1e-3      0          0.003     1.056     54.8    110s
    dsteps3_lr1e-3      1          0.241     1.033     48.6    124s
    dlr_x1/3            0          0.054     1.048    149.0     40s
    dlr_x1/3            1          0.141     1.033    145.5     41s
    dlr_x3              0          0.085     1.031    159.9     38s
    dlr_x3              1         -0.011     1.019    150.0     40s
    clip1               0          0.128     1.040    165.5     36s
    clip1               1          0.154     1.035    136.1     44s
    warmup500           0          0.187     1.044    130.0     46s
    warmup500           1          0.207     1.034    128.1     47s
    particles1          0          1.110     2.385    209.8     29s
    particles1          1         -0.425     1.858    198.3     30s

Conclusion: with two seeds no setting clearly beats the default (errors
0.130/0.116 sd, sd ratio 1.030/1.026); all rows with 8 particles land within
0.4 sd of the mean with sd ratios 0.992-1.056, differences of the size of the
seed noise. ``dsteps3`` brings the sd ratio to 0.992/1.000 but at 2.6-3x the wall
time and with the largest mean error (0.374). ``dlr_x3`` is slightly better
than the default on both seeds, warm-up slightly worse; ``num_particles=1`` is
the only clearly harmful change (sd ratio 2.385/1.858, errors 1.110/-0.425).
"""

from __future__ import annotations

import argparse
import time
import traceback
import warnings
from collections.abc import Callable

import pyro
import torch
from fitting import standardized_errors, train
from pyro.optim import PyroOptim

from pyro_lfvi import LFVI
from pyro_lfvi.examples import ConjugateNormal

LR, FINAL_LR = 0.01, 0.0002
DISC = "lfvi_discriminator"


def joint(**kwargs: object) -> LFVI:
    """This study is of the joint classifier's controls: LFVI(estimator="joint")."""
    return LFVI(estimator="joint", **kwargs)  # type: ignore[arg-type]


def lrd(num_steps: int, lr: float = LR, final_lr: float = FINAL_LR) -> float:
    """Per-update decay factor taking ``lr`` to ``final_lr`` in ``num_steps`` updates."""
    return (final_lr / lr) ** (1.0 / num_steps)


def fit(problem: ConjugateNormal, elbo: LFVI, optim: PyroOptim, num_steps: int) -> None:
    """The loop of :func:`pyro_lfvi.examples.train` with an optimiser of our own."""
    svi = pyro.infer.SVI(problem.model, problem.guide, optim, elbo)
    for _ in range(num_steps):
        svi.step(problem.data)


def default(problem: ConjugateNormal, steps: int) -> None:
    train(problem, num_steps=steps, lr=LR, final_lr=FINAL_LR, elbo=joint())


def dsteps3(problem: ConjugateNormal, steps: int) -> None:
    d_optim = pyro.optim.ClippedAdam({"lr": LR, "lrd": lrd(3 * steps)})
    elbo = joint(discriminator_steps=3, discriminator_optim=d_optim)
    train(problem, num_steps=steps, lr=LR, final_lr=FINAL_LR, elbo=elbo)


def dsteps3_const(problem: ConjugateNormal, steps: int) -> None:
    d_optim = pyro.optim.ClippedAdam({"lr": 0.001})
    elbo = joint(discriminator_steps=3, discriminator_optim=d_optim)
    train(problem, num_steps=steps, lr=LR, final_lr=FINAL_LR, elbo=elbo)


def per_param(factor: float) -> Callable[[ConjugateNormal, int], None]:
    def run(problem: ConjugateNormal, steps: int) -> None:
        decay = lrd(steps)

        def args(name: str) -> dict[str, float]:
            lr = LR * factor if name.startswith(DISC + ".") else LR
            return {"lr": lr, "lrd": decay}

        fit(problem, joint(), pyro.optim.ClippedAdam(args), steps)

    return run


def clip1(problem: ConjugateNormal, steps: int) -> None:
    optim = pyro.optim.ClippedAdam({"lr": LR, "lrd": lrd(steps), "clip_norm": 1.0})
    fit(problem, joint(), optim, steps)


def warmup500(problem: ConjugateNormal, steps: int) -> None:
    train(problem, num_steps=steps, lr=LR, final_lr=FINAL_LR, elbo=joint(warmup_steps=500))


def particles1(problem: ConjugateNormal, steps: int) -> None:
    train(problem, num_steps=steps, lr=LR, final_lr=FINAL_LR, elbo=joint(num_particles=1))


SETTINGS: dict[str, Callable[[ConjugateNormal, int], None]] = {
    "default": default,
    "dsteps3": dsteps3,
    "dsteps3_lr1e-3": dsteps3_const,
    "dlr_x1/3": per_param(1 / 3),
    "dlr_x3": per_param(3.0),
    "clip1": clip1,
    "warmup500": warmup500,
    "particles1": particles1,
}


def run(setting: str, seed: int, steps: int) -> tuple[dict[str, float], float, list[str]]:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        problem = ConjugateNormal()
        SETTINGS[setting](problem, steps)
    seconds = time.perf_counter() - start
    errors = standardized_errors(problem.fitted(), problem.exact())["mu"]
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    return errors, seconds, messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"{'setting':<16}{'seed':>5}{'mean err (sd)':>15}{'sd ratio':>10}{'steps/s':>9}{'time':>8}",
        flush=True,
    )
    for setting in args.settings:
        for seed in args.seeds:
            try:
                e, seconds, messages = run(setting, seed, args.steps)
            except Exception as exc:
                print(f"{setting:<16}{seed:>5}  CRASHED: {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc()
                continue
            print(
                f"{setting:<16}{seed:>5}{e['mean_error_sd']:>15.3f}{e['sd_ratio']:>10.3f}"
                f"{args.steps / seconds:>9.1f}{seconds:>7.0f}s",
                flush=True,
            )
            for message in dict.fromkeys(messages):
                print(f"    warning: {message}", flush=True)


if __name__ == "__main__":
    main()
