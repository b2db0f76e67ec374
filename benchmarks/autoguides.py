"""Pyro's autoguides on the globals, with LFVI's default estimator, against exact posteriors.

An autoguide puts a point mass on the transform of an auxiliary draw; LFVI
treats that as a distribution over the globals (the default contrastive
estimator), and only a guide of point masses alone (``AutoDelta``) as
variational EM (the joint classifier). Prints, per seed, the estimator LFVI
chose, each global's mean error in exact posterior sds / sd ratio, and the
LFVIWarnings that ``fit`` and its end-of-training checks raised::

    OMP_NUM_THREADS=1 python benchmarks/autoguides.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import warnings

import pyro
import torch
from fitting import decaying_adam
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

from pyro_lfvi import LFVI, LFVIWarning, fit
from pyro_lfvi.examples import ConjugateNormal, HierarchicalNormal

CASES = [
    (ConjugateNormal, AutoNormal),
    (ConjugateNormal, AutoDiagonalNormal),
    (ConjugateNormal, AutoMultivariateNormal),
    (HierarchicalNormal, AutoNormal),
]


def global_draws(guide, problem, num_draws: int) -> dict[str, torch.Tensor]:
    """Draws of mu (and log tau) from the fitted guide."""
    out: dict[str, list[torch.Tensor]] = {"mu": [], "log_tau": []}
    with torch.no_grad():
        for _ in range(num_draws):
            trace = pyro.poutine.trace(guide).get_trace(problem.data)
            out["mu"].append(trace.nodes["mu"]["value"])
            if "tau" in trace.nodes:
                out["log_tau"].append(trace.nodes["tau"]["value"].log())
    return {k: torch.stack(v) for k, v in out.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    for seed in args.seeds:
        for problem_cls, guide_cls in CASES:
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            problem = problem_cls()
            guide = guide_cls(problem.model)
            elbo = LFVI()
            optim = decaying_adam(args.steps, 0.01, 0.0002)
            svi = pyro.infer.SVI(problem.model, guide, optim, elbo)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", LFVIWarning)
                fit(svi, problem.data, num_steps=args.steps, progress=False)
            raised = [str(w.message)[:60] for w in caught if issubclass(w.category, LFVIWarning)]
            exact = problem.exact()
            figures = []
            for name, draws in global_draws(guide, problem, 2000).items():
                mean, sd = (float(v) for v in exact[name])
                error = (float(draws.mean()) - mean) / sd
                figures.append(f"{name} {error:+.2f}/{float(draws.std()) / sd:.2f}")
            print(
                f"seed {seed} {problem_cls.__name__:<18} {guide_cls.__name__:<22} "
                f"{type(elbo.estimator).__name__:<26} {'  '.join(figures)}  {raised or 'none'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
