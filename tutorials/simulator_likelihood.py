"""
Tutorial: a simulator as the likelihood, checked against the exact posterior
============================================================================

We observe N = 1000 numbers and believe each is a noisy copy of an unknown
``mu``. Instead of writing the Normal likelihood, we give Pyro the *simulator*
that produces such numbers, as an ``ImplicitSite``: exactly what you would do
with an ecological or epidemiological simulator that has no formula for its
likelihood. Because this toy simulator secretly is a Normal, we know the exact
posterior and can check LFVI against it.

Run it with ``python tutorials/simulator_likelihood.py``. With ``CI`` set in
the environment it runs a few steps only. If matplotlib is installed it saves
``simulator_likelihood.png`` (training curves and the two posteriors).
"""

import math
import os

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyro_lfvi import LFVI, ImplicitSite

NUM_STEPS = 100 if os.environ.get("CI") else 6000
pyro.set_rng_seed(0)

# 1. Data: 1000 draws around a true mean of 1.5.
true_mu, noise, prior_scale = 1.5, 1.0, 10.0
data = true_mu + noise * torch.randn(1000)


# 2. The simulator. It receives ``mu`` already broadcast to one value per data
#    point of the minibatch (and per particle), and draws its own noise.
def simulate(mu):
    return mu + noise * torch.randn_like(mu)


# 3. The model: an explicit prior on the global ``mu``, the simulator as the
#    likelihood. The plate subsamples 100 points a step; LFVI scales by N/M.
def model(data):
    mu = pyro.sample("mu", dist.Normal(0.0, prior_scale))
    with pyro.plate("data", len(data), subsample_size=100) as idx:
        pyro.sample("x", ImplicitSite(simulate, mu), obs=data[idx])


# 4. The guide: global latents need an explicit, reparameterised density.
def guide(data):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


# 5. Train with Pyro's own loop. The learning rate decays from 0.01 to 0.0002.
elbo = LFVI()
optim = pyro.optim.ClippedAdam({"lr": 0.01, "lrd": 0.02 ** (1 / NUM_STEPS)})
svi = pyro.infer.SVI(model, guide, optim, elbo)
for step in range(NUM_STEPS):
    svi.step(data)
    if step % max(1, NUM_STEPS // 5) == 0:
        h = elbo.history[-1]
        print(
            f"step {step:5d}  ELBO estimate {h['elbo']:9.1f}  "
            f"discriminator accuracy {h['discriminator_accuracy']:.2f}"
        )

# 6. Compare with the exact posterior of the explicit model.
precision = 1 / prior_scale**2 + len(data) / noise**2
exact_mean, exact_sd = float(data.sum()) / noise**2 / precision, precision**-0.5
loc, scale = float(pyro.param("loc")), float(pyro.param("scale"))
print(f"\nexact posterior: {exact_mean:.4f} ± {exact_sd:.4f}")
print(f"LFVI posterior : {loc:.4f} ± {scale:.4f}")
print(
    f"mean off by {(loc - exact_mean) / exact_sd:+.2f} exact sds; sd ratio {scale / exact_sd:.2f}"
)

# 7. A picture: the training curves, and the two posterior densities.
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("(matplotlib not installed: no plot)")
else:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot([h["elbo"] for h in elbo.history])
    axes[0].set(title="ELBO estimate", xlabel="step", yscale="symlog")
    axes[1].plot([h["discriminator_accuracy"] for h in elbo.history])
    axes[1].axhline(0.5, color="gray", lw=0.8)
    axes[1].set(title="discriminator accuracy (0.5 = chance)", xlabel="step")
    grid = torch.linspace(exact_mean - 5 * exact_sd, exact_mean + 5 * exact_sd, 200)
    for (m, s), label in (((exact_mean, exact_sd), "exact"), ((loc, scale), "LFVI")):
        density = torch.exp(-0.5 * ((grid - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
        axes[2].plot(grid, density, label=label)
    axes[2].axvline(true_mu, color="k", ls=":", label="truth")
    axes[2].set(title="posterior of mu", xlabel="mu")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig("simulator_likelihood.png", dpi=100)
    print("saved simulator_likelihood.png")
