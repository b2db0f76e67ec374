r"""An end-of-training check that the guide's scales had stopped moving, and
that its family can represent the posterior's correlations.

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

**The guide's family.** A mean-field guide can sit exactly at its optimum
(every :math:`g_j = 0`) and still be too narrow, when the posterior correlates
its coordinates. So the check also mixes the noise across coordinates
(:mod:`pyro_lfvi.noise_probe`): the ELBO's derivatives in the mixing,
:math:`g_{jk}`, with the :math:`g_j`, give the curvature :math:`M` of the ELBO
in the guide's noise, and from it the guide's sd over the posterior's
*marginal* sd (``marginal_sd_factor``; for a Gaussian posterior, exact), and
the partial correlations the guide lacks. Local sites in a data plate drawn whole
(no subsampling) count too: their noise is scaled per coordinate and mixed with
the globals', and their share of :math:`M` (Schur's complement, the locals
taken as independent given the globals) is taken off, so a mean-field guide
that misses the correlation of a hierarchical scale with its groups is seen.
So is a funnel, where a hierarchical scale sets the locals' spread rather than
their mean: the probe also lets each local's noise scale follow the globals'
noise, and the ELBO's gradient there measures how the locals' curvature moves
with the globals, whose share of :math:`M` is taken off too
(:func:`~pyro_lfvi.noise_probe.local_schur`).
Where that factor leaves 0.8-1.25 by
three standard errors of its logarithm while the guide is at its optimum, the
check warns that the guide's family cannot represent the posterior; where the
factor is above 1.25 it warns instead that the guide is wider than its posterior
(a guide that lacks correlations only comes out narrower, so a wide guide has not
converged, though its scales' own gradients are too noisy to show it).

With partial correlations near :math:`\pm 1` the full factor hangs on small
differences: it swings between batches, and a noisy :math:`M` can stop being
positive definite (the factor then reads 0, far too narrow). For a guide
without correlations the check also bounds the factor from the coordinate's
most correlated pair alone, :math:`(M_{jj} - M_{jk}^2 / M_{kk})^{1/2}`, which
is nearly linear in :math:`M` and stable; it warns too where that bound's
square is below :math:`0.8^2` and three standard errors below 1. (On the
Markov jump process of ``tutorials/lotka_volterra_mjp.ipynb``, partial
correlations 0.84 and 0.96, the full factor alone stayed silent on two of
three seeds.)

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import LFVIWarning
from .noise_probe import (
    ScaleProbe,
    coordinate_names,
    curvature_matrix,
    local_schur,
    marginal_factor,
    marginal_sd_factors,
    pairwise_variance_bound,
)
from .validation import check_positive_int

if TYPE_CHECKING:
    from .elbo import LFVI

__all__ = ["PROBE_PARTICLES", "SD_RANGE", "SIGNIFICANCE", "Stationarity", "check_stationarity"]

SD_RANGE = (0.8, 1.25)
"""The ``sd_factor`` range inside which the check stays silent."""

SIGNIFICANCE = 3.0
"""Standard errors by which :math:`g_j` must differ from zero for a warning."""

LISTED = 5
"""Coordinates a warning names, the worst first; the returned dict holds them all."""

PROBE_PARTICLES = 8
"""Particles per batch of the probe when training drew fewer than four (the
few-particle budget recipe): the probe needs mirrored pairs and more than one
of them. (With the contrastive estimator's default ``normalizer="auto"``, eight
particles also leave each particle's own simulations out of the
self-normaliser, which two do not: the probe then measures the guide against
the less narrowed objective.)"""

_FEW_PARTICLES = 4  # training counts below this are probed with PROBE_PARTICLES


@dataclass
class Stationarity:
    """The ELBO's derivative in the guide's noise scale for one coordinate,
    and the guide's sd against the posterior's marginal sd.

    :param float gradient: :math:`g_j`, averaged over the check's batches.
    :param float stderr: its standard error over the batches.
    :param float marginal_sd_factor: the guide's sd over the posterior's
        marginal sd, from the scales and correlations together (0 where the
        estimate of :math:`M` is not positive definite, NaN where it is
        singular or correlations were not measured).
    :param float marginal_stderr: its standard error (jackknife over the batches).
    :param float variance_bound: an upper bound on the square of
        ``marginal_sd_factor`` from the coordinate's pairs alone, for a guide
        without correlations
        (:func:`~pyro_lfvi.noise_probe.pairwise_variance_bound`; NaN for other
        guides): stable where the full factor is not.
    :param float variance_bound_stderr: its standard error (jackknife over the batches).
    :param str correlated_with: the coordinate with the largest partial
        correlation with this one (None for a single coordinate).
    :param float partial_correlation: that partial correlation (held to
        :math:`\\pm 1` where the estimate's noise takes it past).
    """

    gradient: float
    stderr: float
    marginal_sd_factor: float = math.nan
    marginal_stderr: float = math.nan
    correlated_with: str | None = None
    partial_correlation: float = 0.0
    variance_bound: float = math.nan
    variance_bound_stderr: float = math.nan

    @property
    def sd_factor(self) -> float:
        r""":math:`\sqrt{1 - g_j}`: the guide's sd over the sd at which the ELBO
        stops improving (Gaussian approximation); 0 for :math:`g_j \geq 1`."""
        return math.sqrt(max(1.0 - self.gradient, 0.0))

    @property
    def failed(self) -> bool:
        """Whether ``sd_factor`` is outside 0.8-1.25 and ``gradient`` significant."""
        lo, hi = SD_RANGE
        outside = not lo <= self.sd_factor <= hi
        return outside and abs(self.gradient) > SIGNIFICANCE * self.stderr

    @property
    def marginal_failed(self) -> bool:
        """Whether ``marginal_sd_factor`` is outside 0.8-1.25 by more than
        three standard errors of its logarithm (at 0, correlations near
        :math:`\\pm 1`: by more than three standard errors from 1), or
        ``variance_bound`` below :math:`0.8^2` and more than three standard
        errors below 1."""
        lo, hi = SD_RANGE
        bound, bound_se = self.variance_bound, self.variance_bound_stderr
        return _significant(self.marginal_sd_factor, self.marginal_stderr, lo, hi) or (
            bound < lo**2 and 1.0 - bound > SIGNIFICANCE * bound_se
        )


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
    point of the ELBO, and that the guide is not too narrow or wide against
    the posterior's marginals for lack of correlations (see
    :mod:`pyro_lfvi.stationarity`); warn (:class:`~pyro_lfvi.LFVIWarning`)
    where either fails.
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
        apply: fewer than two vectorised particles, or no guide site outside
        the data plate with a learned Normal scale. Training with two or three
        particles is probed with
        :data:`~pyro_lfvi.stationarity.PROBE_PARTICLES` per batch. (With an
        odd number of particles the last one is drawn unmirrored.)
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
    if not elbo.vectorize_particles or elbo.num_particles < 2:
        return {}
    trained = elbo.num_particles
    curvatures: list[torch.Tensor] = []
    local_grads: dict[str, list[tuple[torch.Tensor, ...]]] = {}
    with _probe_particles(elbo) as size, torch.random.fork_rng():
        roles = elbo._pair(model, guide, args, kwargs)[0].roles
        probe = ScaleProbe(-int(elbo.max_plate_nesting), size, roles.data_plate)
        for _ in range(num_batches):
            out = elbo._objectives(model, guide, args, kwargs, update=False, mirror=probe)
            if not probe.scales:
                return {}
            leaves = probe.leaves()
            found = torch.autograd.grad(out.elbo, list(leaves.values()), allow_unused=True)
            grads = {
                name: (torch.zeros_like(leaf) if g is None else g).detach().double()
                for (name, leaf), g in zip(leaves.items(), found, strict=True)
            }
            curvatures.append(curvature_matrix(grads, probe))
            for name in probe.local_scales:
                keys = ("local:", "local_mixing:", "local_funnel:")
                row = tuple(grads[key + name] for key in keys)
                local_grads.setdefault(name, []).append(row)
    batches = torch.stack(curvatures)
    diag = 1 - torch.diagonal(batches, dim1=-2, dim2=-1)
    mean, stderr = diag.mean(0), diag.std(0) / math.sqrt(len(batches))
    names = coordinate_names(probe.scales)
    factor = stderr_f = bound = stderr_b = torch.full_like(mean, math.nan)
    through_locals: list[str] = []
    partial = torch.zeros(len(names), len(names), dtype=mean.dtype)
    if probe.mixed and set(probe.mixing) == set(probe.scales):
        t = torch.block_diag(*[probe.blocks[name] for name in probe.scales]).double()
        schur = _locals(probe, local_grads, len(batches))
        factor, stderr_f = marginal_sd_factors(batches, t, schur=schur)
        bound, stderr_b = marginal_sd_factors(
            batches, t, schur=schur, statistic=pairwise_variance_bound
        )
        m = batches.mean(0)
        globals_only = marginal_factor(m, t)
        through_locals = [
            names[j]
            for j in range(len(names))
            if _differ(float(factor[j]), float(globals_only[j]), tolerance=0.1)
        ]
        partial = -m / torch.outer(m.diagonal(), m.diagonal()).abs().sqrt()
        partial = partial.clamp(-1.0, 1.0).fill_diagonal_(0.0)
    result = {}
    for j, name in enumerate(names):
        k = int(partial[j].abs().argmax()) if len(names) > 1 else j
        result[name] = Stationarity(
            float(mean[j]),
            float(stderr[j]),
            float(factor[j]),
            float(stderr_f[j]),
            names[k] if k != j else None,
            float(partial[j, k]),
            float(bound[j]),
            float(stderr_b[j]),
        )
    failed = [name for name, s in result.items() if s.failed]
    if warn and failed:
        few = trained if trained < _FEW_PARTICLES and roles.full_size > 1 else None
        message = _message(result, failed, len(batches) * size, few)
        warnings.warn(message, LFVIWarning, stacklevel=2)
    marginal = [name for name, s in result.items() if s.marginal_failed and not s.failed]
    if warn and marginal:
        draws = len(batches) * size
        for message in _marginal_messages(
            result, marginal, draws, through_locals, list(probe.local_scales)
        ):
            warnings.warn(message, LFVIWarning, stacklevel=2)
    return result


@contextmanager
def _probe_particles(elbo: LFVI) -> Iterator[int]:
    """Particles per batch for the probe: the training count, or
    :data:`PROBE_PARTICLES` where that was two or three (restored on exit)."""
    trained = elbo.num_particles
    if trained < _FEW_PARTICLES:
        elbo.num_particles = PROBE_PARTICLES
    try:
        yield elbo.num_particles
    finally:
        elbo.num_particles = trained


def _significant(f: float, se: float, lo: float, hi: float) -> bool:
    """Whether a factor ``f`` with standard error ``se`` is outside ``[lo, hi]``
    and its logarithm more than :data:`SIGNIFICANCE` standard errors from 0."""
    if not (math.isfinite(f) and math.isfinite(se)) or lo <= f <= hi:
        return False
    if f == 0:  # correlations near +-1 (see noise_probe.marginal_factor)
        return 1.0 > SIGNIFICANCE * se
    return abs(math.log(f)) > SIGNIFICANCE * se / f


def _differ(a: float, b: float, tolerance: float) -> bool:
    """Whether two marginal sd factors differ by more than ``tolerance`` in
    their logarithm (a factor of 0 differs from any positive one)."""
    if not (math.isfinite(a) and math.isfinite(b)) or a == b:
        return False
    return a == 0 or b == 0 or abs(math.log(a / b)) > tolerance


def _listing(parts: list[str]) -> str:
    """The first ``LISTED`` parts of a warning, and how many more there are."""
    shown = "; ".join(parts[:LISTED])
    more = len(parts) - LISTED
    return shown + (f"; and {more} more coordinates (all in the returned dict)" if more > 0 else "")


def _message(
    result: dict[str, Stationarity], failed: list[str], draws: int, few: int | None = None
) -> str:
    """The warning for the coordinates in ``failed``; ``few``: the particles per
    step of a fit of many data points that drew fewer than four."""
    parts = []
    for name in sorted(failed, key=lambda n: -abs(math.log(max(result[n].sd_factor, 1e-9)))):
        s = result[name]
        direction = "wide" if s.gradient < 0 else "narrow"
        parts.append(
            f"'{name}': d ELBO / d log scale = {s.gradient:+.2f} +- {s.stderr:.2f}, the guide "
            f"is about {s.sd_factor:.2f}x the sd where the ELBO stops improving (too {direction})"
        )
    opening = (
        f"the guide had not converged: on {draws} mirrored guide draws at the end of "
        "training, the ELBO still changes with the guide's scales: "
        + _listing(parts)
        + ". Do not trust these posterior sds. "
    )
    if few is not None:
        return opening + (
            f"This fit drew {few} particles per step over many data points: with so few, "
            "the contrastive ratio estimator's likelihood can come out too sharp or too flat "
            "and the guide cannot settle on it (on the conjugate example of "
            "pyro_lfvi.examples, 2 particles gave posterior sds 0.56-0.64x the exact ones, "
            "the default 8 particles 0.97-1.04x). Train again with LFVI's default "
            "num_particles; then check again (pyro_lfvi.check_stationarity)."
        )
    return opening + _SETTLE


_SETTLE = (
    "The learning rate likely decayed before the scales settled: train longer or let the "
    "learning rate decay more slowly. With minibatches of many data points, "
    "LFVI(antithetic=True) cancels the minibatch noise that slows the scales. Then check "
    "again (pyro_lfvi.check_stationarity)."
)


def _marginal_messages(
    result: dict[str, Stationarity],
    failed: list[str],
    draws: int,
    through_locals: list[str],
    local: list[str],
) -> list[str]:
    """The warnings for coordinates whose marginal sd factor failed while their
    scale gradient did not: too narrow, the guide's family (it lacks
    correlations); too wide, its convergence, since correlations a guide lacks
    only ever narrow it."""
    wide = [name for name in failed if _sized(result[name])[0] > 1.0]
    narrow = [name for name in failed if name not in wide]
    messages = []
    if wide:
        parts = [
            f"'{name}': the guide's sd {_sized(result[name])[1]} the posterior's marginal sd"
            for name in sorted(wide, key=lambda n: -_sized(result[n])[0])
        ]
        messages.append(
            f"the guide is wider than its posterior: on {draws} mirrored guide draws at the "
            "end of training, the ELBO's curvature in the guide's noise shows "
            + _listing(parts)
            + " (the scales' own gradients are too noisy to show it alone, and correlations "
            "that a guide lacks make it narrower, not wider). Do not trust these posterior "
            "sds: they are too wide. " + _SETTLE
        )
    if narrow:
        messages.append(_family_message(result, narrow, through_locals, local))
    return messages


def _locals(
    probe: ScaleProbe, grads: dict[str, list[tuple[torch.Tensor, ...]]], batches: int
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The local sites' share of :math:`M` (linear correlations and funnel),
    summed over sites, where every batch measured it."""
    if not probe.locals_mixed or not grads or any(len(g) != batches for g in grads.values()):
        return None
    parts = []
    for name, rows in grads.items():
        scale, mixing, funnel = (torch.stack(column) for column in zip(*rows, strict=True))
        parts.append(local_schur(scale, mixing, probe.local_weights[name], funnel))
    return lambda idx: torch.stack([part(idx) for part in parts]).sum(0)


