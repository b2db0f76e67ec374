"""The end-of-training check of the paper's joint classifier, on fits that meet
their targets and on fits that miss them.

LFVI falls back to the joint classifier for implicit local guides, point-mass
globals (``AutoDelta``: variational EM) and adversarial model parameters, or
uses it when asked (``estimator="joint"``). Each run trains with
``pyro.infer.SVI``, ``ClippedAdam`` decaying geometrically from ``lr`` to
``final_lr``, and ``pyro_lfvi.fit``'s end-of-training checks, and prints the
accuracy against the exact answer, the check's gain (the online classifier's
held-out loss minus that of a copy trained further at the final guide; it
warns above 0.02) and the ``LFVIWarning``s the run raised.

* ``conjugate``: ``ConjugateNormal()``, ``estimator="joint"``, 3000 steps,
  0.01 -> 0.0005: ``mu`` mean error in exact sds / sd ratio.
* ``hierarchical``: ``HierarchicalNormal()``, ``estimator="joint"``, each
  group's mean as ``summary=``, 5000 steps, 0.02 -> 0.001: ``mu``,
  ``log_tau`` and ``theta`` (RMSE over the 40 groups / mean sd ratio).
* ``bimodal``: ``BimodalLocals()`` with its implicit local guide (a
  ``NoiseNetwork``; LFVI picks the joint classifier), 3000 steps,
  0.01 -> 0.0005: ``log_tau`` against the exact posterior (grid).
* ``em``: 1000 points of N(2, 0.7), a location-scale simulator, wide priors,
  ``AutoDelta`` from (0, 1), 3000 steps, 0.01 -> 0.0002: each point estimate's
  distance from the data's mean and sd in standard errors (the MAP is within
  a fraction of one).
* ``adversarial``: the same simulator with ``pyro.param`` location and scale,
  ``model_params="adversarial"``, an empty guide, 1500 steps,
  0.01 -> 0.0005: the same distances.

``--more-updates`` follows the warning's first remedy:
``LFVI(discriminator_steps=3, discriminator_optim=pyro.optim.Adam({"lr": 1e-3}))``.

    python benchmarks/joint_check.py                       # all, seeds 0 1 2
    python benchmarks/joint_check.py --cases bimodal --more-updates
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from fitting import decaying_adam, standardized_errors
from pyro.infer.autoguide import AutoDelta, init_to_value

from pyro_lfvi import LFVI, ImplicitSite, LFVIWarning, check_ratio_estimator, fit
from pyro_lfvi.examples import BimodalLocals, ConjugateNormal, HierarchicalNormal
from pyro_lfvi.stationarity import check_stationarity

Score = Callable[[], dict[str, str]]


def _errors(fitted: dict, exact: dict) -> dict[str, str]:
    return {
        k: f"{e['mean_error_sd']:+.2f} / {e['sd_ratio']:.2f}"
        for k, e in standardized_errors(fitted, exact).items()
    }


def _location_scale(data: torch.Tensor, loc: float, scale: float) -> dict[str, str]:
    mean, sd, n = float(data.mean()), float(data.std()), len(data)
    return {
        "loc (std errors)": f"{(loc - mean) / (sd / n**0.5):+.2f}",
        "scale (std errors)": f"{(scale - sd) / (sd / (2 * n) ** 0.5):+.2f}",
    }


def _simulate(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return loc + scale * torch.randn_like(loc)


def build(case: str) -> tuple[Any, Any, torch.Tensor, dict, int, float, float, Score]:
    """model, guide, data, LFVI kwargs, steps, lr, final lr and the scorer of one case."""
    if case == "conjugate":
        p = ConjugateNormal()
        return (p.model, p.guide, p.data, {"estimator": "joint"}, 3000, 0.01, 0.0005,
                lambda: _errors(p.fitted(), p.exact()))  # fmt: skip
    if case == "hierarchical":
        h = HierarchicalNormal()
        kwargs = {"estimator": "joint", "summary": h.summary}
        return (h.model, h.guide, h.data, kwargs, 5000, 0.02, 0.001,
                lambda: _errors(h.fitted(), h.exact()))  # fmt: skip
    if case == "bimodal":
        b = BimodalLocals()

        def bimodal() -> dict[str, str]:
            fitted = (pyro.param("tau_loc").detach(), pyro.param("tau_scale").detach())
            return _errors({"log_tau": fitted}, {"log_tau": b.exact()["log_tau"]})

        return b.model, b.implicit_guide, b.data, {}, 3000, 0.01, 0.0005, bimodal
    data = 2.0 + 0.7 * torch.randn(1000)
    if case == "em":

        def model(data: torch.Tensor) -> None:
            loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
            scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
            with pyro.plate("data", len(data), subsample_size=100) as i:
                pyro.sample("x", ImplicitSite(_simulate, loc, scale), obs=data[i])

        start = {"loc": torch.tensor(0.0), "scale": torch.tensor(1.0)}
        guide = AutoDelta(model, init_loc_fn=init_to_value(values=start))

        def em() -> dict[str, str]:
            point = {k: float(v.detach()) for k, v in guide.median().items()}
            return _location_scale(data, point["loc"], point["scale"])

        return model, guide, data, {}, 3000, 0.01, 0.0002, em

    def model_with_params(data: torch.Tensor) -> None:
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", len(data), subsample_size=100) as i:
            site = ImplicitSite(_simulate, loc, scale, reparameterized=True)
            pyro.sample("x", site, obs=data[i])

    def empty_guide(data: torch.Tensor) -> None:
        pass

    def adversarial() -> dict[str, str]:
        loc, scale = (float(pyro.param(k).detach()) for k in ("loc", "scale"))
        return _location_scale(data, loc, scale)

    kwargs = {"model_params": "adversarial"}
    return model_with_params, empty_guide, data, kwargs, 1500, 0.01, 0.0005, adversarial


def run(case: str, seed: int, more_updates: bool) -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model, guide, data, kwargs, steps, lr, final_lr, score = build(case)
    if more_updates:
        kwargs.update(discriminator_steps=3, discriminator_optim=pyro.optim.Adam({"lr": 1e-3}))
    elbo = LFVI(**kwargs)
    svi = pyro.infer.SVI(model, guide, decaying_adam(steps, lr, final_lr), elbo)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LFVIWarning)
        # What fit(svi, data, ...) does at the end, with the check's figures kept.
        fit(svi, data, num_steps=steps, progress=False, check=False)
        result = check_ratio_estimator(elbo, model, guide, data)
        check_stationarity(elbo, model, guide, data)
    seconds = time.perf_counter() - start
    raised = sorted({str(w.message).split(":")[0] for w in caught if w.category is LFVIWarning})
    figures = ", ".join(f"{k} {v}" for k, v in score().items())
    print(
        f"{case:<13}{seed:>5}  {figures:<60}{result.gain:>8.4f}{seconds:>7.0f}s  "
        f"{raised or 'none'}",
        flush=True,
    )


def main() -> None:
    cases = ["conjugate", "hierarchical", "bimodal", "em", "adversarial"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=cases, choices=cases)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--more-updates", action="store_true", help="three classifier updates per step"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'case':<13}{'seed':>5}  {'accuracy (mean error / sd ratio)':<60}{'gain':>8}")
    for case in args.cases:
        for seed in args.seeds:
            run(case, seed, args.more_updates)


if __name__ == "__main__":
    main()
