"""Time series with per-series local coefficients: LFVI against NUTS on the explicit twin.

``pyro_lfvi.examples.LocalSeries`` (24 series of 30 steps, two observed
variables, a local AR coefficient per series, three globals). The reference is
NUTS (1000 draws after 500 warm-up) on the model with an explicit likelihood.
Two guides: the mean-field ``guide`` and the ``structured_guide`` whose locals
move with the globals. To separate LFVI's error from the guide family's own, each
guide is also fitted with Pyro's ``Trace_ELBO`` on the explicit twin, with the
same schedule.
Prints the mean error in reference sds (RMSE over series for ``a``) and the sd
ratio of each site.

    python benchmarks/series.py --seeds 0 1 2 --steps 2000
    python benchmarks/series.py --guides structured   # the structured guide's rows only
"""

from __future__ import annotations

import argparse
import time
import warnings
from types import SimpleNamespace

import pyro
import torch
from fitting import decaying_adam, standardized_errors, train

from pyro_lfvi import LFVI, LFVIWarning
from pyro_lfvi.examples import LocalSeries


def row(label: str, seed: int, errors: dict, seconds: float, note: str = "") -> None:
    cells = "".join(
        f"{name:>10} {e['mean_error_sd']:>6.2f} {e['sd_ratio']:>5.2f}" for name, e in errors.items()
    )
    print(f"{label:<22}{seed:>4}{cells}{seconds:>7.0f}s {note}", flush=True)


def fitted(problem: LocalSeries, structured: bool) -> dict:
    """The guide's means and sds (by sampling for the structured guide)."""
    if structured:
        return problem.guide_moments(problem.structured_guide)
    return problem.fitted()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument(
        "--guides",
        nargs="+",
        choices=["structured", "mean-field"],
        default=["structured", "mean-field"],
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("method                seed   site: mean error (sd), sd ratio per site")
    for seed in args.seeds:
        pyro.set_rng_seed(seed)
        problem = LocalSeries()
        start = time.perf_counter()
        reference = problem.reference()
        print(f"{'NUTS on the twin':<22}{seed:>4}{time.perf_counter() - start:>7.0f}s")
        for kind in args.guides:
            structured = kind == "structured"
            # Each fit starts from the seed's own data and random stream.
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            problem = LocalSeries()
            guide = problem.structured_guide if structured else problem.guide
            start = time.perf_counter()
            fitting = SimpleNamespace(model=problem.model, guide=guide, data=problem.data)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", LFVIWarning)
                train(fitting, num_steps=args.steps, lr=0.01, final_lr=0.0005, elbo=LFVI())
            raised = [str(w.message)[:60] for w in caught if issubclass(w.category, LFVIWarning)]
            errors = standardized_errors(fitted(problem, structured), reference)
            row(f"LFVI, {kind}", seed, errors, time.perf_counter() - start, str(raised or ""))

            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            start = time.perf_counter()
            elbo = pyro.infer.Trace_ELBO(
                num_particles=8, vectorize_particles=True, max_plate_nesting=1
            )
            optim = decaying_adam(args.steps, 0.01, 0.0005)
            svi = pyro.infer.SVI(problem.twin, guide, optim, elbo)
            for _ in range(args.steps):
                svi.step(problem.data)
            errors = standardized_errors(fitted(problem, structured), reference)
            row(f"Trace_ELBO, {kind}", seed, errors, time.perf_counter() - start)


if __name__ == "__main__":
    main()
