"""Training diagnostics: warnings that say when LFVI is not working.

:class:`TrainingMonitor` reads LFVI's per-step record and warns, once per kind
and in plain words, when

* the ELBO estimate or the discriminator loss is NaN or infinite;
* the ELBO estimate diverges: the median over the latest window falls far
  below the best earlier window's median;
* the discriminator is **saturated**: it tells simulations from data almost
  perfectly for a whole window, so its ratio estimates are unreliable;
* the discriminator is **useless**: it stays at chance for a whole window
  while the guide's global latents keep moving, so the guide is following
  nothing but its prior.

These two concern the paper's joint classifier. For every estimator it also
warns when, over a whole window (see :func:`~pyro_lfvi.step_checks.pair_checks` for the figures),

* simulations often return NaN or inf (they are dropped from training);
* from the second window on, observed values lie outside the range of the
  model's simulations (a posterior predictive check): the model cannot
  reproduce the data;
* the local posteriors are wider than their prior;
* after the first windows, the guide's globals are still as wide as their
  prior and (for the contrastive estimator) its classifier is near chance
  (:data:`CHANCE_ACCURACY`): the ratio estimator found nothing in the data.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

from .convergence import (
    JITTER_SDS,
    UNCONVERGED_SDS,
    jitter,
    largest_move,
    pooled_sds,
    quarter_means,
)
from .errors import LFVIWarning
from .step_checks import spread_ratios
from .validation import check_positive_int, check_positive_number

__all__ = ["TrainingMonitor"]

CHECKS = (
    "nonfinite_fraction",
    "ppc_outside",
    "local_sd_ratio",
    "prior_sd_ratio",
    "wide_global_ratio",
)
"""The per-step figures of :func:`~pyro_lfvi.step_checks.pair_checks` (and of
the estimator) that the monitor watches."""


WIDE_GLOBALS = 1.5
"""A global's guide this many times as wide as its prior (unconstrained) warns,
if its draws also fall beyond the prior's (:data:`BEYOND_PRIOR`)."""

BEYOND_PRIOR = 3.0
"""...as often as this many times a prior draw would (pooled over the window;
:attr:`~pyro_lfvi.step_checks.GlobalSpreads.beyond_prior`). One observation
can leave a posterior wider than its prior, but inside the prior's range: the
reference posterior of sbibm's slcp is 1.69x as wide as its prior in one
coordinate, unconstrained, bimodal near the ends of its uniform prior. A guide
blown up by a learning rate too high spills beyond that range (a Normal guide
1.5x as wide as a Normal prior and centred on it: 4.8 with 64 prior draws a
step, 29 with 2,048)."""

CHANCE_ACCURACY = 0.6
"""Below this balanced accuracy (0.5 is chance) the contrastive estimator tells
joint from shuffled simulations no better than chance: only then does a guide
as wide as its prior mean that it found no dependence of the data on the
globals. (The data may leave a posterior as wide as the prior: sbibm's
two_moons, whose classifier reaches 0.77.)"""


_PAIR_RULES: list[tuple[str, float, int, str, Callable[[float, int, int], str]]] = [
    (
        "nonfinite_fraction",
        0.05,
        1,
        "nonfinite_simulations",
        lambda v, w, n: (
            f"{100 * v:.0f}% of the simulations over the last {w} steps returned NaN or inf; "
            f"they are left out of the ratio estimator's training, which then never sees "
            f"those parameter values. Narrow the prior to where the simulator works, or make "
            f"the simulator return finite values."
        ),
    ),
    (
        "ppc_outside",
        0.05,
        2,
        "ppc",
        lambda v, w, n: (
            f"posterior predictive check failed: {100 * v:.0f}% of the observed values "
            f"lie outside the range of the model's simulations at the current guide (last {w} "
            f"steps). The model cannot reproduce the data (check the simulator, its units and "
            f"the prior with a prior predictive check), or the guide has not reached them: "
            f"train longer. Do not trust the posterior."
        ),
    ),
    (
        "local_sd_ratio",
        1.25,
        1,
        "wide_locals",
        lambda v, w, n: (
            f"the local posteriors are {v:.2f}x as wide as their prior (median over data "
            f"points, last {w} steps); data cannot widen a posterior, so the local ratio is "
            f"poorly estimated. Train longer, or give the local guide a smaller initial scale."
        ),
    ),
    (
        "wide_global_ratio",
        WIDE_GLOBALS,
        2,
        "wide_globals",
        lambda v, w, n: (
            f"the guide of a global latent is {v:.1f}x as wide as its prior (unconstrained, "
            f"last {w} steps): data cannot make a posterior wider than its prior, so training "
            f"has gone wrong, most often through a learning rate too high for the guide. "
            f"Lower it (e.g. pyro.optim.ClippedAdam with lrd < 1, so that it decays) and "
            f"train again. Do not trust the posterior."
        ),
    ),
    (
        "prior_sd_ratio",
        0.9,
        3,
        "at_prior",
        lambda v, w, n: (
            f"after {n} steps every global latent's guide is still as wide as its prior "
            f"(spread ratio {v:.2f}): the ratio estimator found no dependence of the data on "
            f"them. If the data should be informative, train longer or with more simulations "
            f"per step (num_particles), or give the estimator an embedding suited to the data "
            f"(ContrastiveRatioEstimator(embedding=...))."
        ),
    ),
]
"""(history key, threshold, windows before it applies, warning kind, advice)."""


