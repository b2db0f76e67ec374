"""What users would run instead of LFVI: sbi's NPE and NRE and pyabc's SMC-ABC on sbibm tasks.

Each method gets the same simulation budget (default 10^3, 10^4 and 10^5
simulator calls) on sbibm's tasks (observation 1 each, from
``pyro_lfvi.examples``): ``gaussian_linear``, ``two_moons`` and ``slcp`` by
default, ``bernoulli_glm`` and ``sir`` with ``--tasks``; each is scored by C2ST
(``benchmarks/c2st.py``'s classifier: held-out accuracy telling 5,000
posterior draws from 5,000 reference draws; 0.5 is perfect). sbibm uses
10,000 draws of each; 5,000 is what ships for the sbibm reference files.
Wall time covers simulation, training and drawing the 5,000 samples, not the
C2ST itself. All on one CPU thread.

* ``npe``: ``sbi.inference.NPE`` (NPE-C) with its default density estimator
  (a MAF), one round, sampled directly (draws outside the prior's support are
  rejected, sbi's default).
* ``nre``: ``sbi.inference.NRE`` (NRE-B, ``num_atoms=10``) with its default
  classifier (a residual net), one round, sampled by sbi's default MCMC
  (vectorised slice sampling, 20 chains, 200 warm-up steps).
  Both train with sbi's defaults (batch 200, lr 5e-4, 10% validation, early
  stop after 20 epochs without improvement) but at most
  ``min(--max-epochs, ceil(--max-train-examples / budget))`` epochs (defaults
  500 and 1.5e6: 500 epochs at 10^3, 150 at 10^4, 15 at 10^5, i.e. at most
  about 6,750 gradient steps): on one CPU thread an epoch over 10^5
  simulations takes several seconds, and sbi's unbounded default can run for
  tens of minutes. A run that hits the cap says so in its note ("CAPPED").
* ``smcabc``: ``pyabc.ABCSMC`` with its defaults (Euclidean distance on the raw
  observation, median epsilon, multivariate Normal transitions), population
  100 at a budget of 10^3 and 1,000 above (sbibm's choice), on
  ``SingleCoreSampler`` with a temporary sqlite database under /tmp. The
  sampler stops when the budget is spent, so the calls never exceed it; the
  last complete generation is the posterior. Its 5,000 draws come from a
  weighted Gaussian KDE of that population (Scott's bandwidth; sbibm also
  smooths ABC populations with a KDE), redrawn where they leave the prior's
  support. ``--abc-samples resample`` draws the particles themselves instead.
* ``lfvi``: the training of ``benchmarks/c2st.py`` (``LFVI()`` defaults, 64
  simulations a step with one observation, ClippedAdam decaying from 0.01 to 0.0005, the
  task's guide: mean-field on ``gaussian_linear``, full-rank Gaussian on
  ``bernoulli_glm`` and ``sir``, spline flows on the others) with
  ``budget // 64`` steps: 15 steps (960 calls) at 10^3, 156 (9,984) at 10^4, 1,560
  (99,840) at 10^5.
  LFVI's defaults are tuned for the last; the first two only show what the
  same recipe gets with fewer steps.

``--tasks local_series`` flattens ``pyro_lfvi.examples.LocalSeries`` for NPE
(sbi has no local latents): 3 globals (``mu``, ``log tau``, ``log sigma``) and
24 local coefficients as one 27-vector, the whole 24 x 30 x 2 data set as one
1,440-vector, at 10^4 simulations of the data set; it reports each global's
mean error in NUTS posterior sds and sd ratio (``benchmarks/series.py``'s
reference and ``standardized_errors``), and the RMSE over the 24 locals.

    python benchmarks/baselines.py --out baselines.md
    python benchmarks/baselines.py --tasks gaussian_linear --budgets 1000 --methods npe smcabc
    python benchmarks/baselines.py --tasks local_series --out local_series.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import torch
from c2st import TASKS, c2st
from fitting import standardized_errors, train
from torch.distributions import Distribution, constraints

from pyro_lfvi import LFVI
from pyro_lfvi.elbo import SINGLE_OBSERVATION_PARTICLES
from pyro_lfvi.examples import LocalSeries

NUM_SAMPLES = 5000
LFVI_SIMULATIONS_PER_STEP = SINGLE_OBSERVATION_PARTICLES  # LFVI's default with one observation


@dataclass
class Result:
    task: str
    method: str
    budget: int
    seed: int
    calls: int
    c2st: float | None
    seconds: float
    note: str = ""


# Tasks ---------------------------------------------------------------------


def make_task(name: str) -> Any:
    """A task object with ``prior()``, ``simulate``, ``data`` and ``reference_samples``."""
    return TASKS[name]()


def task_prior(task: Any) -> Distribution:
    if hasattr(task, "prior"):
        return task.prior()
    # GaussianLinear before it had prior(): N(0, 0.1 I).
    return torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(task.dim), 0.1**0.5), 1
    )


def reference_samples(task: Any, num: int) -> torch.Tensor:
    if hasattr(task, "reference_samples"):
        return task.reference_samples(num)
    return task.exact_samples(num)


def simulate(task: Any, theta: torch.Tensor, chunk: int = 10_000) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([task.simulate(t) for t in theta.split(chunk)])


# sbi -----------------------------------------------------------------------


class NullTracker:
    """An sbi ``Tracker`` that records nothing (sbi's default writes TensorBoard logs to cwd)."""

    log_dir: str | None = None

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def add_figure(self, name: str, figure: Any, step: int | None = None) -> None:
        pass

    def flush(self) -> None:
        pass


def run_sbi(
    method: str,
    prior: Distribution,
    simulator: Callable[[torch.Tensor], torch.Tensor],
    data: torch.Tensor,
    budget: int,
    max_epochs: int,
) -> tuple[torch.Tensor, str]:
    """One round of sbi's NPE or NRE on ``budget`` prior simulations; ``NUM_SAMPLES`` draws."""
    from sbi.inference import NPE, NRE

    theta = prior.sample(torch.Size([budget]))
    x = simulator(theta)
    trainer_class = {"npe": NPE, "nre": NRE}[method]
    trainer = trainer_class(prior=prior, tracker=NullTracker(), show_progress_bars=False)
    trainer.append_simulations(theta, x)
    with contextlib.redirect_stdout(io.StringIO()):  # sbi prints "converged after ..."
        trainer.train(max_num_epochs=max_epochs)
    epochs = trainer.summary["epochs_trained"][-1]
    posterior = trainer.build_posterior()
    draws = posterior.sample(torch.Size([NUM_SAMPLES]), x=data, show_progress_bars=False)
    note = f"{epochs} epochs"
    if epochs > max_epochs:  # sbi's loop runs max_epochs + 1 epochs when it does not converge
        note += f" (CAPPED at {max_epochs} epochs, not converged)"
    return draws.reshape(NUM_SAMPLES, -1).float(), note


# pyabc ---------------------------------------------------------------------


def pyabc_classes() -> tuple[type, type]:
    """pyabc's prior base class and a single-core sampler that stops at a simulation budget."""
    import pyabc
    from pyabc.sampler import SingleCoreSampler

    class TorchPrior(pyabc.DistributionBase):
        """A torch prior over a flat vector, as pyabc parameters ``p0, p1, ...``."""

        def __init__(self, prior: Distribution) -> None:
            self.prior = prior
            self.names = [f"p{i}" for i in range(prior.event_shape[0])]

        def vector(self, par: Any) -> torch.Tensor:
            return torch.tensor([float(par[n]) for n in self.names])

        def rvs(self, *args: Any, **kwargs: Any) -> pyabc.Parameter:
            theta = self.prior.sample()
            return pyabc.Parameter(dict(zip(self.names, theta.tolist(), strict=True)))

        def pdf(self, x: Any) -> float:
            theta = self.vector(x)
            if not bool(self.prior.support.check(theta)):
                return 0.0
            return math.exp(float(self.prior.log_prob(theta)))

    class BudgetSampler(SingleCoreSampler):
        """``SingleCoreSampler`` that fails the generation once ``budget`` calls are spent."""

        def __init__(self, budget: int) -> None:
            super().__init__()
            self.budget = budget
            self.used = 0

        def sample_until_n_accepted(
            self, n: int, simulate_one: Callable, t: int, **kwargs: Any
        ) -> Any:
            sample = self._create_empty_sample()
            calls = 0
            for _ in range(n):
                while self.used < self.budget:
                    particle = simulate_one()
                    sample.append(particle)
                    calls += 1
                    self.used += 1
                    if particle.accepted:
                        break
            self.nr_evaluations_ = calls
            sample.ok = sample.n_accepted >= n
            return sample

    return TorchPrior, BudgetSampler


def run_smcabc(task: Any, budget: int, seed: int, smoothing: str) -> tuple[torch.Tensor, int, str]:
    """pyabc's SMC-ABC with its defaults within ``budget`` calls; ``NUM_SAMPLES`` draws."""
    import pyabc

    for name in ("ABC", "Epsilon", "Distance", "Acceptor", "Sampler", "History", "pyabc"):
        logging.getLogger(name).setLevel(logging.WARNING)
    TorchPrior, BudgetSampler = pyabc_classes()
    prior = task_prior(task)
    abc_prior = TorchPrior(prior)
    dx = task.data.shape[-1]
    keys = [f"x{i}" for i in range(dx)]

    def model(par: Any) -> dict[str, float]:
        x = task.simulate(abc_prior.vector(par).unsqueeze(0))[0]
        return dict(zip(keys, x.tolist(), strict=True))

    observed = dict(zip(keys, task.data.tolist(), strict=True))
    population = 100 if budget <= 1000 else 1000
    sampler = BudgetSampler(budget)
    np.random.seed(seed)
    abc = pyabc.ABCSMC(model, abc_prior, population_size=population, sampler=sampler)
    handle, path = tempfile.mkstemp(prefix="baselines_pyabc_", suffix=".db", dir="/tmp")
    os.close(handle)
    try:
        abc.new("sqlite:///" + path, observed)
        history = abc.run(max_total_nr_simulations=budget)
        frame, weights = history.get_distribution(m=0, t=history.max_t)
        particles = torch.tensor(frame[abc_prior.names].to_numpy(), dtype=torch.float64)
        counted = int(history.total_nr_simulations)
        generations = history.max_t + 1
    finally:
        os.remove(path)
    w = torch.tensor(np.asarray(weights), dtype=torch.float64)
    w = w / w.sum()
    draws = abc_smooth(particles, w, prior, smoothing)
    note = (
        f"pop {population}, {generations} generations (pyabc counts {counted}; "
        f"the rest went to an unfinished generation), {smoothing}"
    )
    return draws.float(), sampler.used, note


def abc_smooth(
    particles: torch.Tensor, weights: torch.Tensor, prior: Distribution, smoothing: str
) -> torch.Tensor:
    """``NUM_SAMPLES`` draws of a weighted population, resampled or through a Gaussian KDE."""
    if smoothing == "resample":
        return particles[torch.multinomial(weights, NUM_SAMPLES, replacement=True)]
    d = particles.shape[1]
    ess = 1.0 / (weights**2).sum()
    factor = float(ess) ** (-1.0 / (d + 4))  # Scott's rule with the effective sample size
    mean = (weights[:, None] * particles).sum(0)
    centred = particles - mean
    cov = (weights[:, None] * centred).T @ centred / (1 - (weights**2).sum())
    chol = torch.linalg.cholesky(cov * factor**2 + 1e-12 * torch.eye(d, dtype=cov.dtype))
    out = torch.empty(0, d, dtype=particles.dtype)
    for _ in range(100):
        idx = torch.multinomial(weights, NUM_SAMPLES, replacement=True)
        proposal = particles[idx] + torch.randn(NUM_SAMPLES, d, dtype=particles.dtype) @ chol.T
        inside = prior.support.check(proposal.float())
        out = torch.cat([out, proposal[inside]])
        if len(out) >= NUM_SAMPLES:
            break
    return out[:NUM_SAMPLES]


# LFVI ----------------------------------------------------------------------


def run_lfvi(task_name: str, task: Any, budget: int, seed: int) -> tuple[torch.Tensor, int, str]:
    """``benchmarks/c2st.py``'s LFVI training with as many steps as the budget allows."""
    lr, final_lr = 0.01, 0.0005  # benchmarks/c2st.py's defaults, on every task
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    steps = budget // LFVI_SIMULATIONS_PER_STEP
    elbo = LFVI()
    train(task, num_steps=steps, lr=lr, final_lr=final_lr, elbo=elbo)
    if hasattr(task, "guide_samples"):
        draws = task.guide_samples(NUM_SAMPLES)
    else:
        with torch.no_grad():
            loc, scale = task.fitted()["theta"]
            draws = loc + scale * torch.randn(NUM_SAMPLES, task.dim)
    calls = steps * elbo.num_particles
    return draws, calls, f"{steps} steps x {elbo.num_particles} particles, lr {lr} -> {final_lr}"


# Local series ----------------------------------------------------------------


class FlatLocalSeriesPrior(Distribution):
    """``LocalSeries``'s prior as one vector: ``mu, log tau, log sigma, a_1..a_N``."""

    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012
    support = constraints.independent(constraints.real, 1)

    def __init__(self, num_series: int) -> None:
        self.num_series = num_series
        super().__init__(event_shape=torch.Size([3 + num_series]), validate_args=False)
        self.mu = torch.distributions.Normal(0.5, 0.3)
        self.log_tau = torch.distributions.Normal(math.log(0.2), 0.5)
        self.log_sigma = torch.distributions.Normal(0.0, 0.5)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        shape = torch.Size(sample_shape)
        mu = self.mu.sample(shape)
        log_tau = self.log_tau.sample(shape)
        log_sigma = self.log_sigma.sample(shape)
        noise = torch.randn(*shape, self.num_series)
        a = mu.unsqueeze(-1) + log_tau.exp().unsqueeze(-1) * noise
        return torch.cat([torch.stack([mu, log_tau, log_sigma], -1), a], -1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        mu, log_tau, log_sigma = value[..., 0], value[..., 1], value[..., 2]
        a = value[..., 3:]
        locals_ = torch.distributions.Normal(mu.unsqueeze(-1), log_tau.exp().unsqueeze(-1))
        return (
            self.mu.log_prob(mu)
            + self.log_tau.log_prob(log_tau)
            + self.log_sigma.log_prob(log_sigma)
            + locals_.log_prob(a).sum(-1)
        )


def run_local_series(budget: int, seed: int, max_epochs: int) -> list[Result]:
    """NPE on the flattened ``LocalSeries``, scored against NUTS on its explicit twin."""
    print(
        "local_series: sbi cannot express local latents; NPE sees the 3 globals and 24 "
        "locals as one 27-vector and the whole data set as one 1,440-vector.",
        flush=True,
    )
    pyro.set_rng_seed(seed)
    problem = LocalSeries()
    start = time.perf_counter()
    reference = problem.reference()
    nuts_seconds = time.perf_counter() - start
    print(f"  NUTS reference (1000 draws after 500 warm-up): {nuts_seconds:.0f}s", flush=True)
    prior = FlatLocalSeriesPrior(problem.num_series)

    def simulator(theta: torch.Tensor) -> torch.Tensor:
        sigma = theta[:, 2:3].exp()
        return problem.simulate(theta[:, 3:], sigma).flatten(1)

    torch.manual_seed(seed)
    start = time.perf_counter()
    draws, note = run_sbi("npe", prior, simulator, problem.data.flatten(), budget, max_epochs)
    seconds = time.perf_counter() - start
    draws = draws.double()
    fitted = {
        "mu": (draws[:, 0].mean(), draws[:, 0].std()),
        "log_tau": (draws[:, 1].mean(), draws[:, 1].std()),
        "log_sigma": (draws[:, 2].mean(), draws[:, 2].std()),
        "a": (draws[:, 3:].mean(0), draws[:, 3:].std(0)),
    }
    errors = standardized_errors(fitted, reference)
    cells = ", ".join(
        f"{name} err {e['mean_error_sd']:.2f} sd, sd ratio {e['sd_ratio']:.2f}"
        for name, e in errors.items()
    )
    return [Result("local_series", "npe", budget, seed, budget, None, seconds, f"{note}; {cells}")]


# Driver ----------------------------------------------------------------------


def epoch_cap(budget: int, max_epochs: int, max_train_examples: float) -> int:
    """sbi's ``max_num_epochs``: ``max_epochs``, or fewer so that the examples seen stay
    within ``max_train_examples`` (``ceil(max_train_examples / budget)`` epochs)."""
    return max(1, min(max_epochs, math.ceil(max_train_examples / budget)))


def run_one(
    task_name: str, method: str, budget: int, seed: int, args: argparse.Namespace
) -> Result:
    task = make_task(task_name)
    torch.manual_seed(seed)
    np.random.seed(seed)
    start = time.perf_counter()
    if method in ("npe", "nre"):
        cap = epoch_cap(budget, args.max_epochs, args.max_train_examples)
        draws, note = run_sbi(
            method, task_prior(task), lambda t: simulate(task, t), task.data, budget, cap
        )
        calls = budget
    elif method == "smcabc":
        draws, calls, note = run_smcabc(task, budget, seed, args.abc_samples)
    elif method == "lfvi":
        draws, calls, note = run_lfvi(task_name, task, budget, seed)
    else:
        raise ValueError(f"unknown method {method!r}")
    seconds = time.perf_counter() - start
    torch.manual_seed(10_000 + seed)
    reference = reference_samples(task, NUM_SAMPLES)
    score = c2st(draws.float(), reference.float(), seed)
    return Result(task_name, method, budget, seed, calls, score, seconds, note)


HEADER = ("task", "method", "budget", "seed", "sim calls", "C2ST", "time (s)", "note")


def cells(r: Result) -> tuple[str, ...]:
    score = "n/a" if r.c2st is None else f"{r.c2st:.3f}"
    return (
        r.task,
        r.method,
        f"{r.budget:,}",
        str(r.seed),
        f"{r.calls:,}",
        score,
        f"{r.seconds:.0f}",
        r.note,
    )


def plain_row(values: tuple[str, ...]) -> str:
    widths = (16, 7, 9, 5, 10, 7, 9)
    head = "".join(
        f"{v:>{w}}" if i > 1 else f"{v:<{w}}"
        for i, (v, w) in enumerate(zip(values, widths, strict=False))
    )
    return f"{head}  {values[-1]}"


def markdown(results: list[Result]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in results]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["gaussian_linear", "two_moons", "slcp"],
        choices=["gaussian_linear", "two_moons", "slcp", "bernoulli_glm", "sir", "local_series"],
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["npe", "nre", "smcabc", "lfvi"],
        choices=["npe", "nre", "smcabc", "lfvi"],
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-epochs", type=int, default=500, help="cap on sbi's epochs")
    parser.add_argument(
        "--max-train-examples",
        type=float,
        default=1.5e6,
        help="also cap sbi's epochs at this many examples seen (budget x epochs)",
    )
    parser.add_argument("--abc-samples", choices=["kde", "resample"], default="kde")
    parser.add_argument("--out", help="also write the table as markdown to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    results: list[Result] = []
    print(plain_row(HEADER), flush=True)
    for task_name in args.tasks:
        for seed in args.seeds:
            if task_name == "local_series":
                cap = epoch_cap(10_000, args.max_epochs, args.max_train_examples)
                rows = run_local_series(10_000, seed, cap)
                for r in rows:
                    print(plain_row(cells(r)), flush=True)
                results += rows
                continue
            for budget in args.budgets:
                for method in args.methods:
                    r = run_one(task_name, method, budget, seed, args)
                    print(plain_row(cells(r)), flush=True)
                    results.append(r)
    if args.out:
        with open(args.out, "w") as f:
            f.write(markdown(results))


if __name__ == "__main__":
    main()
