r"""sbibm's ``bernoulli_glm`` task: a spiking neuron's linear filter, one observation (N = 1).

A generalised linear model of a neuron driven by white noise: at each of 100
time steps it spikes with probability :math:`\sigma(X_t \cdot \theta)`, where
row :math:`X_t` of the design matrix holds a constant and the last nine values
of the stimulus; :math:`\theta` (an offset and a nine-tap filter) has a
Gaussian prior that favours smooth filters. The data are the spike count and
the spike-triggered sums of the stimulus, :math:`X^\top y`, the sufficient
statistics of the spike train :math:`y`, so the posterior given the data is
the posterior given the whole train: unimodal, close to Gaussian, with
strongly correlated parameters.

The simulator, stimulus and prior are re-implemented here from sbibm 1.1.0's
task definition [1]; observation 1 (and its spike train) is inlined, and the
first 5,000 of sbibm's reference posterior samples for it (Pólya-Gamma Gibbs
sampling) ship in ``pyro_lfvi/examples/data/``. The likelihood is explicit
(Bernoulli), so :meth:`~pyro_lfvi.examples.BernoulliGLM.explicit_model` is the model's twin with
the spike train observed, for fits with the exact likelihood.

References

[1] `Benchmarking Simulation-Based Inference`, Jan-Matthis Lueckmann, Jan
    Boelts, David S. Greenberg, Pedro J. Goncalves, Jakob H. Macke (AISTATS
    2021)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from ..implicit import ImplicitSite
from .sbibm import ReferenceTask

__all__ = ["BernoulliGLM", "design_matrix", "smoothness_precision"]

# sbibm 1.1.0, task bernoulli_glm, files/num_observation_1/observation.csv.
BERNOULLI_GLM_OBSERVATION_1 = (
    56.0,
    3.32306,
    14.356438,
    11.104893,
    -4.167525,
    -18.507809,
    -21.917496,
    -9.553517,
    -0.357257,
    -5.497825,
)

# The same observation's spike train (observation_raw.csv), one character per time step.
BERNOULLI_GLM_SPIKES_1 = (
    "11011111111000000111111100011101111000001111000011"
    "10001111001100011111001110000000111000111110000111"
)

STIMULUS_SEED = 42
"""sbibm's seed of the white-noise stimulus (numpy's ``RandomState``)."""


def design_matrix(duration: int = 100, taps: int = 9) -> torch.Tensor:
    """
    sbibm's design matrix, ``(duration, taps + 1)``: a column of ones, then
    the stimulus delayed by 0, ..., ``taps - 1`` steps (zero before it starts).
    The stimulus is standard white noise from ``RandomState(42)``, as sbibm
    draws it (the result equals sbibm's stored ``design_matrix.pt``).
    """
    stimulus = np.random.RandomState(STIMULUS_SEED).randn(duration).astype(np.float32)
    columns = torch.zeros(duration, taps)
    for j in range(taps):
        columns[j:, j] = torch.from_numpy(stimulus[: duration - j])
    return torch.cat([torch.ones(duration, 1), columns], 1)


def smoothness_precision(taps: int = 9) -> torch.Tensor:
    r"""
    sbibm's prior precision, ``(taps + 1, taps + 1)``: 0.5 for the offset;
    for the filter :math:`F^\top F` with :math:`F = D^2 + \mathrm{diag}(\sqrt{i / M})`
    (:math:`D` the first difference, :math:`M` = ``taps``), which penalises
    second differences, so smooth filters are likelier.
    """
    diff = torch.eye(taps) - torch.diag(torch.ones(taps - 1), -1)
    f = diff @ diff + torch.diag(torch.arange(taps) / taps) ** 0.5
    precision = torch.zeros(taps + 1, taps + 1)
    precision[0, 0] = 0.5
    precision[1:, 1:] = f.T @ f
    return precision


@dataclass
class BernoulliGLM(ReferenceTask):
    r"""
    sbibm's ``bernoulli_glm`` task: :math:`\theta \sim N(0, B^{-1})` with
    :math:`B` = :func:`~pyro_lfvi.examples.glm.smoothness_precision`, spikes
    :math:`y_t \sim \mathrm{Bernoulli}(\sigma(X_t \cdot \theta))` for the 100
    rows of :func:`~pyro_lfvi.examples.glm.design_matrix`, and data :math:`x = X^\top y` (10
    numbers), one observation (by default sbibm's observation 1).

    :meth:`guide` is a full-rank Gaussian (``MultivariateNormal`` with a
    learned location and Cholesky factor) started at the prior: the posterior
    is close to Gaussian but its parameters are strongly correlated, which a
    mean-field guide cannot represent. Like the other sbibm tasks of
    :mod:`pyro_lfvi.examples`, it offers :meth:`prior`, :meth:`simulate`,
    :attr:`data`, :meth:`reference_samples` and :meth:`guide_samples` to
    benchmark scripts, and :meth:`explicit_model`, the twin with the spike
    train observed under its Bernoulli likelihood.

    Example::

        problem = BernoulliGLM()
        svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), LFVI())
        svi.step(problem.data)

    :param torch.Tensor data: the observation, ``(10,)`` (default sbibm's observation 1).
    :param torch.Tensor spikes: its spike train, ``(100,)``, for
        :meth:`explicit_model` (default observation 1's).
    """

    dim = 10
    data_dim = 10
    reference_file = "bernoulli_glm_reference_posterior_1.csv"

    data: torch.Tensor = field(default_factory=lambda: torch.tensor(BERNOULLI_GLM_OBSERVATION_1))
    spikes: torch.Tensor = field(
        default_factory=lambda: torch.tensor([float(c) for c in BERNOULLI_GLM_SPIKES_1])
    )
    design: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.data.shape != (self.data_dim,):
            raise ValueError(
                f"Expected data of shape ({self.data_dim},) (spike count and nine "
                f"spike-triggered sums), actual {tuple(self.data.shape)}"
            )
        self.design = design_matrix()
        if self.spikes.shape != (self.design.shape[0],):
            raise ValueError(
                f"Expected a spike train of shape ({self.design.shape[0]},), "
                f"actual {tuple(self.spikes.shape)}"
            )

    def prior(self) -> dist.TorchDistribution:
        """The smoothness prior :math:`N(0, B^{-1})` over the offset and filter."""
        return dist.MultivariateNormal(
            torch.zeros(self.dim), precision_matrix=smoothness_precision(self.dim - 1)
        )

    def simulate(self, theta: torch.Tensor) -> torch.Tensor:
        """The simulator: ``(..., 10)`` parameters to ``(..., 10)`` data, :math:`X^\\top y`."""
        design = self.design.to(theta)
        probs = torch.sigmoid(theta @ design.T)
        spikes = (torch.rand_like(probs) < probs).to(theta.dtype)
        return spikes @ design

    def model(self, data: torch.Tensor) -> None:
        theta = pyro.sample("theta", self.prior())
        site = ImplicitSite(self.simulate, theta, event_shape=(self.data_dim,), param_event_dims=1)
        pyro.sample("x", site, obs=data)

    def explicit_model(self, data: torch.Tensor | None = None) -> None:
        """The twin with the spike train :attr:`spikes` observed under its
        Bernoulli likelihood (``data`` is ignored: the spike train determines it)."""
        theta = pyro.sample("theta", self.prior())
        logits = theta @ self.design.to(theta).T
        pyro.sample("y", dist.Bernoulli(logits=logits).to_event(1), obs=self.spikes.to(theta))

    def guide(self, data: torch.Tensor) -> None:
        pyro.sample("theta", self.guide_distribution())

    def guide_distribution(self) -> dist.TorchDistribution:
        """The full-rank Gaussian guide, started at the prior's moments."""
        loc = pyro.param("glm_loc", torch.zeros(self.dim))
        scale_tril = pyro.param(
            "glm_scale_tril",
            lambda: self.prior().scale_tril.clone(),
            constraint=constraints.lower_cholesky,
        )
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)
