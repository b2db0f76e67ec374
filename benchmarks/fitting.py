"""How the tests and benchmarks fit the examples and score the fits.

Shared by the scripts here (run as ``python benchmarks/<script>.py``) and by
``tests/`` (pytest puts ``benchmarks/`` on the path: see ``pyproject.toml``);
both import it as ``fitting``. Not part of
the package: a user fits with :class:`pyro.infer.SVI` or :func:`pyro_lfvi.fit`.
"""

from __future__ import annotations

import pyro
import torch

from pyro_lfvi import LFVI, fit
from pyro_lfvi.examples import ConjugateNormal, HierarchicalNormal

__all__ = ["decaying_adam", "meets_targets", "standardized_errors", "train"]


def standardized_errors(
    fitted: dict[str, tuple[torch.Tensor, torch.Tensor]],
    exact: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, dict[str, float]]:
    """Mean error in exact posterior sds (RMSE for vectors) and sd ratio, per site."""
    out = {}
    for name, (mean, sd) in exact.items():
        fm, fs = (torch.as_tensor(v, dtype=torch.float64) for v in fitted[name])
        m, s = (torch.as_tensor(v, dtype=torch.float64) for v in (mean, sd))
        err = (fm - m) / s
        out[name] = {
            "mean_error_sd": float(err) if err.dim() == 0 else float(err.pow(2).mean().sqrt()),
            "sd_ratio": float((fs / s).mean()),
        }
    return out


def meets_targets(err: dict[str, dict[str, float]]) -> bool:
    """Whether every site of :func:`standardized_errors`'s ``err`` meets the targets
    of the issue "Posteriors you can trust on real simulators": mean within 0.5
    exact sd, sd within 0.8-1.25x (strictly, as ``tests/test_accuracy.py`` asserts)."""
    return all(abs(e["mean_error_sd"]) < 0.5 and 0.8 < e["sd_ratio"] < 1.25 for e in err.values())


def decaying_adam(num_steps: int, lr: float, final_lr: float) -> pyro.optim.PyroOptim:
    """:class:`pyro.optim.ClippedAdam` whose learning rate decays geometrically
    from ``lr`` to ``final_lr`` over ``num_steps`` steps."""
    return pyro.optim.ClippedAdam({"lr": lr, "lrd": (final_lr / lr) ** (1.0 / num_steps)})


def train(
    problem: ConjugateNormal | HierarchicalNormal,
    num_steps: int,
    lr: float = 0.01,
    final_lr: float = 0.0002,
    elbo: LFVI | None = None,
    check: bool = True,
) -> LFVI:
    """
    Fit an example with :class:`pyro.infer.SVI` and LFVI, using
    :class:`pyro.optim.ClippedAdam` whose learning rate decays geometrically
    from ``lr`` to ``final_lr``: the decay is what lets the guide settle to a
    fraction of a posterior sd (even with an exact likelihood).

    It runs :func:`pyro_lfvi.fit`, so it ends with LFVI's end-of-training
    checks (``check`` is passed on: the ratio estimator's check).

    :returns: the LFVI instance, whose ``history`` holds the training curve.
    """
    elbo = elbo if elbo is not None else LFVI()
    optim = decaying_adam(num_steps, lr, final_lr)
    svi = pyro.infer.SVI(problem.model, problem.guide, optim, elbo)
    fit(svi, problem.data, num_steps=num_steps, progress=False, check=check)
    return elbo
