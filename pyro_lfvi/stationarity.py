r"""An end-of-training check that the guide's scales had stopped moving.

A guide can end training too wide (or too narrow) with a ratio estimator that
is right: the learning rate decayed before the scales reached their optimum.
With minibatches of a large data set this is the rule rather than the
exception, because the gradient of a guide scale carries minibatch noise about
:math:`\sqrt{N / B}` times its signal (:mod:`pyro_lfvi.antithetic`), and the
posterior then comes out too wide with every per-step figure looking healthy.

:func:`check_stationarity` measures, at the final guide, how the ELBO (with the
final ratio estimator, frozen) changes when the base noise of each explicit
guide site outside the data plate is scaled by :math:`s_j` in coordinate
:math:`j`:

.. math::

    g_j = \frac{\partial}{\partial s_j}
    \mathbb{E}_{\epsilon}\big[\log p(x, \theta_s) - \log q(\theta_s)\big]
    \Big|_{s = 1},
    \qquad \theta_s = \mu + \sigma \odot (s \odot \epsilon).

Scaling a Normal's noise is changing its scale, so a guide at a stationary
point of the ELBO has :math:`g_j = 0`. For a Gaussian posterior with sd
:math:`\sigma_j^*` in that coordinate, :math:`g_j = 1 - (\sigma_j /
\sigma_j^*)^2`, so

.. math::

    \text{sd\_factor}_j = \sqrt{1 - g_j}

is the guide's sd over the sd at which the ELBO stops improving. The check
warns (:class:`~pyro_lfvi.LFVIWarning`) where that factor leaves 0.8-1.25, the
sd target of the issue "Posteriors you can trust on real simulators", and
:math:`g_j` is at least three standard errors from zero.

The estimate draws the particles in mirrored pairs (:mod:`pyro_lfvi.antithetic`),
which cancels the minibatch noise exactly (an odd last particle is drawn as
usual), and averages ``num_batches`` steps'
worth of particles; the :math:`\log q` term is a control variate that
cancels the rest of the noise when the guide is exact. It probes sites whose
base Normal has a learned scale (``AutoNormal``, ``AutoDiagonalNormal``,
``AutoMultivariateNormal``, hand-written Normal and LogNormal guides): for a
normalising flow on fixed noise, scaling the noise leaves the guide's family,
and its derivative need not vanish at the optimum.

References

[1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
    Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.distributions import Distribution, MultivariateNormal, Normal

from .antithetic import AntitheticMessenger, normal_noise
from .errors import LFVIWarning
from .validation import check_positive_int

if TYPE_CHECKING:
    from .elbo import LFVI

__all__ = ["SD_RANGE", "SIGNIFICANCE", "ScaleProbe", "Stationarity", "check_stationarity"]

SD_RANGE = (0.8, 1.25)
"""The ``sd_factor`` range inside which the check stays silent."""

SIGNIFICANCE = 3.0
"""Standard errors by which :math:`g_j` must differ from zero for a warning."""


def _learned_base(fn: Distribution) -> Normal | MultivariateNormal | None:
    """The Normal noise under ``fn`` (see :func:`~pyro_lfvi.antithetic.normal_noise`)
    when its scale is learned (requires grad), else None."""
    base, _ = normal_noise(fn)
    if isinstance(base, Normal) and base.scale.requires_grad:
        return base
    if isinstance(base, MultivariateNormal) and base.scale_tril.requires_grad:
        return base
    return None


class ScaleProbe(AntitheticMessenger):
    """
    An :class:`~pyro_lfvi.antithetic.AntitheticMessenger` that also multiplies
    the base noise of each site outside ``data_plate`` whose base Normal has a
    learned scale by a tensor of ones that requires grad, kept in
    ``scales`` by site name (one entry per coordinate right of the
    particle dim). The gradient of the ELBO in those tensors is
    :math:`g` of :mod:`pyro_lfvi.stationarity`.

    :param int dim: the particle plate's dim (negative).
    :param int size: the number of particles.
    :param str data_plate: the data plate's name (None: no data plate).
    """

    def __init__(self, dim: int, size: int, data_plate: str | None) -> None:
        super().__init__(dim, size)
        self.data_plate = data_plate
        self.scales: dict[str, torch.Tensor] = {}

    def _noise_scale(self, msg: Any, position: int) -> torch.Tensor | None:
        if any(frame.name == self.data_plate for frame in msg["cond_indep_stack"]):
            return None
        base = _learned_base(msg["fn"])
        if base is None:
            return None
        shape = (base.batch_shape + base.event_shape)[position + 1 :]
        if msg["name"] not in self.scales:
            self.scales[msg["name"]] = torch.ones(
                shape, dtype=base.loc.dtype, device=base.loc.device, requires_grad=True
            )
        return self.scales[msg["name"]]


@dataclass
class Stationarity:
    """The ELBO's derivative in the guide's noise scale for one coordinate.

    :param float gradient: :math:`g_j`, averaged over the check's batches.
    :param float stderr: its standard error over the batches.
    """

    gradient: float
    stderr: float

    @property
    def sd_factor(self) -> float:
        """:math:`\\sqrt{1 - g_j}`: the guide's sd over the sd at which the ELBO
        stops improving (Gaussian approximation); 0 for :math:`g_j \\geq 1`."""
        return math.sqrt(max(1.0 - self.gradient, 0.0))

    @property
    def failed(self) -> bool:
        """Whether ``sd_factor`` is outside 0.8-1.25 and ``gradient`` significant."""
        lo, hi = SD_RANGE
        outside = not lo <= self.sd_factor <= hi
        return outside and abs(self.gradient) > SIGNIFICANCE * self.stderr


def _names(scales: dict[str, torch.Tensor]) -> list[str]:
    names = []
    for name, s in scales.items():
        names += [name] if s.numel() == 1 else [f"{name}[{i}]" for i in range(s.numel())]
    return names


def check_stationarity(
    elbo: LFVI,
    model: Callable[..., object],
    guide: Callable[..., object],
    *args: Any,
    num_batches: int = 64,
    warn: bool = True,
    **kwargs: Any,
) -> dict[str, Stationarity]:
    """
    Check, after training, that the guide's scales had reached a stationary
    point of the ELBO (see :mod:`pyro_lfvi.stationarity`); warn
    (:class:`~pyro_lfvi.LFVIWarning`) where they had not.
    :func:`~pyro_lfvi.fit` calls it at the end of training (unless
    ``check=False``). Neither the param store, the optimiser, the ratio
    estimator nor the random stream after the call are changed.

    Example::

        >>> import pyro
        >>> from pyro_lfvi import LFVI, check_stationarity, fit
        >>> from pyro_lfvi.examples import ConjugateNormal
        >>> pyro.set_rng_seed(0)
        >>> pyro.clear_param_store()
        >>> problem = ConjugateNormal()
        >>> elbo = LFVI()
        >>> svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        >>> _ = fit(svi, problem.data, num_steps=5, progress=False, check=False)
        >>> result = check_stationarity(
        ...     elbo, problem.model, problem.guide, problem.data, warn=False
        ... )
        >>> sorted(result)
        ['mu']

    :param LFVI elbo: the trained LFVI instance.
    :param callable model: the model, as given to SVI.
    :param callable guide: the guide, as given to SVI.
    :param args: arguments of model and guide.
    :param int num_batches: training steps' worth of particles to average
        (default 64, at least 8).
    :param bool warn: warn where a coordinate fails (default True).
    :param kwargs: keyword arguments of model and guide.
    :returns: a :class:`Stationarity` by coordinate name (``"mu"``, or
        ``"theta[2]"`` for a vector site); empty where the check does not
        apply: fewer than four vectorised particles, or no guide site outside
        the data plate with a learned Normal scale. (With an odd number of
        particles the last one is drawn unmirrored.)
    :rtype: dict
    """
    num_batches = check_positive_int("num_batches", num_batches)
    if num_batches < 8:
        raise ValueError(f"Expected num_batches >= 8, actual {num_batches}")
    if elbo.estimator is None or elbo.max_plate_nesting == float("inf"):
        raise ValueError(
            "Expected a trained LFVI instance, actual one that has not taken a step yet; "
            "train first (svi.step or pyro_lfvi.fit), then check"
        )
    size = elbo.num_particles
    if not elbo.vectorize_particles or size < 4:
        return {}
    grads: list[torch.Tensor] = []
    with torch.random.fork_rng():
        roles = elbo._pair(model, guide, args, kwargs)[0].roles
        probe = ScaleProbe(-int(elbo.max_plate_nesting), size, roles.data_plate)
        for _ in range(num_batches):
            out = elbo._objectives(model, guide, args, kwargs, update=False, mirror=probe)
            if not probe.scales:
                return {}
            leaves = list(probe.scales.values())
            found = torch.autograd.grad(out.elbo, leaves, allow_unused=True)
            grads.append(
                torch.cat(
                    [
                        (torch.zeros_like(s) if g is None else g).detach().flatten()
                        for s, g in zip(leaves, found, strict=True)
                    ]
                )
            )
    stacked = torch.stack(grads).double()
    mean, stderr = stacked.mean(0), stacked.std(0) / math.sqrt(len(grads))
    result = {
        name: Stationarity(float(mean[j]), float(stderr[j]))
        for j, name in enumerate(_names(probe.scales))
    }
    failed = [name for name, s in result.items() if s.failed]
    if warn and failed:
        warnings.warn(_message(result, failed, len(grads) * size), LFVIWarning, stacklevel=2)
    return result


def _message(result: dict[str, Stationarity], failed: list[str], draws: int) -> str:
    parts = []
    for name in failed:
        s = result[name]
        direction = "wide" if s.gradient < 0 else "narrow"
        parts.append(
            f"'{name}': d ELBO / d log scale = {s.gradient:+.2f} +- {s.stderr:.2f}, the guide "
            f"is about {s.sd_factor:.2f}x the sd where the ELBO stops improving (too {direction})"
        )
    return (
        f"the guide had not converged: on {draws} mirrored guide draws at the end of "
        "training, the ELBO still changes with the guide's scales: "
        + "; ".join(parts)
        + ". Do not trust these posterior sds. The learning rate likely decayed before the "
        "scales settled: train longer or let the learning rate decay more slowly. With "
        "minibatches of many data points, LFVI(antithetic=True) cancels the minibatch noise "
        "that slows the scales. Then check again (pyro_lfvi.check_stationarity)."
    )