def _median_mad(values: Sequence[float]) -> tuple[float, float]:
    med = statistics.median(values)
    return med, statistics.median(abs(v - med) for v in values)


class MonitorState(TypedDict):
    """What :meth:`TrainingMonitor.state_dict` returns: plain data only."""

    window: int
    saturation: float
    chance_band: float
    moving_sds: float
    spread_factor: float
    warned: list[str]
    elbo: list[float]
    acc: list[float]
    centre: list[list[float]]
    spread: list[list[float]]
    best_median: float | None
    best_mad: float
    joint: bool
    checks: dict[str, list[float]]
    count: int
    guide_var: list[list[float]]
    prior_var: list[list[float]]
    beyond_prior: list[list[float]]


class TrainingMonitor:
    """
    Watches a stream of LFVI step records and warns once per problem.

    :param int window: steps per diagnostic window (default 200).
    :param float saturation: accuracy above which a step counts as saturated
        (default 0.99); a window with 95% such steps, or whose mean accuracy
        exceeds it, warns.
    :param float chance_band: a window whose mean accuracy lies within this of
        0.5 counts as chance (default 0.01). Near the optimum the discriminator
        *should* be near chance; only chance together with a guide that keeps
        moving is suspicious.
    :param float moving_sds: how far the centre of the guide's globals must
        move during a chance window to warn, in units of their spread at the
        window's start (default 3).
    :param float spread_factor: or by what factor their spread must grow or
        shrink during that window (default 4).
    """

    def __init__(
        self,
        window: int = 200,
        saturation: float = 0.99,
        chance_band: float = 0.01,
        moving_sds: float = 3.0,
        spread_factor: float = 4.0,
    ) -> None:
        self.window = check_positive_int("window", window)
        if not 0.5 < check_positive_number("saturation", saturation) <= 1.0:
            raise ValueError(f"Expected saturation in (0.5, 1], actual {saturation!r}")
        self.saturation = float(saturation)
        if not 0.0 < check_positive_number("chance_band", chance_band) < 0.5:
            raise ValueError(f"Expected chance_band in (0, 0.5), actual {chance_band!r}")
        self.chance_band = float(chance_band)
        self.moving_sds = check_positive_number("moving_sds", moving_sds)
        if check_positive_number("spread_factor", spread_factor) <= 1.0:
            raise ValueError(f"Expected spread_factor > 1, actual {spread_factor!r}")
        self.spread_factor = float(spread_factor)
        self.warned: set[str] = set()
        self._elbo: list[float] = []
        self._acc: list[float] = []
        self._centre: list[list[float]] = []
        self._spread: list[list[float]] = []
        self._best_median: float | None = None
        self._best_mad = 0.0
        self.joint = True
        self.final_jitter: float | None = None
        """The largest jitter that :meth:`check_convergence` measured, in sds."""
        self._checks: dict[str, list[float]] = {}
        # Per step, the variances of step_checks.global_variances, pooled per window.
        self._guide_var: list[list[float]] = []
        self._prior_var: list[list[float]] = []
        self._beyond: list[list[float]] = []
        # Steps recorded; the lists above keep only the last one or two windows.
        self._count = 0

    def state_dict(self) -> MonitorState:
        """
        The monitor's settings and everything it has recorded, as plain data
        (dicts, lists, str, float, bool, None) that ``torch.load(...,
        weights_only=True)`` accepts; :meth:`load_state_dict` restores it.

        :rtype: dict
        """
        return {
            "window": self.window,
            "saturation": self.saturation,
            "chance_band": self.chance_band,
            "moving_sds": self.moving_sds,
            "spread_factor": self.spread_factor,
            "warned": sorted(self.warned),
            "elbo": list(self._elbo),
            "acc": list(self._acc),
            "centre": [list(c) for c in self._centre],
            "spread": [list(s) for s in self._spread],
            "best_median": self._best_median,
            "best_mad": self._best_mad,
            "joint": self.joint,
            "checks": {key: list(values) for key, values in self._checks.items()},
            "count": self._count,
            "guide_var": [list(v) for v in self._guide_var],
            "prior_var": [list(v) for v in self._prior_var],
            "beyond_prior": [list(v) for v in self._beyond],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """
        Restore what :meth:`state_dict` returned. The state is checked whole
        before anything is assigned, so a bad one leaves the monitor as it was.

        :param dict state: a :meth:`state_dict`.
        :raises ValueError: if a key is missing or a value has the wrong type.
        """
        # These came later: an older state counts the steps it lists and has
        # no variances to pool.
        later = ("count", "guide_var", "prior_var", "beyond_prior")
        missing = [key for key in self.state_dict() if key not in state and key not in later]
        if missing:
            raise ValueError(
                f"Expected a TrainingMonitor state with keys {sorted(self.state_dict())}, "
                f"actual one missing {missing}"
            )
        try:
            window = state["window"]
            if isinstance(window, bool) or not isinstance(window, int) or window < 1:
                raise ValueError(f"Expected the window to be an int >= 1, actual {window!r}")
            numbers = {
                key: float(state[key])
                for key in ("saturation", "chance_band", "moving_sds", "spread_factor", "best_mad")
            }
            # The constructor checks the settings (a ValueError for bad ones).
            type(self)(
                window=window,
                saturation=numbers["saturation"],
                chance_band=numbers["chance_band"],
                moving_sds=numbers["moving_sds"],
                spread_factor=numbers["spread_factor"],
            )
            warned = {str(kind) for kind in state["warned"]}
            elbo = [float(v) for v in state["elbo"]]
            acc = [float(v) for v in state["acc"]]
            centre = [[float(v) for v in row] for row in state["centre"]]
            spread = [[float(v) for v in row] for row in state["spread"]]
            best = state["best_median"]
            best_median = None if best is None else float(best)
            joint = state["joint"]
            checks = {str(k): [float(v) for v in vs] for k, vs in state["checks"].items()}
            guide_var = [[float(v) for v in row] for row in state.get("guide_var", [])]
            prior_var = [[float(v) for v in row] for row in state.get("prior_var", [])]
            beyond = [[float(v) for v in row] for row in state.get("beyond_prior", [])]
            count = state.get("count", len(elbo))
            if isinstance(count, bool) or not isinstance(count, int) or count < len(elbo):
                raise ValueError(
                    f"Expected the step count to be an int >= {len(elbo)}, actual {count!r}"
                )
        except (TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"Expected a TrainingMonitor state of plain numbers: {err}") from err
        if not isinstance(joint, bool):
            raise ValueError(f"Expected the state's 'joint' to be a bool, actual {joint!r}")
        self.window = window
        self.saturation = numbers["saturation"]
        self.chance_band = numbers["chance_band"]
        self.moving_sds = numbers["moving_sds"]
        self.spread_factor = numbers["spread_factor"]
        self.warned = warned
        self._elbo, self._acc = elbo, acc
        self._centre, self._spread = centre, spread
        self._best_median, self._best_mad = best_median, numbers["best_mad"]
        self.joint = joint
        self._checks = checks
        self._guide_var, self._prior_var, self._beyond = guide_var, prior_var, beyond
        self._count = count

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            warnings.warn(message, LFVIWarning, stacklevel=4)

    def update(
        self,
        step: int,
        entry: dict[str, float],
        centre: Sequence[float] = (),
        spread: Sequence[float] = (),
        guide_var: Sequence[float] = (),
        prior_var: Sequence[float] = (),
        beyond_prior: Sequence[float] = (),
    ) -> None:
        """
        Record one step.

        :param int step: the step's number.
        :param dict entry: its record (see :attr:`~pyro_lfvi.LFVI.history`).
        :param centre: the mean over particles of each component of the
            guide's globals.
        :param spread: their sd over particles.
        :param guide_var: per component, unconstrained, their variance over
            particles, and ``prior_var`` that of prior draws
            (:func:`~pyro_lfvi.step_checks.global_variances`). Pooled over
            the window, they replace the step's ``wide_global_ratio`` and
            ``prior_sd_ratio``, whose extremes over components are biased
            with few particles.
        :param beyond_prior: per component, how often the guide's draws fell
            beyond the prior's (:class:`~pyro_lfvi.step_checks.GlobalSpreads`);
            a wide component warns only if it also lies beyond the prior
            (:data:`~pyro_lfvi.diagnostics.BEYOND_PRIOR`). Without it, any wide
            component warns.
        """
        elbo, loss = entry["elbo"], entry["discriminator_loss"]
        if not (math.isfinite(elbo) and math.isfinite(loss)):
            self._warn(
                "nonfinite",
                f"LFVI step {step}: the ELBO estimate ({elbo}) or the discriminator loss "
                f"({loss}) is not finite. Training has diverged: lower the learning rate, "
                f"clip gradients (pyro.optim.ClippedAdam(clip_norm=...)) or check the "
                f"simulator's output range. Do not trust the posterior.",
            )
            return
        self._elbo.append(elbo)
        for key in CHECKS:
            if key in entry:
                self._checks.setdefault(key, []).append(entry[key])
        if "discriminator_accuracy" in entry:  # classifiers only
            self._acc.append(entry["discriminator_accuracy"])
        self._centre.append(list(centre))
        self._spread.append(list(spread))
        self._guide_var.append(list(guide_var))
        self._prior_var.append(list(prior_var))
        self._beyond.append(list(beyond_prior))
        self._count += 1
        if self._count % self.window == 0:
            self._check_window(step)
        if len(self._elbo) >= 2 * self.window:  # memory bounded over long runs
            del self._elbo[: -self.window], self._acc[: -self.window]
            del self._centre[: -self.window], self._spread[: -self.window]
            del self._guide_var[: -self.window], self._prior_var[: -self.window]
            del self._beyond[: -self.window]
            for values in self._checks.values():
                del values[: -self.window]

    def _window_mean(self, key: str) -> float | None:
        values = self._checks.get(key, [])[-self.window :]
        return statistics.mean(values) if len(values) >= self.window // 2 else None

    def _pooled_ratios(self) -> list[float] | None:
        """
        Per component of the globals, the guide's spread over the prior's
        from variances pooled over the window (None without enough steps).
        Each step's ratio from a few particles is noisy, and the largest or
        smallest of several noisy ratios is biased: with two particles, ten
        components of a guide exactly as wide as its prior read 1.9x at most and
        0.12x at least, on average.
        """
        w = self.window
        rows = list(zip(self._guide_var[-w:], self._prior_var[-w:], strict=True))
        width = len(rows[-1][0]) if rows else 0
        rows = [(g, p) for g, p in rows if len(g) == len(p) == width]
        if width == 0 or len(rows) < w // 2:
            return None
        guide = [statistics.fmean(g[j] for g, _ in rows) for j in range(width)]
        prior = [statistics.fmean(p[j] for _, p in rows) for j in range(width)]
        return spread_ratios(guide, prior)

    def _pooled_beyond(self, width: int) -> list[float] | None:
        """Per component, the mean over the window of ``beyond_prior`` (None
        without enough steps that recorded it for ``width`` components)."""
        w = self.window
        rows = [row for row in self._beyond[-w:] if len(row) == width]
        if width == 0 or len(rows) < w // 2:
            return None
        return [statistics.fmean(row[j] for row in rows) for j in range(width)]

    def _check_pairs(self, step: int) -> None:
        """The warnings on the figures of :func:`~pyro_lfvi.step_checks.pair_checks`."""
        w = self.window
        pooled = self._pooled_ratios()
        for key, threshold, min_steps, kind, advice in _PAIR_RULES:
            value = self._window_mean(key)
            if pooled is not None and key == "prior_sd_ratio":
                value = min(pooled)
            elif pooled is not None and key == "wide_global_ratio":
                beyond = self._pooled_beyond(len(pooled))
                wide = pooled  # wide, and beyond the prior's range where that was measured
                if beyond is not None:
                    wide = [r for r, b in zip(pooled, beyond, strict=True) if b > BEYOND_PRIOR]
                value = max(wide, default=0.0)
            if kind == "at_prior" and not self.joint and self._acc:
                if statistics.mean(self._acc[-w:]) >= CHANCE_ACCURACY:
                    continue
            if value is not None and value > threshold and self._count >= min_steps * w:
                self._warn(kind, f"LFVI step {step}: " + advice(value, w, self._count))

    def check_convergence(self) -> float | None:
        """
        At the end of training: warn (:class:`~pyro_lfvi.LFVIWarning`) if the
        mean of the guide's global latents was still moving, by more than
        ``UNCONVERGED_SDS`` of their sds between the first and the last
        quarter of the last window of steps. :func:`~pyro_lfvi.fit` and
        :func:`~pyro_lfvi.to_inference_data` call it.

        Point-mass globals (a ``Delta`` guide, as in variational EM) have no sd
        to measure a move against and are not judged.

        Also warn if their mean jittered by more than ``JITTER_SDS`` of their
        sds over the steps the monitor keeps, one to two windows
        (:func:`~pyro_lfvi.convergence.jitter`): the final parameters are then
        one draw of that jitter. The largest jitter is
        kept in ``final_jitter`` (None when not measured).

        :returns: that largest move in sds over the global latents' components,
            or None when there are fewer than 20 steps or no globals to judge.
        """
        centre, spread = self._centre[-self.window :], self._spread[-self.window :]
        if len(centre) < 20 or not centre[-1] or not spread[-1]:
            return None
        c0, c1, _, _ = quarter_means(centre, spread)
        shift = largest_move(c0, c1, pooled_sds(spread))
        if shift is None:
            return None
        if shift > UNCONVERGED_SDS:
            self._warn(
                "not_converged",
                f"LFVI has not converged after {self._count} steps: the mean of the guide's "
                f"global latents moved by {shift:.1f} of their sds over the last {len(centre)} "
                f"steps, and the posterior is still on its way. Train longer (ideally with a "
                f"learning rate that decays, e.g. pyro.optim.ClippedAdam with lrd < 1), and do "
                f"not trust the posterior until its globals settle.",
            )
        # every step kept (one to two windows)
        jitters = [j for j in jitter(self._centre, self._spread) if j is not None]
        self.final_jitter = max(jitters) if jitters else None
        if self.final_jitter is not None and self.final_jitter > JITTER_SDS:
            self._warn(
                "jitter",
                f"LFVI's guide did not settle after {self._count} steps: over the last "
                f"{len(self._centre)} steps the mean of one of the guide's global latents "
                f"jittered by {self.final_jitter:.2f} of its sds around its trend, so the final "
                f"parameters are one draw of that jitter and the posterior means can be off by "
                f"twice as much. The learning rate at the end is too large for a posterior this "
                f"narrow (with minibatches the gradient's noise grows with the number of data "
                f"points). Let it decay to a tenth of its final value (pyro.optim.ClippedAdam "
                f"with a smaller lrd) over twice the steps, and check again.",
            )
        return shift

    def _check_window(self, step: int) -> None:
        w = self.window
        elbo, acc = self._elbo[-w:], self._acc[-w:]
        median, mad = _median_mad(elbo)
        # The contrastive estimator's ELBO is known up to a constant that moves with
        # its training distribution, so only the joint classifier's can diverge.
        if self._best_median is not None and self.joint:
            drop = self._best_median - median
            if drop > 10 * (self._best_mad + mad) and drop > 1.0:
                self._warn(
                    "diverging",
                    f"LFVI step {step}: the ELBO estimate is diverging: its median over the "
                    f"last {w} steps is {median:.4g}, down from {self._best_median:.4g}. "
                    f"Lower the learning rate or clip gradients, and do not trust the "
                    f"posterior until the ELBO settles.",
                )
        if self._best_median is None or median > self._best_median:
            self._best_median, self._best_mad = median, mad
        self._check_pairs(step)
        if not self.joint:
            return
        saturated_steps = sum(a > self.saturation for a in acc)
        if saturated_steps >= 0.95 * w or statistics.mean(acc) > self.saturation:
            self._warn(
                "saturated",
                f"LFVI step {step}: the discriminator is saturated: it told simulations "
                f"from data apart with accuracy {statistics.mean(acc):.3f} over the last "
                f"{w} steps. Its log ratios are then unreliable and the guide gets little "
                f"signal. Check that the model can reproduce the data (a prior predictive "
                f"check), and with few data points in many dimensions give the "
                f"discriminator summary statistics, LFVI(summary=...), so it cannot "
                f"memorise the data.",
            )
        centre, spread = self._centre[-w:], self._spread[-w:]
        if centre[0] and spread[0] and abs(statistics.mean(acc) - 0.5) < self.chance_band:
            c0, c1, s0, s1 = quarter_means(centre, spread)
            shift = largest_move(c0, c1, s0) or 0.0
            growth = max(
                abs(math.log(max(sb, 1e-12) / max(sa, 1e-12)))
                for sa, sb in zip(s0, s1, strict=False)
            )
            if shift > self.moving_sds or growth > math.log(self.spread_factor):
                moved = f"centre by {shift:.1f} sds, spread by a factor {math.exp(growth):.1f}"
                self._warn(
                    "useless",
                    f"LFVI step {step}: the discriminator is at chance (accuracy "
                    f"{statistics.mean(acc):.3f} over the last {w} steps) while the guide's "
                    f"global latents kept moving ({moved}): the guide follows "
                    f"its prior, not the data. Give the discriminator more capacity or a "
                    f"larger learning rate, or check that the observed sites reach it.",
                )
