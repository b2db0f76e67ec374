"""``az.summary`` of LFVI's fit of the conjugate example, beside the exact posterior.

python benchmarks/arviz_summary.py
"""

from __future__ import annotations

import arviz as az
import pyro
import torch
from fitting import train

from pyro_lfvi import to_inference_data
from pyro_lfvi.examples import ConjugateNormal


def main() -> None:
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    problem = ConjugateNormal()
    elbo = train(problem, num_steps=6000, lr=0.01, final_lr=0.0002)
    idata = to_inference_data(problem.model, problem.guide, problem.data, lfvi=elbo)
    print(az.summary(idata, var_names=["mu"]).to_string())
    mean, sd = problem.exact()["mu"]
    print(f"\nexact posterior of mu: mean {mean:.3f}, sd {sd:.3f}")


if __name__ == "__main__":
    main()