def _sized(s: Stationarity) -> tuple[float, str]:
    """The factor a family warning reports for ``s``, and how it says it: the
    full estimate where it is significant, else the pairwise bound."""
    lo, hi = SD_RANGE
    full = _significant(s.marginal_sd_factor, s.marginal_stderr, lo, hi)
    f = s.marginal_sd_factor if full else max(s.variance_bound, 0.0) ** 0.5
    if f == 0:
        return f, "is far below (correlations too close to +-1 to size it)"
    return f, f"is {'about' if full else 'at most'} {f:.2f}x"


def _family_message(
    result: dict[str, Stationarity], failed: list[str], through_locals: list[str], local: list[str]
) -> str:
    sizes = {name: _sized(result[name]) for name in failed}
    parts = []
    for name in sorted(failed, key=lambda n: -abs(math.log(max(sizes[n][0], 1e-9)))):
        s = result[name]
        with_what = []
        if s.correlated_with is not None and abs(s.partial_correlation) > 0.3:
            with_what.append(
                f"partial correlation {s.partial_correlation:+.2f} with '{s.correlated_with}'"
            )
        if name in through_locals:
            with_what.append(
                "correlations with the local sites " + ", ".join(f"'{n}'" for n in local)
            )
        parts.append(
            f"'{name}': the guide's sd {sizes[name][1]} the posterior's marginal sd "
            f"({'; '.join(with_what) or 'correlations'})"
        )
    hierarchical = (
        " For local sites, let each local's guide mean and log sd depend on the globals "
        "(pyro_lfvi.examples.structured.coupled_locals, as the examples' structured_guide "
        "does: a hierarchical scale also changes the locals' spread)."
        if any(name in through_locals for name in failed)
        else ""
    )
    return (
        "the guide's family cannot represent this posterior: its scales are at the ELBO's "
        "optimum, but the ELBO's curvature in the guide's noise shows correlations between "
        "the latents that the guide lacks: "
        + _listing(parts)
        + ". Do not trust these posterior sds (a mean-field guide comes out too narrow on "
        "correlated latents). Use a guide with correlations, such as "
        "pyro.infer.autoguide.AutoMultivariateNormal or a flow, or reparameterise the "
        "model so that the latents are closer to independent."
        + hierarchical
        + " Then check again (pyro_lfvi.check_stationarity)."
    )
