"""Posterior accuracy of each guide family against exact posteriors.

RESULTS_PLACEHOLDER
"""

from __future__ import annotations

import argparse
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoGuideList,
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_mean,
    init_to_value,
)

from pyro_lfvi import LFVI, ImplicitSite, LFVIWarning, to_inference_data
from pyro_lfvi.examples import (
    BimodalLocals,
    ConjugateNormal,
    HierarchicalNormal,
    NoiseNetwork,
    standardized_errors,
)

Guide = Callable[..., object]


@dataclass
class Result:
    """One run: per site (mean error in exact sds, sd ratio or None), W1, warnings."""

    sites: dict[str, tuple[float, float | None]]
    seconds: float
    wasserstein: float | None = None
    messages: list[str] = field(default_factory=list)


def fit(model: Guide, guide: Guide, data: torch.Tensor, steps: int, lr: float, final_lr: float):
    """SVI with LFVI() defaults and a ClippedAdam decaying from ``lr`` to ``final_lr``."""
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": (final_lr / lr) ** (1 / steps)})
    svi = pyro.infer.SVI(model, guide, optim, LFVI())
    for _ in range(steps):
        svi.step(data)


def posterior_draws(model: Guide, guide: Guide, data: torch.Tensor) -> dict[str, torch.Tensor]:
    """4000 guide draws per latent (4 chains x 1000, pooled; every group swept)."""
    idata = to_inference_data(model, guide, data, num_samples=1000, prior=False)
    post = idata["posterior"]
    out = {}
    for name in post.data_vars:
        values = torch.as_tensor(post[name].values, dtype=torch.float64)
        out[str(name)] = values.reshape(-1, *values.shape[2:])
    return out


# --- A. ConjugateNormal ------------------------------------------------------------------


def conjugate_guides(problem: ConjugateNormal) -> dict[str, Callable[[], Guide]]:
    model = problem.model
    return {
        "normal": lambda: problem.guide,
        "AutoNormal": lambda: AutoNormal(model, init_loc_fn=init_to_mean),
        "AutoDiagonalNormal": lambda: AutoDiagonalNormal(model, init_loc_fn=init_to_mean),
        "AutoMultivariateNormal": lambda: AutoMultivariateNormal(model, init_loc_fn=init_to_mean),
        "AutoIAFNormal": lambda: AutoIAFNormal(model, hidden_dim=[8], num_transforms=1),
        "AutoDelta": lambda: AutoDelta(
            model, init_loc_fn=init_to_value(values={"mu": torch.tensor(0.0)})
        ),
    }


CONJUGATE_GUIDES = [
    "normal",
    "AutoNormal",
    "AutoDiagonalNormal",
    "AutoMultivariateNormal",
    "AutoIAFNormal",
    "AutoDelta",
]


def run_conjugate(guide_name: str, seed: int, scale: float) -> Result:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    problem = ConjugateNormal()
    guide = conjugate_guides(problem)[guide_name]()
    steps = max(1, round(6000 * scale))
    start = time.perf_counter()
    fit(problem.model, guide, problem.data, steps, 0.01, 0.0002)
    seconds = time.perf_counter() - start
    mean, sd = problem.exact()["mu"]
    if guide_name == "AutoDelta":  # variational EM: the MAP is the exact posterior mean
        point = float(guide.median()["mu"].detach())
        return Result({"mu": ((point - mean) / sd, None)}, seconds)
    draws = posterior_draws(problem.model, guide, problem.data)["mu"]
    return Result({"mu": ((float(draws.mean()) - mean) / sd, float(draws.std()) / sd)}, seconds)


# --- B. HierarchicalNormal ---------------------------------------------------------------


def amortised_guide(problem: HierarchicalNormal) -> Guide:
    """Globals as in ``problem.guide``; ``theta_j = T(noise, ybar_j, mu, log tau)``."""
    network = NoiseNetwork(inputs=3)

    def guide(data: torch.Tensor) -> None:
        mu_loc = pyro.param("mu_loc", torch.tensor(0.0))
        mu_scale = pyro.param("mu_scale", torch.tensor(1.0), constraint=constraints.positive)
        lt_loc = pyro.param("log_tau_loc", torch.tensor(0.0))
        lt_scale = pyro.param("log_tau_scale", torch.tensor(0.5), constraint=constraints.positive)
        mu = pyro.sample("mu", dist.Normal(mu_loc, mu_scale))
        tau = pyro.sample("tau", dist.LogNormal(lt_loc, lt_scale))
        net = pyro.module("theta_net", network)
        with pyro.plate("groups", problem.num_groups, subsample_size=problem.batch_size) as idx:
            ybar = data[idx].mean(-1)
            pyro.sample("theta", ImplicitSite(net, ybar, mu, tau.log(), reparameterized=True))

    return guide


