r"""An end-of-training check that the ratio estimator kept up with the guide.

LFVI trains its ratio estimator online, a few simulations per step, while the
guide moves. If the estimator lags (too few updates, a learning rate that has
decayed), the guide follows a blurred log ratio, and the posterior comes out
wrong with every per-step figure looking healthy. :func:`check_ratio_estimator`
measures that lag directly. At the final guide it draws a fixed bank of
simulations, exactly as a training step would, and continues training a
*copy* of the estimator's network on part of them (the param store and the
optimiser are not touched). It then compares the estimator's own training
loss of the copy and of the online network on held-out simulations:

.. math::

    \text{gain} = \mathcal{L}_{\text{online}} - \mathcal{L}_{\text{refined}},
    \qquad \mathcal{L} = \mathbb{E}\big[\log(1 + e^{-s(x, z, \beta)})\big]
    + \mathbb{E}\big[\log(1 + e^{s(x', z, \beta)})\big],

for the contrastive estimator, with :math:`(x, z, \beta)` a joint draw and
:math:`x'` from another draw. For the likelihood estimator
(:class:`~pyro_lfvi.LikelihoodEstimator`) the copy trains on its own loss, the
negative log density of the simulations, but both are scored by the log loss
of telling which of two particles' latents simulated :math:`x`,

.. math::

    \mathcal{L} = \mathbb{E}\big[\log(1 + e^{-(\log q_\phi(x \mid z, \beta)
    - \log q_\phi(x \mid z', \beta'))})\big],

with :math:`(z', \beta')` another particle's: the exact likelihood minimises
it, and it sees only how the density moves with the latents, which is all
the posterior sees (a better fit of the data's shape alone, which more
training at one guide always finds, leaves it unchanged). A log-ratio error
:math:`\epsilon` in each of the two terms costs about :math:`\epsilon^2/4`
near chance, as in the contrastive loss, so the same threshold applies.
For the paper's joint classifier :math:`\mathcal{L}` is its scoring rule
(Eq. 5 of [1] with the default log loss) on the model's simulations against
the data with the guide's draws.
An estimator that had kept up gains nothing (early stopping keeps the copy
at the online network when further training does not help). A gain above
``threshold`` warns (:class:`~pyro_lfvi.LFVIWarning`): the estimator was
still far from what the same network learns from simulations at this guide.
For the likelihood estimator a gain alone does not warn: the copy's density
keeps improving at the final guide in ways the posterior hardly sees, so the
check also reweights the guide's draws of the globals by how much the copy
raises the likelihood of the observed data
(:func:`~pyro_lfvi.reweighting.posterior_shift`), trained to the end (no
early stop once ahead), and warns only if a global's mean would move by more
than :data:`SHIFT_TOLERANCE` of its sds or its sd by a factor outside
:data:`SD_TOLERANCE`, or if the weights' effective sample size falls below
:data:`MIN_EFFECTIVE` (a change of shape; a model without globals: the gain
alone decides).

The contrastive and the likelihood estimators' copies, trained to the end,
stay in the result (``log_ratios``):
:func:`~pyro_lfvi.reweighted_globals`, and :func:`~pyro_lfvi.to_inference_data`
where the check found a lag (by default), importance-resample the guide's
globals by how much the copy raises the likelihood of the observed data, for a
posterior that follows the copy rather than the estimator that lagged.

The default threshold, 0.02 nats, is a log-ratio error of about 0.3 (for a
logit error :math:`\epsilon` near chance each of the two terms grows by about
:math:`\epsilon^2 / 8`). An estimator that kept up gains nothing, up to the
noise of the held-out loss (a few thousandths), so the threshold sits well
above that noise; README ("Diagnostics") gives the gains measured on fits
that met their accuracy targets and on fits that missed them.

On the same simulations the check also tests Bartlett's information identity
on the contrastive estimator's network or the likelihood estimator's density,
coordinate by coordinate (:mod:`pyro_lfvi.curvature`), and warns when the sd error it predicts
(``sd_factor``: a curvature that is not the score's variance) leaves the
accuracy target of the issue "Posteriors you can trust on real simulators",
sds within 0.8-1.25x. Where the ELBO self-normalises the ratio, the identity
is tested on the self-normalised logit, the one the guide follows: a logit
may carry any function of the latents alone, which the normaliser takes off
(with a normaliser that averages each particle's own simulations, the raw logit).
The joint classifier's logit is not a log likelihood
in the latents alone, so it gets the lag test only.

References

[1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
    Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017)
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from .contrastive import ContrastiveNetwork, ContrastiveRatioEstimator
from .curvature import Curvature, Normalizer, curvature
from .errors import LFVIWarning
from .joint import JointRatioEstimator
from .likelihood import LikelihoodEstimator, MixtureDensityNetwork
from .refined_copy import (
    Checked,
    DensityLogLikelihood,
    bank,
    contrastive_log_ratios,
    mean_loss,
    online_network,
    train_copy,
)
from .reweighting import LogRatio, PosteriorShift, posterior_shift
from .validation import check_positive_int, check_positive_number

if TYPE_CHECKING:
    from .elbo import LFVI
    from .pairing import PairedJoints

__all__ = ["EstimatorCheck", "check_ratio_estimator"]

GAIN_THRESHOLD = 0.02
"""Contrastive-loss gain (nats) of the refined copy above which the check warns."""

DECIDED = 3.0
"""The copy stops training once its validation loss is this many thresholds
below the online network's: the held-out comparison will almost surely warn,
and more updates would only cost time (except the likelihood estimator's, whose
lag is judged by what it moves; a contrastive copy stopped early trains on when
:func:`~pyro_lfvi.reweighted_globals` asks for it)."""

SD_TOLERANCE = (0.8, 1.25)
"""Posterior sd ratios that the curvature test accepts (the accuracy targets of
the issue "Posteriors you can trust on real simulators")."""

SHIFT_TOLERANCE = 0.25
"""Move of a global's posterior mean, in its sds, that the likelihood estimator's
lag test accepts (half the accuracy target of 0.5 sds); see
:func:`~pyro_lfvi.reweighting.posterior_shift`."""

MIN_EFFECTIVE = math.exp(-0.25)
"""Effective sample size, as a fraction of the guide's draws, below which the
likelihood estimator's lag test counts the reweighting as a change of the
posterior whatever its means and sds do (a change of shape, as when two modes
blur): that of a Normal whose mean moves by 0.5 sds, the accuracy target."""


@dataclass
class EstimatorCheck:
    """What :func:`check_ratio_estimator` measured.

    :param float online_loss: the online network's training loss (contrastive,
        or the joint classifier's scoring rule) on the held-out simulations
        (``log 4`` is chance for both with the log loss).
    :param float refined_loss: that of the copy trained further on the bank
        (training stops early once the copy is clearly ahead, so the gain of
        a flagged estimator is a lower bound).
    :param int updates: optimiser updates of the copy before early stopping.
    :param int simulations: simulated data points in the bank.
    :param bool warned: whether the check warned (gain above the threshold, or
        a coordinate in ``failed``).
    :param dict curvature: Bartlett's identity by latent coordinate
        (:class:`~pyro_lfvi.curvature.Curvature`; empty when not measured, as
        for the joint classifier).
    :param dict shift: for the likelihood estimator, how each global coordinate's
        posterior would move under the refined copy's density
        (:class:`~pyro_lfvi.reweighting.PosteriorShift`; empty otherwise).
    :param callable log_ratios: returns the online network's and the refined
        copy's log ratios at the observed data, as the ELBO evaluates them, for
        :func:`~pyro_lfvi.reweighted_globals` (None for the joint classifier). A contrastive
        copy that stopped early, clearly ahead, trains to the end on its first call.
    :param float threshold: the gain above which the check counts a lag.
    """

    online_loss: float
    refined_loss: float
    updates: int
    simulations: int
    warned: bool
    curvature: dict[str, Curvature] = field(default_factory=dict)
    shift: dict[str, PosteriorShift] = field(default_factory=dict)
    log_ratios: Callable[[], tuple[LogRatio, LogRatio]] | None = field(
        default=None, repr=False, compare=False
    )
    threshold: float = GAIN_THRESHOLD

    @property
    def failed(self) -> list[str]:
        """Coordinates whose ``sd_factor`` leaves
        :data:`~pyro_lfvi.estimator_check.SD_TOLERANCE`."""
        low, high = SD_TOLERANCE
        return [name for name, c in self.curvature.items() if not low < c.sd_factor < high]

    @property
    def moved(self) -> list[str]:
        """Global coordinates whose posterior would move under the refined copy
        by more than :data:`~pyro_lfvi.estimator_check.SHIFT_TOLERANCE` sds, or
        whose sd would change by a factor outside
        :data:`~pyro_lfvi.estimator_check.SD_TOLERANCE`."""
        low, high = SD_TOLERANCE
        return [
            name
            for name, m in self.shift.items()
            if not (abs(m.mean) <= SHIFT_TOLERANCE and low < m.sd_factor < high)
        ]

    @property
    def reshaped(self) -> bool:
        """Whether the reweighting by the refined copy leaves an effective sample
        size below :data:`~pyro_lfvi.estimator_check.MIN_EFFECTIVE` of the draws."""
        return any(m.effective < MIN_EFFECTIVE for m in self.shift.values())

    @property
    def gain(self) -> float:
        """``online_loss - refined_loss``: how much the estimator lagged."""
        return self.online_loss - self.refined_loss


def _online(elbo: LFVI) -> tuple[Checked, nn.Module]:
    """The trained estimator and its online network, or a ``ValueError``."""
    estimator = elbo.estimator
    if estimator is not None and not isinstance(estimator, Checked):
        raise ValueError(
            "Expected LFVI with the contrastive ratio estimator, the likelihood estimator or "
            "the joint classifier, "
            f"actual estimator {type(estimator).__name__}: the check does not know its "
            "training loss"
        )
    net = online_network(estimator)
    if estimator is None or net is None:
        raise ValueError(
            "Expected a trained LFVI instance, actual one whose ratio estimator has not been "
            "trained yet; train first (svi.step or pyro_lfvi.fit), then check"
        )
    return estimator, net


def _normalizer(
    estimator: Checked, net: ContrastiveNetwork, pair: PairedJoints
) -> Normalizer | None:
    """The self-normaliser the ELBO subtracts from ``net``'s logit, if it does and
    leaves each particle's own simulations out; one that averages them (``"all"``,
    or two particles) depends on more than the latents, so that even an exact ratio
    would break the identity once normalised, and the raw logit is tested instead."""
    if not isinstance(estimator, ContrastiveRatioEstimator) or not estimator.normalizes(pair):
        return None
    if not estimator.leaves_own_out(pair.num_particles):
        return None

    return functools.partial(estimator.log_normalizer, net)


def check_ratio_estimator(
    elbo: LFVI,
    model: Callable[..., object],
    guide: Callable[..., object],
    *args: Any,
    num_batches: int = 64,
    max_updates: int = 2000,
    lr: float = 1e-3,
    threshold: float = GAIN_THRESHOLD,
    warn: bool = True,
    **kwargs: Any,
) -> EstimatorCheck:
    """
    Check, after training, that LFVI's ratio estimator (the contrastive
    default, the likelihood estimator or the paper's joint classifier) kept up
    with the guide (see
    :mod:`pyro_lfvi.estimator_check`); warn (:class:`~pyro_lfvi.LFVIWarning`)
    if it did not. :func:`~pyro_lfvi.fit` calls it at the end of training
    (unless ``check=False``). Neither the param store, the optimiser nor the
    random stream after the call are changed.

    Example::

        >>> import pyro
        >>> from pyro_lfvi import LFVI, fit
        >>> from pyro_lfvi.estimator_check import check_ratio_estimator
        >>> from pyro_lfvi.examples import AR1Series
        >>> pyro.set_rng_seed(0)
        >>> pyro.clear_param_store()
        >>> problem = AR1Series()
        >>> elbo = LFVI()
        >>> svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        >>> _ = fit(svi, problem.data, num_steps=5, progress=False)
        >>> result = check_ratio_estimator(
        ...     elbo, problem.model, problem.guide, problem.data, num_batches=8, max_updates=10,
        ...     warn=False,
        ... )
        >>> result.simulations
        512

    :param LFVI elbo: the trained LFVI instance.
    :param callable model: the model, as given to SVI.
    :param callable guide: the guide, as given to SVI.
    :param args: arguments of model and guide.
    :param int num_batches: training steps' worth of simulations in the bank
        (default 64; three quarters train the copy, the rest is split between
        early stopping and the comparison).
    :param int max_updates: most updates of the copy (default 2000), each on
        :data:`~pyro_lfvi.refined_copy.PAIRS_PER_UPDATE` steps' worth of simulations.
    :param float lr: Adam's learning rate for the copy (default 1e-3).
    :param float threshold: gain in nats above which to warn (default 0.02).
    :param bool warn: warn when the gain exceeds the threshold (default True).
    :param kwargs: keyword arguments of model and guide.
    :rtype: EstimatorCheck
    """
    num_batches = check_positive_int("num_batches", num_batches)
    if num_batches < 8:
        raise ValueError(f"Expected num_batches >= 8, actual {num_batches}")
    max_updates = check_positive_int("max_updates", max_updates)
    lr = check_positive_number("lr", lr)
    threshold = check_positive_number("threshold", threshold)
    estimator, online = _online(elbo)
    pairs = bank(elbo, model, guide, args, kwargs, num_batches)
    coordinates: dict[str, Curvature] = {}
    density: DensityLogLikelihood | None = None
    if isinstance(online, ContrastiveNetwork):
        coordinates = curvature(online, pairs, _normalizer(estimator, online, pairs[0]))
    elif isinstance(online, MixtureDensityNetwork):
        assert isinstance(estimator, LikelihoodEstimator)
        density = DensityLogLikelihood(estimator, online)
        coordinates = curvature(density, pairs)  # a density: nothing to normalise
    held = max(2, num_batches // 8)
    train, val, test = pairs[: -2 * held], pairs[-2 * held : -held], pairs[-held:]

    stop_ahead = DECIDED * threshold if density is None else None
    refined, updates, ahead = train_copy(estimator, online, train, val, max_updates, lr, stop_ahead)
    online_loss = mean_loss(estimator, online, test)
    refined_loss = mean_loss(estimator, refined, test)
    sims = sum(int(p.p_observed[p.roles.observed[0]].shape[:2].numel()) for p in pairs)
    shift: dict[str, PosteriorShift] = {}
    log_ratios: Callable[[], tuple[LogRatio, LogRatio]] | None = None
    if density is not None:  # what the copy's density would do to the posterior
        # The online network as it is now, should training go on after the check.
        snapshot = copy.deepcopy(online)
        refined = snapshot if refined is online else refined
        assert isinstance(refined, MixtureDensityNetwork)
        assert isinstance(snapshot, MixtureDensityNetwork)
        copied = DensityLogLikelihood(density.estimator, refined)
        shift = posterior_shift(density.at_data, copied.at_data, pairs)
        kept = (DensityLogLikelihood(density.estimator, snapshot).at_data, copied.at_data)

        def log_ratios() -> tuple[LogRatio, LogRatio]:
            return kept

    elif isinstance(estimator, ContrastiveRatioEstimator):
        log_ratios = contrastive_log_ratios(
            estimator, online, refined, ahead, train, val, max_updates, lr
        )
    result = EstimatorCheck(
        online_loss,
        refined_loss,
        updates,
        sims,
        False,
        coordinates,
        shift,
        log_ratios=log_ratios,
        threshold=threshold,
    )
    elbo.estimator_check = result
    # The likelihood estimator's lag matters only if it would move the posterior.
    lagged = result.gain > threshold and (
        density is None or not result.shift or bool(result.moved) or result.reshaped
    )
    if warn and lagged:
        result.warned = True
        message = _lag_message(estimator, result)
        warnings.warn(message, LFVIWarning, stacklevel=2)
    if warn and result.failed:
        result.warned = True
        warnings.warn(_curvature_message(result, sims), LFVIWarning, stacklevel=2)
    return result


def _moves(result: EstimatorCheck) -> str:
    """The largest predicted moves, for the likelihood estimator's lag warning."""
    shift = result.shift
    if not result.moved and result.reshaped:
        effective = next(iter(shift.values())).effective
        return (
            f"reweighted by the copy's likelihood of the data, only {100 * effective:.0f}% of "
            "the guide's draws of the globals carry weight: its shape would change (its "
            "modes, its tails) even where its means and sds stay"
        )
    if not result.moved:
        return "its means and sds can both be off"
    parts = [
        f"'{name}' {shift[name].mean:+.2f} sds, sd {shift[name].sd_factor:.2f}x"
        for name in sorted(
            result.moved,
            key=lambda n: -abs(math.log(shift[n].sd_factor)) - abs(shift[n].mean),
        )[:3]
    ]
    effective = next(iter(shift.values())).effective
    few = (
        f" (only {100 * effective:.1f}% of the draws carry weight: the two likelihoods "
        "differ by more than this can measure)"
        if effective < 0.1
        else ""
    )
    return (
        "reweighted by the copy's likelihood of the data, the guide's draws of the globals "
        "move (mean in guide sds, sd factor): " + "; ".join(parts) + few
    )


