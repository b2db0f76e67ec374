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
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence

__all__ = ["LFVIWarning", "TrainingMonitor", "discriminator_accuracy"]


class LFVIWarning(UserWarning):
    """A training diagnostic: LFVI's estimates should not be trusted yet."""


def discriminator_accuracy(
    logits_p: Sequence[float] | object, logits_q: Sequence[float] | object
) -> float:
    """Balanced accuracy of the classifier, counting a zero logit as half right."""
    import torch

    p = torch.as_tensor(logits_p)
    q = torch.as_tensor(logits_q)
    right_p = (p > 0).float() + 0.5 * (p == 0).float()
    right_q = (q < 0).float() + 0.5 * (q == 0).float()
    return float(0.5 * (right_p.mean() + right_q.mean()))


def _column_means(rows: Sequence[Sequence[float]]) -> list[float]:
    return [statistics.mean(col) for col in zip(*rows, strict=False)]


def _median_mad(values: Sequence[float]) -> tuple[float, float]:
    med = statistics.median(values)
    return med, statistics.median(abs(v - med) for v in values)


class TrainingMonitor:
    """
    Watches a stream of LFVI step records and warns once per problem.

    :param int window: steps per diagnostic window (default 200).
    :param float saturation: accuracy above which a step counts as saturated
        (default 0.99); a window with 95% such steps warns.
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
        self.window = window
        self.saturation = saturation
        self.chance_band = chance_band
        self.moving_sds = moving_sds
        self.spread_factor = spread_factor
        self.warned: set[str] = set()
        self._elbo: list[float] = []
        self._acc: list[float] = []
        self._centre: list[list[float]] = []
        self._spread: list[list[float]] = []
        self._best_median: float | None = None
        self._best_mad = 0.0

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
    ) -> None:
        """Record one step; ``centre``/``spread`` describe the guide's globals."""
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
        self._acc.append(entry["discriminator_accuracy"])
        self._centre.append(list(centre))
        self._spread.append(list(spread))
        if len(self._elbo) % self.window == 0:
            self._check_window(step)

    def _check_window(self, step: int) -> None:
        w = self.window
        elbo, acc = self._elbo[-w:], self._acc[-w:]
        median, mad = _median_mad(elbo)
        if self._best_median is not None:
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
        if sum(a > self.saturation for a in acc) >= 0.95 * w:
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
            q = max(1, w // 4)  # average the first and last quarters: single steps are noisy
            c0, c1 = _column_means(centre[:q]), _column_means(centre[-q:])
            s0, s1 = _column_means(spread[:q]), _column_means(spread[-q:])
            shift = max(abs(b - a) / max(sa, 1e-12) for a, b, sa in zip(c0, c1, s0, strict=False))
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