def autoguidelist_guide(problem: HierarchicalNormal) -> Guide:
    """AutoNormal for ``mu, tau`` + per-group implicit local guide in the list's plate."""
    guide = AutoGuideList(problem.model)
    guide.append(
        AutoNormal(poutine.block(problem.model, expose=["mu", "tau"]), init_loc_fn=init_to_mean)
    )

    def local_guide(data: torch.Tensor) -> None:
        th_loc = pyro.param("theta_loc", torch.zeros(problem.num_groups))
        th_scale = pyro.param(
            "theta_scale", torch.ones(problem.num_groups), constraint=constraints.positive
        )
        net = pyro.module("theta_noise", problem.noise_network)
        with guide.plates["groups"] as i:
            pyro.sample("theta", ImplicitSite(net, th_loc[i], th_scale[i], reparameterized=True))

    guide.append(local_guide)
    return guide


def hierarchical_guides(problem: HierarchicalNormal) -> dict[str, Callable[[], Guide]]:
    return {
        "normal": lambda: problem.guide,
        "implicit": lambda: problem.implicit_guide,
        "amortised": lambda: amortised_guide(problem),
        "AutoGuideList": lambda: autoguidelist_guide(problem),
        "AutoNormal": lambda: AutoNormal(problem.model, init_loc_fn=init_to_mean),
    }


HIERARCHICAL_GUIDES = ["normal", "implicit", "amortised", "AutoGuideList", "AutoNormal"]


def run_hierarchical(guide_name: str, seed: int, scale: float) -> Result:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    problem = HierarchicalNormal()
    guide = hierarchical_guides(problem)[guide_name]()
    steps = max(1, round(5000 * scale))
    start = time.perf_counter()
    fit(problem.model, guide, problem.data, steps, 0.02, 0.001)
    seconds = time.perf_counter() - start
    draws = posterior_draws(problem.model, guide, problem.data)
    fitted = {
        "mu": (draws["mu"].mean(), draws["mu"].std()),
        "log_tau": (draws["tau"].log().mean(), draws["tau"].log().std()),
        "theta": (draws["theta"].mean(0), draws["theta"].std(0)),
    }
    errors = standardized_errors(fitted, problem.exact())
    sites = {name: (e["mean_error_sd"], e["sd_ratio"]) for name, e in errors.items()}
    return Result(sites, seconds)


# --- C. BimodalLocals --------------------------------------------------------------------

BIMODAL_GUIDES = ["normal", "implicit"]


def run_bimodal(guide_name: str, seed: int, scale: float) -> Result:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    problem = BimodalLocals()
    implicit = guide_name == "implicit"
    guide = problem.implicit_guide if implicit else problem.guide
    steps = max(1, round(3000 * scale))
    start = time.perf_counter()
    fit(problem.model, guide, problem.data, steps, 0.01, 0.0005)
    seconds = time.perf_counter() - start
    mean, sd = (float(v) for v in problem.exact()["log_tau"])
    loc = float(pyro.param("tau_loc").detach())
    tau_scale = float(pyro.param("tau_scale").detach())
    w1 = float(problem.local_wasserstein(problem.guide_draws(implicit)).mean())
    return Result({"log_tau": ((loc - mean) / sd, tau_scale / sd)}, seconds, wasserstein=w1)


MODELS: dict[str, tuple[list[str], Callable[[str, int, float], Result]]] = {
    "conjugate": (CONJUGATE_GUIDES, run_conjugate),
    "hierarchical": (HIERARCHICAL_GUIDES, run_hierarchical),
    "bimodal": (BIMODAL_GUIDES, run_bimodal),
}


def run(model: str, guide_name: str, seed: int, scale: float) -> Result:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = MODELS[model][1](guide_name, seed, scale)
    messages = [f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught]
    result.messages = list(dict.fromkeys(messages))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps-scale", type=float, default=1.0)
    parser.add_argument("--guides", nargs="+", default=None, help="guide names to run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    wanted = {g.lower() for g in args.guides} if args.guides else None
    print(
        f"{'model':<13}{'guide':<24}{'seed':>4}  {'site':<8}{'mean err (sd)':>14}"
        f"{'sd ratio':>10}{'W1':>8}{'time':>8}  LFVIWarning",
        flush=True,
    )
    for model in args.models:
        for guide_name in MODELS[model][0]:
            if wanted is not None and guide_name.lower() not in wanted:
                continue
            for seed in args.seeds:
                try:
                    result = run(model, guide_name, seed, args.steps_scale)
                except Exception as exc:
                    first = str(exc).splitlines()[0] if str(exc) else ""
                    print(
                        f"{model:<13}{guide_name:<24}{seed:>4}  CRASHED: "
                        f"{type(exc).__name__}: {first}",
                        flush=True,
                    )
                    traceback.print_exc()
                    continue
                fired = any(m.startswith(LFVIWarning.__name__) for m in result.messages)
                for site, (err, ratio) in result.sites.items():
                    ratio_s = "n/a" if ratio is None else f"{ratio:.3f}"
                    w1 = "" if result.wasserstein is None else f"{result.wasserstein:.3f}"
                    print(
                        f"{model:<13}{guide_name:<24}{seed:>4}  {site:<8}{err:>14.3f}"
                        f"{ratio_s:>10}{w1:>8}{result.seconds:>7.0f}s  "
                        f"{'yes' if fired else 'no'}",
                        flush=True,
                    )
                for message in result.messages:
                    print(f"    warning: {message}", flush=True)


if __name__ == "__main__":
    main()
