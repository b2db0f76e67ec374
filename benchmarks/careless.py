"""Runs a careless user would make, and the warnings LFVI ends them with.

The hierarchical example (40 groups, exact posterior by quadrature) trained
with ``fit`` at settings that fail: a constant learning rate far too high, or
far too few steps. Each prints its errors against the exact posterior (mean
error in exact sds, sd ratio) and the LFVIWarnings it raised::

    OMP_NUM_THREADS=1 python benchmarks/careless.py
"""

import warnings

import pyro
import torch
from fitting import standardized_errors

from pyro_lfvi import LFVI, LFVIWarning, fit
from pyro_lfvi.examples import HierarchicalNormal

RUNS = [("lr 1.0, 600 steps", 600, 1.0), ("lr 0.3, 600 steps", 600, 0.3), ("200 steps", 200, 0.02)]


def main() -> None:
    torch.set_num_threads(1)
    for label, steps, lr in RUNS:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        problem = HierarchicalNormal()
        elbo = LFVI()
        svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": lr}), elbo)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(svi, problem.data, num_steps=steps, progress=False)
        err = standardized_errors(problem.fitted(), problem.exact())
        figures = {
            k: (round(v["mean_error_sd"], 2), round(v["sd_ratio"], 2)) for k, v in err.items()
        }
        print(f"{label}: (mean error sds, sd ratio) {figures}")
        for w in caught:
            if issubclass(w.category, LFVIWarning):
                print(f"    LFVIWarning: {str(w.message)[:150]}...")


if __name__ == "__main__":
    main()
