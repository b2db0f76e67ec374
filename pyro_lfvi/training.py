"""An optional training loop with a progress bar, and a plot of the training curves.

The plain ``for step in range(n): svi.step(data)`` loop stays first-class:
:func:`~pyro_lfvi.fit` only adds a progress bar showing the ELBO estimate and the
discriminator's accuracy, and :func:`~pyro_lfvi.plot_history` draws ``LFVI.history``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, SupportsFloat, cast

from tqdm.auto import tqdm

from .compat import elbo_of
from .estimator_check import check_ratio_estimator, online_network
from .history import History
from .stationarity import check_stationarity
from .validation import check_positive_int

if TYPE_CHECKING:  # matplotlib is optional and imported when plotting
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["fit", "plot_history"]


class _Steps(Protocol):
    """What :func:`fit` needs: an object with ``step``, such as :class:`pyro.infer.SVI`."""

    def step(self, *args: Any, **kwargs: Any) -> SupportsFloat: ...


def fit(
    svi: _Steps,
    *args: Any,
    num_steps: int,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
    check: bool = True,
    **kwargs: Any,
) -> list[float]:
    """
    Run ``svi.step(*args, **kwargs)`` ``num_steps`` times. At the end, warn
    (:class:`~pyro_lfvi.LFVIWarning`) if the guide's globals were still moving
    (:meth:`~pyro_lfvi.TrainingMonitor.check_convergence`). Also warn if the
    ratio estimator (the contrastive default or the paper's joint classifier)
    lagged behind the guide (:func:`~pyro_lfvi.check_ratio_estimator`, which
    costs 64 steps' worth of simulations and seconds to a minute of training
    of a copy of the estimator). Then warn if the guide's scales had not
    reached a stationary point of the ELBO, or if the guide's family lacks
    correlations that leave its marginals too narrow or wide
    (:func:`~pyro_lfvi.check_stationarity`, 64 steps' worth of particles
    without training).

    Example::

        >>> import pyro
        >>> from pyro_lfvi import LFVI, fit
        >>> from pyro_lfvi.examples import ConjugateNormal
        >>> pyro.set_rng_seed(0)
        >>> pyro.clear_param_store()
        >>> problem = ConjugateNormal()  # model, guide and data
        >>> optim = pyro.optim.Adam({"lr": 0.01})
        >>> svi = pyro.infer.SVI(problem.model, problem.guide, optim, LFVI())
        >>> # 2,000 steps in practice; after 3 the end-of-training check would rightly warn
        >>> losses = fit(svi, problem.data, num_steps=3, progress=False, check=False)
        >>> len(losses)
        3

    :param svi: a :class:`pyro.infer.SVI` (any object with ``step``).
    :param args: arguments of the model and guide.
    :param int num_steps: number of steps.
    :param bool progress: show a tqdm progress bar (default True).
    :param callable callback: called as ``callback(step, loss)`` after each step.
    :param bool check: run the end-of-training checks of the ratio estimator
        and of the guide's scales (default True; their false-alarm rates are
        in README's "Diagnostics").
    :returns: the loss of every step.
    :rtype: list of float
    """
    num_steps = check_positive_int("num_steps", num_steps)
    elbo = elbo_of(svi)
    history = getattr(elbo, "history", None)
    losses: list[float] = []
    bar = tqdm(range(num_steps), disable=not progress, unit="step", desc="LFVI")
    for step in bar:
        loss = float(svi.step(*args, **kwargs))
        losses.append(loss)
        if callback is not None:
            callback(step, loss)
        if progress and (step % 25 == 0 or step == num_steps - 1):
            if history:
                entry = history[-1]
                shown = {"elbo": f"{entry['elbo']:.4g}"}
                if "discriminator_accuracy" in entry:  # classifiers only
                    shown["disc_acc"] = f"{entry['discriminator_accuracy']:.2f}"
                bar.set_postfix(shown)
            else:
                bar.set_postfix(loss=f"{loss:.4g}")
    monitor = getattr(elbo, "monitor", None)
    if monitor is not None:
        monitor.check_convergence()
    model, guide = getattr(svi, "model", None), getattr(svi, "guide", None)
    estimator = getattr(elbo, "estimator", None)
    if not check or model is None or guide is None or estimator is None:
        return losses
    if online_network(estimator) is not None:
        check_ratio_estimator(elbo, model, guide, *args, **kwargs)  # type: ignore[arg-type]
    check_stationarity(elbo, model, guide, *args, **kwargs)  # type: ignore[arg-type]
    return losses


def plot_history(
    history: Sequence[Mapping[str, float]], axes: Sequence[Axes] | None = None
) -> Figure:
    """
    Plot the ELBO estimate, the discriminator loss and its accuracy per step (for
    :class:`~pyro_lfvi.LikelihoodEstimator`, which has no accuracy: the share of
    simulations with NaN or inf).

    Needs matplotlib (``pip install matplotlib``).

    :param history: ``LFVI.history``.
    :param axes: three matplotlib axes to draw on (default: a new figure).
    :returns: the matplotlib figure.
    """
    if not isinstance(history, Sequence) or not all(isinstance(h, Mapping) for h in history):
        raise ValueError(
            f"Expected the training history LFVI.history (a list of dicts, one per step), "
            f"actual {type(history).__name__}"
        )
    if not history:
        raise ValueError("Expected a non-empty training history, actual an empty one")
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plot_history needs matplotlib: pip install matplotlib") from err
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    else:
        # Axes of a SubFigure would fail at tight_layout below, which it lacks.
        fig = cast("Figure", axes[0].figure)
    steps = history.steps if isinstance(history, History) else range(len(history))
    axes[0].plot(steps, [h["elbo"] for h in history])
    axes[0].set(title="ELBO estimate", xlabel="step", yscale="symlog")
    axes[1].plot(steps, [h["discriminator_loss"] for h in history])
    axes[1].set(title="discriminator loss", xlabel="step")
    if "discriminator_accuracy" in history[-1]:
        axes[2].plot(steps, [h["discriminator_accuracy"] for h in history])
        axes[2].axhline(0.5, color="gray", lw=0.8, ls="--")
        axes[2].set(title="discriminator accuracy (0.5 = chance)", xlabel="step", ylim=(0, 1))
    else:  # a likelihood estimator: its fit to the simulations instead
        axes[2].plot(steps, [h["nonfinite_fraction"] for h in history])
        axes[2].set(title="simulations with NaN or inf (fraction)", xlabel="step")
    fig.tight_layout()
    return fig
