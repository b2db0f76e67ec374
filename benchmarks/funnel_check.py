"""The guide's family check with and without the funnel's share, on one fit.

Fits an example with ``fit_example`` of ``benchmarks/accuracy.py`` (its budgets,
``check=False``), prints the guide's errors against the exact posterior, then runs
:func:`pyro_lfvi.check_stationarity` twice on the same fit: with the locals' full share of the
globals' curvature (Schur's complement and the funnel) and with Schur's complement alone.
``--guide means-only`` is the examples' structured guide with the locals' sds left
uncoupled from the globals (their means still follow them), the guide the funnel's share is
for. Figures: README, "Funnels".

    OMP_NUM_THREADS=1 python benchmarks/funnel_check.py --model sir --guide mean-field --seed 2
    OMP_NUM_THREADS=1 python benchmarks/funnel_check.py --model local_series --guide means-only
"""

from __future__ import annotations

import argparse

import pyro
import torch
from accuracy import fit_example, guide_errors

import pyro_lfvi.examples.series as series
import pyro_lfvi.examples.sir as sir
import pyro_lfvi.stationarity as stationarity
from pyro_lfvi import check_stationarity
from pyro_lfvi.examples import structured


def means_only(
    name: str, deviation: torch.Tensor, size: int, init_loc: float, init_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``coupled_locals`` whose locals' sds do not follow the globals."""
    loc, _ = structured.coupled_locals(name, deviation, size, init_loc, init_scale)
    return loc, pyro.param(f"{name}_scale")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["sir", "local_series"], default="sir")
    parser.add_argument("--guide", choices=["mean-field", "means-only"], default="mean-field")
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.guide == "means-only":
        series.coupled_locals = sir.coupled_locals = means_only
    problem, guide, elbo, _, _ = fit_example(
        args.model, args.seed, mean_field=args.guide == "mean-field", check=False
    )
    print(f"{args.model}, seed {args.seed}, {args.guide} guide; against the exact posterior:")
    for site, e in guide_errors(problem, guide).items():
        print(
            f"  {site:<10} mean error {e['mean_error_sd']:+.3f} sds, sd ratio {e['sd_ratio']:.3f}"
        )
    full = stationarity.local_schur
    try:
        for label in ["with the funnel's share", "Schur's complement alone"]:
            if label != "with the funnel's share":
                stationarity.local_schur = lambda s, m, w, f=None: full(s, m, w)  # type: ignore
            result = check_stationarity(elbo, problem.model, guide, problem.data, warn=False)
            print(f"the check's guide sd over the marginal sd, {label}:")
            for name, s in result.items():
                if "[" not in name:
                    print(
                        f"  {name:<10} {s.marginal_sd_factor:.3f} +- {s.marginal_stderr:.3f}"
                        f"  warns: {s.marginal_failed}"
                    )
    finally:
        stationarity.local_schur = full


if __name__ == "__main__":
    main()