_REWEIGHT = (
    "With few data points (a single observation), to_inference_data(..., lfvi=elbo) "
    "importance-resamples the guide's globals by that copy instead (reweight='auto', its "
    "default; README, 'A single observation'); it warns where the weights cannot carry that."
)


def _lag_message(estimator: Checked, result: EstimatorCheck) -> str:
    """The warning for an estimator whose copy gained more than the threshold."""
    sims, online, refined = result.simulations, result.online_loss, result.refined_loss
    if isinstance(estimator, LikelihoodEstimator):
        return (
            f"the likelihood estimator lagged behind the guide: trained further on {sims} "
            f"fresh simulations at the final guide, a copy of its density tells which of two "
            f"particles simulated a data point with a log loss of {refined:.3f} against its "
            f"{online:.3f} (log 2 = {math.log(2):.3f} is chance), so the guide followed a "
            f"likelihood still far from the simulator's. Do not trust the "
            f"posterior: {_moves(result)}. Give the density more updates, "
            f"LikelihoodEstimator(refine_steps={2 * max(1, estimator.refine_steps)}), or train "
            f"for more steps, and train again; then check again. {_REWEIGHT}"
        )
    if isinstance(estimator, JointRatioEstimator):
        return (
            f"the joint classifier lagged behind the guide: trained further on {sims} fresh "
            f"simulations at the final guide, a copy of it reaches a loss of {refined:.3f} "
            f"against its {online:.3f} (log 4 = {math.log(4):.3f} is chance with the log "
            f"loss), so the guide followed a log ratio still far from the classifier's "
            f"optimum. Do not trust the posterior: its globals' means and sds can both be off. "
            f"Try more classifier updates than guide updates, LFVI(discriminator_steps=3, "
            f"discriminator_optim=pyro.optim.Adam({{'lr': 1e-3}})), and train again. If it "
            f"still warns and LFVI chose the joint classifier because a local guide is "
            f"implicit, a local guide with a density (e.g. a Normal) lets LFVI use the "
            f"contrastive estimator, whose end-of-training checks go further. Then check again."
        )
    return (
        f"the ratio estimator lagged behind the guide: trained further on {sims} fresh "
        f"simulations at the final guide, a copy of it reaches a contrastive loss of "
        f"{refined:.3f} against its {online:.3f} (log 4 = {math.log(4):.3f} is chance), so "
        f"the guide followed a blurred likelihood. Do not trust the posterior's shape: it is "
        f"likely too wide or missing structure (modes, correlations). Give the ratio "
        f"estimator faster updates than the guide, e.g. a per-parameter learning rate, "
        f"pyro.optim.ClippedAdam(lambda name: {{'lr': 0.03 if name.startswith('lfvi_ratio') "
        f"else 0.01, 'lrd': ...}}), or more steps, and train again; then check again. "
        f"{_REWEIGHT}"
    )


def _curvature_message(result: EstimatorCheck, sims: int) -> str:
    """The warning for the coordinates in ``result.failed``."""
    parts = []
    for name in result.failed:
        c = result.curvature[name]
        effect = (
            "its curvature there is not positive"
            if math.isinf(c.sd_factor)
            else f"the posterior sd of '{name}' is likely {c.sd_factor:.2f}x the exact one"
        )
        parts.append(
            f"'{name}': curvature {c.curvature:.3g} against score variance "
            f"{c.score_variance:.3g} per data point ({effect})"
        )
    return (
        f"on {sims} fresh simulations at the final guide, the ratio estimator's log "
        "likelihood breaks Bartlett's identity (for an exact one, the score's variance equals "
        "the negative mean curvature): "
        + "; ".join(parts)
        + ". It has not resolved how the data move with these latents at the posterior's "
        "scale, so do not trust their posterior sds. With many data points (the "
        "minibatched regime) spread its training globals further, LFVI(widen=...) "
        "(default 2; try 2 * sqrt(N / 1000) for N data points), and train again with more "
        "steps (a wider spread slows the guide); then check again."
    )
