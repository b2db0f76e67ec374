"""
Tutorial: a hierarchical simulator model, from training to ArviZ
================================================================

Forty groups (schools, sites, patients...) each have their own mean
``theta_j``, drawn around a population mean ``mu`` with spread ``tau``; ten
observations per group come out of a simulator. ``theta_j`` are *local*
latents (one per data point, i.e. per group), ``mu`` and ``tau`` *global*.

We fit with LFVI, watch the training diagnostics, convert the fitted guide to
ArviZ data and look at it the usual way: ``az.summary``, a posterior plot and a
posterior predictive check. The exact posterior (by quadrature) is printed
beside LFVI's, to show how close it gets.

Run ``python tutorials/hierarchical_arviz.py``; with ``CI`` set it runs a few
steps only. Plots are saved as PNG files when matplotlib is installed.
"""

import os

import arviz as az
import pyro
import torch

from pyro_lfvi import LFVI, fit, plot_history, to_inference_data
from pyro_lfvi.examples import HierarchicalNormal

SMALL = bool(os.environ.get("CI"))
NUM_STEPS = 60 if SMALL else 5000
pyro.set_rng_seed(1)

# 1. The model, guide and data ship with pyro_lfvi.examples; read its source
#    to see an ImplicitSite with event_shape=(10,) inside a subsampled plate.
problem = HierarchicalNormal()

# 2. Train. ``fit`` is the plain SVI loop plus a progress bar showing the ELBO
#    estimate and the discriminator's accuracy. LFVI warns (LFVIWarning) if
#    the discriminator saturates or is useless, or if the ELBO diverges.
elbo = LFVI()
lr, final_lr = 0.02, 0.001
optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": (final_lr / lr) ** (1 / NUM_STEPS)})
svi = pyro.infer.SVI(problem.model, problem.guide, optim, elbo)
fit(svi, problem.data, num_steps=NUM_STEPS, progress=not SMALL)

# 3. To ArviZ: every global and local latent from the guide, the data
#    simulated at posterior draws, the observations, prior draws, and the
#    training history. Plate dims carry the plates' names.
idata = to_inference_data(
    problem.model,
    problem.guide,
    problem.data,
    num_samples=250 if SMALL else 1000,
    lfvi=elbo,
    dims={"y": ["observation"]},
    coords={"groups": [f"group {j}" for j in range(problem.num_groups)]},
)
print(idata)

summary = az.summary(idata, var_names=["mu", "tau"], kind="stats")
print(summary)

# 4. Against the exact posterior (quadrature over mu and log tau).
exact = problem.exact()
log_tau = torch.log(torch.as_tensor(idata.posterior["tau"].values))
print(f"\nmu      exact {float(exact['mu'][0]):.3f} ± {float(exact['mu'][1]):.3f}")
print(f"log tau exact {float(exact['log_tau'][0]):.3f} ± {float(exact['log_tau'][1]):.3f}")
print(f"log tau LFVI  {float(log_tau.mean()):.3f} ± {float(log_tau.std()):.3f}")

# 5. Pictures: training curves, posteriors, and a posterior predictive check
#    on the group means (the statistic a reader of this model cares about).
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("(matplotlib not installed: no plots)")
else:
    plot_history(elbo.history).savefig("hierarchical_training.png", dpi=90)
    az.plot_posterior(idata, var_names=["mu", "tau"])
    plt.savefig("hierarchical_posterior.png", dpi=90)
    group_means = idata.copy()
    for group in ("posterior_predictive", "observed_data"):
        group_means[group] = group_means[group].mean("observation")
    az.plot_ppc(group_means, var_names=["y"], num_pp_samples=100)
    plt.savefig("hierarchical_ppc.png", dpi=90)
    print("saved hierarchical_training.png, hierarchical_posterior.png, hierarchical_ppc.png")
