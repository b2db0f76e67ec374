"""Likelihood-free variational inference as a :class:`pyro.infer.ELBO`."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.optim import PyroOptim
from torch import nn

from .antithetic import AntitheticMessenger
from .compat import ELBOModule
from .contrastive import ContrastiveRatioEstimator
from .controls import GlobalSummary, StepObjectives, TrainingControls
from .diagnostics import TrainingMonitor
from .discriminator import Summary
from .errors import LFVIWarning, ModelStructureError
from .handlers import name_implicit_sites
from .history import History
from .implicit import ImplicitSite
from .joint import JointRatioEstimator
from .likelihood import LikelihoodEstimator
from .pairing import PairedJoints, pair_joints, point_log_prob
from .ratio import RatioEstimator, frozen_weights
from .ratio_losses import RatioLoss, log_loss, resolve_ratio_loss
from .roles import (
    SiteRoles,
    classify_sites,
    deepest_plate,
    dist_of,
    plate_nesting,
    trace_guide,
    trace_model,
    value_of,
)
from .step_checks import global_variances, pair_checks
from .validation import (
    check_nonnegative_int,
    check_positive_int,
    check_positive_number,
    check_sizes,
)

if TYPE_CHECKING:
    from .estimator_check import EstimatorCheck

__all__ = ["LFVI"]

_PARTICLE_PLATE = "_lfvi_particles"
CONTRASTIVE_WIDEN = 2.0
"""The default ``widen`` of the contrastive estimator: it learns the ratio
wherever its training latents are, so they stay near the guide (where the ELBO
evaluates it); wider spreads put most simulations where a simulator explodes
(an AR(1) series at 5x: the posterior mean 3 sds off)."""
SIMULATIONS_PER_STEP = 256
"""With the default ``num_particles``, the contrastive estimator gets at least
this many simulations per step (particles times the minibatch size), except
with a single observation (see :data:`SINGLE_OBSERVATION_PARTICLES`)."""
SINGLE_OBSERVATION_PARTICLES = 64
"""The default ``num_particles`` of the contrastive estimator with one
observation (N = 1), where ``widen`` defaults to 1. The ratio estimator learns
from its number of updates more than from their size: sbibm's 10^5 simulator
calls as 1,560 steps of 64 rather than 390 steps of 256 bring two_moons' C2ST
from 0.90-0.93 to 0.68-0.75. Widening spreads the training globals around the
particles' mean, which lies between the modes of a multimodal posterior."""


@contextlib.contextmanager
def _rollback_on_error() -> Iterator[None]:
    """Remove params first registered by a call that then fails."""
    store = pyro.get_param_store()
    before = set(store.keys())
    try:
        yield
    except BaseException:
        for name in set(store.keys()) - before:
            del store[name]
        raise


class LFVIModule(ELBOModule):
    """:class:`~pyro.infer.elbo.ELBOModule` that also owns the discriminator."""

    elbo: LFVI

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
        if "discriminator" not in self._modules and self.elbo.discriminator is not None:
            self.discriminator = self.elbo.discriminator
        if self.elbo.estimator is not None and "ratio_estimator" not in self._modules:
            self.ratio_estimator = nn.ModuleDict(self.elbo.estimator.modules())
        if len(self.elbo.prior_classifiers) != len(getattr(self, "prior_classifiers", ())):
            self.prior_classifiers = nn.ModuleDict(self.elbo.prior_classifiers)
        return loss


class LFVI(TrainingControls, ELBO):
    r"""
    Likelihood-free variational inference [1] for hierarchical implicit models.

    The model may contain :class:`~pyro_lfvi.ImplicitSite` sites (simulators
    without a density) as its likelihood and as priors of local latents; the
    guide's local sites may be implicit too. Global latents need an explicit,
    reparameterised guide; their prior may be implicit, in which case
    :math:`\log p(\beta)` is estimated by a second, small ratio estimator
    (see :mod:`pyro_lfvi.global_ratio`). LFVI maximises

    .. math::

        \mathcal{L} = \mathbb{E}_{q(\beta)}[\log p(\beta) - \log q(\beta)]
            + \sum_{n=1}^{N} \mathbb{E}_{q(\beta) q(z_n \mid x_n, \beta)}
              [r(x_n, z_n, \beta)]

    where :math:`r \approx \log p(x_n, z_n \mid \beta) - \log q(z_n \mid x_n,
    \beta)` up to a term in :math:`x_n` alone comes from a ratio estimator
    (``estimator=``). The default, where the local latents have explicit priors
    and guides, is :class:`~pyro_lfvi.ContrastiveRatioEstimator`: the local
    log densities enter exactly and a classifier trained on simulations alone
    (joint against shuffled) estimates :math:`\log p(x_n \mid z_n, \beta)`; it
    cannot memorise the observations and works with one of them (see
    :mod:`pyro_lfvi.contrastive`). Otherwise (implicit local priors or guides,
    one particle, point-mass globals, adversarial model parameters, or options
    of the joint classifier given) LFVI uses the paper's **joint classifier**,
    described in the rest of this docstring:
    :math:`r` is the logit of a discriminator trained, in
    the same step and by the same optimiser, to tell model simulations
    :math:`(x'_n, z'_n, \beta)`, :math:`z'_n \sim p(z \mid \beta)`,
    :math:`x'_n \sim p(x \mid z'_n, \beta)` (label 1) from data with guide
    draws :math:`(x_n, z_n, \beta)` (label 0) with a proper scoring rule
    :math:`\mathcal{D}`. One backward pass carries both gradients: the ELBO's
    reaches the guide through :math:`\beta` and :math:`z_n` only, never the
    discriminator's weights, and :math:`\mathcal{D}`'s reaches the
    discriminator only. With a subsampled data plate the sum is scaled by
    :math:`N/M`.

    A latent is *local* when it lies inside the data plate: the outermost plate
    shared by all observed sites. Every other latent is *global*.

    Example::

        >>> import math
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> import torch
        >>> from pyro.distributions import constraints
        >>> from pyro.infer import SVI
        >>> from pyro_lfvi import LFVI, ImplicitSite
        >>> pyro.set_rng_seed(0)
        >>> pyro.clear_param_store()
        >>> x = 3.0 + torch.randn(500)
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(x), subsample_size=100) as i:
        ...         pyro.sample("x", ImplicitSite(lambda m: m + torch.randn_like(m), mu),
        ...                     obs=x[i])
        >>> def guide(x):
        ...     loc = pyro.param("loc", torch.tensor(0.0))
        ...     scale = pyro.param("scale", torch.tensor(1.0),
        ...                        constraint=constraints.positive)
        ...     pyro.sample("mu", dist.Normal(loc, scale))
        >>> elbo = LFVI()
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        >>> for step in range(3):  # a few thousand steps to converge
        ...     loss = svi.step(x)
        >>> math.isfinite(loss), len(elbo.history)
        (True, 3)

    **How the ratio is estimated.** When every local site has an explicit
    prior and an explicit guide density, their log densities enter the logit
    as known terms, :math:`r = \log p(z_n \mid \beta) - \log q(z_n \mid
    x_n, \beta) + s(x_n, z_n, \beta)`, and the network :math:`s` only learns
    the simulator's part, :math:`\log p(x_n \mid z_n, \beta) - \log q(x_n)`.
    When a local prior has a density but its guide is implicit (a network fed
    with noise), a Normal fitted at each step to ``contrast_draws`` extra draws
    of the guide stands in for :math:`\log q(z_n \mid x_n, \beta)` in the
    known part, and the network learns the remainder. Otherwise the network
    estimates the whole ratio, as in the paper.

    **Defaults, and why.** A plain implementation overestimates the posterior
    sd by 1.5-1.8x on a conjugate Normal model (N = 1000); with these
    defaults the ratio is 1.03-1.10 (``benchmarks/accuracy.py``).

    * ``num_particles=8, vectorize_particles=True``: the discriminator learns
      how the data move with :math:`\beta` only from draws of :math:`\beta`
      that differ; eight per step, in one vectorised pass, give it that
      contrast within every batch and cut the variance of the ELBO gradient.
    * ``widen=5``: the discriminator trains on globals spread five times
      further from the particles' mean (in the unconstrained space of each
      prior's support) than the guide draws them. The optimal ratio does not
      depend on how the globals that both of its sides share are distributed,
      and the wider spread shows the classifier how the data change with the
      globals over a range that does not shrink with the posterior. Without
      it (``widen=1``) the posterior sd comes out ~1.5x too wide.
    * ``self_normalize=True``: the true ratio satisfies
      :math:`\mathbb{E}_{q}[e^{r}] = 1` for every :math:`\beta`, so the
      estimate is normalised over the minibatch (over the data points' ``x``
      for each point's own ``z`` when the locals are explicit). This removes
      the part of the logit that depends on :math:`\beta` alone, which the
      classifier cannot estimate to the 1/N precision that the sum over N
      data points demands; without it the posterior sd is off by 2-5x.
    * ``hidden_sizes=(64, 64)`` with ELU: smooth input gradients, enough
      capacity for the example models. Inputs are standardised with a fixed
      affine map fitted to the first batch.
    * ``ratio_loss="log"``: the logistic loss estimates the log ratio itself;
      the hinge loss only its sign.

    The optimiser is yours: use a learning rate that decays (e.g.
    :class:`pyro.optim.ClippedAdam` with ``lrd``) to settle within a fraction
    of a posterior sd, as you would with an exact likelihood.

    :param int num_particles: draws of the guide per step (default: 8 for the
        joint classifier; for the contrastive estimator enough for 256
        simulations per step, between 8 and 256, and 64 with one observation).
    :param bool vectorize_particles: draw them in one vectorised pass, in a
        plate left of ``max_plate_nesting`` (default True). Simulators must
        then broadcast over a leading batch dim, as :class:`ImplicitSite`
        arranges for vectorised simulators.
    :param int max_plate_nesting: bound on nested plates, guessed from one run
        of model and guide if omitted.
    :param discriminator: your own ratio estimator, an :class:`torch.nn.Module`
        with ``forward(observed, local, global_)`` returning ``(P, M)`` logits
        (see :mod:`pyro_lfvi.discriminator`); default a
        :class:`~pyro_lfvi.MLPDiscriminator` built at the first step.
    :type discriminator: torch.nn.Module or None
    :param hidden_sizes: hidden widths of the default discriminator.
    :type hidden_sizes: sequence of int
    :param ratio_loss: ``"log"`` (Eq. 5), ``"hinge"`` (Appendix D) or a
        callable ``(logits_p, logits_q) -> scalar``.
    :type ratio_loss: str or callable
    :param str discriminator_name: the name under which the discriminator's
        weights live in Pyro's param store (default ``"lfvi_discriminator"``).
    :param float widen: spread factor of the globals the ratio estimator trains
        on (default 2 for the contrastive estimator, 1 with one observation,
        5 for the joint classifier; 1 turns widening off; needs ``num_particles >= 2``
        and vectorised particles).
    :param bool self_normalize: normalise the estimated ratio over the
        minibatch (default True; needs at least two data points per step).
    :param bool diagnostics: warn (:class:`~pyro_lfvi.LFVIWarning`) when the
        ELBO is not finite or diverges, or the discriminator is saturated or
        useless (see :mod:`pyro_lfvi.diagnostics`). Default True.
    :param callable callback: called after every training step as
        ``callback(step, entry)`` with the entry appended to :attr:`history`.
    :param callable debug_model: the same model with an explicit likelihood
        (same site names), for checking the ratio estimator as in the paper's
        Appendix F. Each step then also records ``debug_ratio_slope`` and
        ``debug_ratio_corr``: the regression slope and correlation of the
        learned per-point log ratio on the true one, both centred over the
        particles at each data point (which cancels the unknown
        :math:`\log q(x_n)`). A slope below 1 means the estimator is
        attenuated and the posterior will come out too wide. Needs two or
        more vectorised particles.
    :param int discriminator_steps: discriminator updates per step (default
        1). Without ``discriminator_optim`` the SVI optimiser makes one joint
        update of guide and discriminator, so only 0 or 1 is allowed; ``0``
        keeps the discriminator's weights fixed (pass a trained
        ``discriminator``). With ``discriminator_optim``, LFVI first makes
        this many discriminator-only updates, each on fresh simulations, and
        the SVI optimiser then moves only the guide. Use ``k > 1`` when the
        discriminator lags behind a guide that moves fast (its accuracy in
        :attr:`history` hovers near 0.5 while the ELBO still changes).
    :param discriminator_optim: an optimiser for the discriminator alone
        (e.g. ``pyro.optim.Adam({"lr": 1e-3})``), so that it can take its own
        learning rate, clipping and number of steps.
    :type discriminator_optim: pyro.optim.PyroOptim or None
    :param int warmup_steps: for the first this many steps only the
        discriminator trains and the guide stays where it was initialised
        (default 0). Use it when the guide starts far from the posterior and
        an untrained ratio estimator would send it further away.
    :param int contrast_draws: for a local site with an explicit prior and an
        implicit guide (e.g. a :class:`~pyro_lfvi.NoiseNetwork`), the
        number of extra guide draws per step to which a Normal is fitted per
        data point; its log density stands in for the unknown
        :math:`\log q(z_n \mid x_n, \beta)` in the known part of the ratio,
        and the discriminator learns the rest (default 16; 0 leaves the whole
        local ratio to the discriminator, as in the paper).
    :param float point_spread: with a point-mass guide on the globals
        (``AutoDelta``: variational EM), the sd, in the unconstrained space of
        each prior's support, of the globals the discriminator trains on
        around the point (default 0.5).
    :param str model_params: how parameters that the model registers and the
        guide does not (``pyro.param`` in a simulator, a generator's weights)
        are trained: ``None`` (default) leaves them alone and warns once;
        ``"adversarial"`` keeps the model's simulations differentiable (the
        simulator must be ``reparameterized=True``) and adds the estimated
        :math:`\mathrm{KL}(p \,\|\, q)` of the simulated against the data
        joints to the loss, so the parameters move the simulations towards the
        data. For variational EM, make them globals with a prior and use
        ``AutoDelta`` instead.
    :param callable summary: summary statistics of the observed sites for the
        default discriminator: ``summary(observed)`` receives a dict of rows of
        shape ``(P, M, d)`` per observed site and returns a dict of
        ``(P, M, k)`` tensors (e.g. each group's mean). The ratio is then that
        of the summaries, exact when they are sufficient. Use it when each data
        point has many dimensions and there are few points: the raw-data
        discriminator can memorise them and saturate (LFVI warns). On the
        hierarchical example (10 observations per group, 40 groups), the
        group mean cuts the local RMSE from 0.15-0.75 to 0.11-0.12 posterior
        sds over seeds 0-2.
    :param bool retain_graph: passed to ``backward`` (default None).
    :param estimator: ``None`` (default: contrastive where possible, else the
        joint classifier), ``"contrastive"``, ``"joint"``, ``"likelihood"``
        (:class:`~pyro_lfvi.LikelihoodEstimator`, a neural likelihood; with
        one observation the most accurate on sbibm's multimodal tasks), or a
        :class:`~pyro_lfvi.RatioEstimator` instance such as
        ``ContrastiveRatioEstimator(embedding=my_net)``.
    :type estimator: str or RatioEstimator or None
    :param int history_size: the most rows :attr:`history` keeps (default
        100,000); a longer run keeps evenly spaced steps, and always the
        newest (see :class:`~pyro_lfvi.History`).
    :param bool antithetic: draw the vectorised particles in mirrored pairs,
        :math:`\epsilon` and :math:`-\epsilon`, at every guide site built on
        Normal noise (default False; needs an even number of vectorised
        particles, four or more, else it is off; see
        :mod:`pyro_lfvi.antithetic`). Each particle keeps the guide's
        distribution; the pairs cancel the minibatch noise that otherwise
        keeps the guide's scales of the globals from settling when N is
        large (thousands of data points in minibatches).

    References

    [1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
        Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017),
        https://arxiv.org/abs/1702.08896
    """

    def __init__(
        self,
        num_particles: int | None = None,
        vectorize_particles: bool = True,
        max_plate_nesting: float = float("inf"),
        discriminator: nn.Module | None = None,
        hidden_sizes: Sequence[int] = (64, 64),
        ratio_loss: str | RatioLoss = "log",
        discriminator_name: str = "lfvi_discriminator",
        widen: float | None = None,
        self_normalize: bool = True,
        diagnostics: bool = True,
        callback: Callable[[int, dict[str, float]], None] | None = None,
        debug_model: Callable[..., object] | None = None,
        discriminator_steps: int = 1,
        discriminator_optim: PyroOptim | None = None,
        warmup_steps: int = 0,
        contrast_draws: int = 16,
        point_spread: float = 0.5,
        model_params: str | None = None,
        summary: Summary | None = None,
        retain_graph: bool | None = None,
        estimator: str | RatioEstimator | None = None,
        history_size: int = 100_000,
        antithetic: bool = False,
    ) -> None:
        if check_positive_int("history_size", history_size) < 2:
            raise ValueError(f"Expected history_size >= 2, actual {history_size!r}")
        history = History(history_size)
        self._auto_particles = num_particles is None
        num_particles = check_positive_int(
            "num_particles", 8 if num_particles is None else num_particles
        )
        if isinstance(estimator, str):
            if estimator not in ("contrastive", "joint", "likelihood"):
                raise ValueError(
                    f"Expected estimator to be 'contrastive', 'joint', 'likelihood', a "
                    f"RatioEstimator or None (choose by the model), actual {estimator!r}"
                )
            self._estimator_choice: str | None = estimator
            self.estimator: RatioEstimator | None = None
        elif estimator is None or isinstance(estimator, RatioEstimator):
            self._estimator_choice = None if estimator is None else "given"
            self.estimator = estimator
        else:
            raise ValueError(
                f"Expected estimator to be 'contrastive', 'joint', 'likelihood', a "
                f"RatioEstimator or None, actual {type(estimator).__name__}"
            )
        self._joint_options = [
            name
            for name, given in (
                ("discriminator", discriminator is not None),
                ("discriminator_optim", discriminator_optim is not None),
                ("discriminator_steps", discriminator_steps != 1),
                ("ratio_loss", ratio_loss != "log"),
                ("self_normalize", not self_normalize),
            )
            if given
        ]
        if estimator in ("contrastive", "likelihood") and self._joint_options:
            raise ValueError(
                f"Expected no options of the joint classifier with estimator={estimator!r}, "
                f"actual {', '.join(self._joint_options)}: drop them, or use "
                f"estimator='joint'"
            )
        if isinstance(estimator, RatioEstimator):
            ignored = [
                name
                for name, given in (
                    ("discriminator", discriminator is not None),
                    ("hidden_sizes", tuple(hidden_sizes) != (64, 64)),
                    ("ratio_loss", ratio_loss != "log"),
                    ("self_normalize", not self_normalize),
                    ("summary", summary is not None),
                )
                if given
            ]
            if ignored:
                raise ValueError(
                    f"Expected the estimator's own options on the estimator object, actual "
                    f"{', '.join(ignored)} given to LFVI as well, where a given estimator "
                    f"would ignore them: pass them to {type(estimator).__name__}(...)"
                )
        self._is_setup = False
        self.discriminator_steps = check_nonnegative_int("discriminator_steps", discriminator_steps)
        self.warmup_steps = check_nonnegative_int("warmup_steps", warmup_steps)
        if discriminator_optim is not None and not isinstance(discriminator_optim, PyroOptim):
            raise ValueError(
                f"Expected discriminator_optim to be a pyro.optim optimiser (e.g. "
                f"pyro.optim.Adam({{'lr': 1e-3}})) or None, actual "
                f"{type(discriminator_optim).__name__}"
            )
        if discriminator_optim is None and self.discriminator_steps > 1:
            raise ValueError(
                f"Expected discriminator_steps <= 1 without discriminator_optim (the SVI "
                f"optimiser makes one joint update per step), actual {discriminator_steps}; "
                f"pass discriminator_optim=pyro.optim.Adam(...) for several updates per step"
            )
        if self.discriminator_steps == 0 and discriminator is None:
            raise ValueError(
                "Expected a trained discriminator= with discriminator_steps=0 (its weights "
                "stay fixed), actual None; the default discriminator starts untrained"
            )
        self.discriminator_optim = discriminator_optim
        self.point_spread = check_positive_number("point_spread", point_spread)
        if model_params not in (None, "adversarial"):
            raise ValueError(
                f"Expected model_params to be None or 'adversarial', actual {model_params!r}; "
                f"for variational EM give the parameters a prior and use AutoDelta"
            )
        self.model_params = model_params
        if summary is not None and not callable(summary):
            raise ValueError(
                f"Expected summary to be a callable on the observed rows or None, actual "
                f"{summary!r}"
            )
        if summary is not None and discriminator is not None:
            raise ValueError(
                "Expected summary only with the default discriminator, actual a custom "
                "discriminator too: apply the summary inside your discriminator's forward"
            )
        self.summary = summary
        self._model_params_checked = False
        self.prior_classifiers: dict[str, nn.Module] = {}
        self._estimator_state: Mapping[str, Any] | None = None
        self.contrast_draws = check_nonnegative_int("contrast_draws", contrast_draws)
        if self.contrast_draws == 1:
            raise ValueError(
                "Expected contrast_draws >= 2 (a spread needs two draws) or 0 (off), actual 1"
            )
        if discriminator is not None and not isinstance(discriminator, nn.Module):
            raise ValueError(
                f"Expected discriminator to be a torch.nn.Module or None, actual "
                f"{type(discriminator).__name__}"
            )
        hidden = check_sizes("hidden_sizes", hidden_sizes)
        if not isinstance(discriminator_name, str) or not discriminator_name:
            raise ValueError(
                f"Expected discriminator_name to be a non-empty str, actual {discriminator_name!r}"
            )
        self.ratio_loss: RatioLoss = resolve_ratio_loss(ratio_loss)
        self._auto_widen = widen is None
        self.widen = check_positive_number("widen", 5.0 if widen is None else widen)
        if self.widen < 1.0:
            raise ValueError(f"Expected widen >= 1 (1 turns widening off), actual {widen!r}")
        self.self_normalize = bool(self_normalize)
        if not isinstance(antithetic, bool):
            raise ValueError(f"Expected antithetic to be True or False, actual {antithetic!r}")
        self.antithetic = antithetic
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
        )
        self._discriminator_arg = discriminator
        self.hidden_sizes = hidden
        self.discriminator_name = discriminator_name
        #: One dict per training step: the ELBO estimate (``elbo``), the ratio
        #: estimator's loss (``discriminator_loss``) and accuracy, and the figures
        #: that the diagnostics watch; :func:`~pyro_lfvi.plot_history` draws it.
        #: A :class:`~pyro_lfvi.History`: reads like a list of dicts, in bounded memory.
        self.history = history
        self.monitor: TrainingMonitor | None = TrainingMonitor() if diagnostics else None
        #: What the last :func:`~pyro_lfvi.check_ratio_estimator` measured (an
        #: :class:`~pyro_lfvi.EstimatorCheck`; None before the first check), for
        #: :func:`~pyro_lfvi.to_inference_data`'s reweighting.
        self.estimator_check: EstimatorCheck | None = None
        if callback is not None and not callable(callback):
            raise ValueError(f"Expected callback to be callable or None, actual {callback!r}")
        self.callback = callback
        if debug_model is not None and not callable(debug_model):
            raise ValueError(
                f"Expected debug_model to be a callable model or None, actual {debug_model!r}"
            )
        if debug_model is not None and not (vectorize_particles and num_particles >= 2):
            raise ValueError(
                "Expected num_particles >= 2 with vectorize_particles=True for debug_model, "
                f"actual num_particles={num_particles}, vectorize_particles={vectorize_particles}"
            )
        self.debug_model = debug_model

    @property
    def discriminator(self) -> nn.Module | None:
        """The joint classifier's network, once built (None with other estimators)."""
        if isinstance(self.estimator, JointRatioEstimator):
            return self.estimator.discriminator
        return None

    def __call__(self, model: Callable[..., object], guide: Callable[..., object]) -> LFVIModule:
        # Pyro annotates ELBOModule's model and guide as nn.Module; plain callables
        # work too (Trace_ELBO()(model, guide) takes them).
        return LFVIModule(model, guide, self)  # type: ignore[arg-type]

    def _get_trace(
        self,
        model: Callable[..., object],
        guide: Callable[..., object],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> NoReturn:
        raise NotImplementedError(
            "LFVI pairs two runs of the model with one of the guide and has no single "
            "(model_trace, guide_trace) pair to return"
        )

    # -- pairing ---------------------------------------------------------------

    def _setup(
        self,
        model: Callable[..., object],
        guide: Callable[..., object],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """At the first step: plate nesting, the ratio estimator and the particle count."""
        if self._is_setup:
            return
        # A side run: it must not consume the random stream (resumed runs).
        with poutine.block(), torch.random.fork_rng():
            g = trace_guide(name_implicit_sites(guide), args, kwargs)
            m = trace_model(name_implicit_sites(model), g, args, kwargs)
        needed = plate_nesting(g, m)
        if self.max_plate_nesting == float("inf"):
            self.max_plate_nesting = needed + 1
        else:
            given = int(self.max_plate_nesting) - int(
                self.vectorize_particles and self.num_particles > 1
            )
            if given < needed:
                raise ModelStructureError(
                    f"Expected max_plate_nesting >= {needed} (plate "
                    f"'{deepest_plate(g, m)}' sits at dim {-needed}), actual {given}: "
                    f"raise it, or leave it out to have LFVI count the plates"
                )
        roles = classify_sites(m, g, None)
        if self.estimator is None and self._estimator_choice == "likelihood":
            self.estimator = LikelihoodEstimator(
                hidden_sizes=self.hidden_sizes, summary=self.summary
            )
        if self.estimator is None:
            reason = self._joint_reason(roles, m, g)
            if reason is None:
                self.estimator = ContrastiveRatioEstimator(
                    hidden_sizes=self.hidden_sizes, summary=self.summary
                )
            elif self._estimator_choice == "contrastive":
                raise ValueError(
                    f"Expected a model that the contrastive estimator can handle, actual "
                    f"one where {reason}: use estimator='joint' (or leave the default)"
                )
            else:
                self.estimator = JointRatioEstimator(
                    self._discriminator_arg,
                    self.hidden_sizes,
                    self.ratio_loss,
                    self.discriminator_name,
                    self.self_normalize,
                    self.summary,
                )
        if self._estimator_state is not None:  # from a checkpoint loaded before
            self.estimator.load_state_dict(self._estimator_state)
            self._estimator_state = None
        joint = isinstance(self.estimator, JointRatioEstimator)
        single = roles.full_size == 1
        if self._auto_widen and not joint:
            self.widen = 1.0 if single else CONTRASTIVE_WIDEN
        if self._auto_particles:
            if not joint and single:
                self.num_particles = SINGLE_OBSERVATION_PARTICLES
            elif not joint:
                # Enough simulations per step for the classifier to contrast.
                wanted = -(-SIMULATIONS_PER_STEP // max(1, roles.num_points))
                self.num_particles = int(min(max(wanted, 8), 256))
                if self.antithetic:
                    self.num_particles += self.num_particles % 2  # mirrored pairs
            else:
                self.num_particles = 8
        if not joint and (self.num_particles < 2 or not self.vectorize_particles):
            raise ValueError(
                f"Expected num_particles >= 2 with vectorize_particles=True for the "
                f"contrastive estimator (it pairs each particle's latents with another "
                f"particle's simulations), actual num_particles={self.num_particles}, "
                f"vectorize_particles={self.vectorize_particles}; or use estimator='joint'"
            )
        if self.monitor is not None:
            self.monitor.joint = joint
        if joint and self.self_normalize and roles.num_points < 2:
            warnings.warn(
                "LFVI's joint classifier normalises its ratio over the data points of a "
                "minibatch, and this model has one data point per step, so that is off: "
                "the globals' posterior may come out several times too wide. Use the "
                "default contrastive estimator (estimator='contrastive') if the local "
                "latents have explicit priors and guides, or minibatches of two or more.",
                LFVIWarning,
                stacklevel=4,
            )
        self._is_setup = True

    def _joint_reason(
        self, roles: SiteRoles, model_trace: poutine.Trace, guide_trace: poutine.Trace
    ) -> str | None:
        """Why this run needs the paper's joint classifier, or None."""
        if self._estimator_choice == "joint":
            return "estimator='joint' was asked for"
        for name in roles.local:
            if isinstance(model_trace.nodes[name]["fn"], ImplicitSite):
                return f"local site '{name}' has an implicit prior"
            if isinstance(guide_trace.nodes[name]["fn"], ImplicitSite):
                return f"local site '{name}' has an implicit guide"
        if self.model_params == "adversarial":
            return "model parameters are trained adversarially"
        if not self.vectorize_particles or (not self._auto_particles and self.num_particles < 2):
            return "it needs two or more vectorised particles"
        # An autoguide's point masses sit on transforms of auxiliary draws
        # (AutoNormal's '<name>_unconstrained', AutoDiagonalNormal's joint latent):
        # a distribution over the globals, not variational EM.
        auxiliary = any(
            site["type"] == "sample" and (site["infer"] or {}).get("is_auxiliary")
            for site in guide_trace.nodes.values()
        )
        for name in roles.global_:
            if isinstance(guide_trace.nodes[name]["fn"], dist.Delta) and not auxiliary:
                return f"global site '{name}' has a point-mass guide (variational EM)"
        if self._joint_options:
            return f"options of the joint classifier were given ({', '.join(self._joint_options)})"
        return None

    def _max_nesting(
        self,
        model: Callable[..., object],
        guide: Callable[..., object],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> int:
        self._setup(model, guide, args, kwargs)
        # ELBO.__init__ (or _setup) added one for the particle plate.
        return int(self.max_plate_nesting) - 1

    def _pair(
        self,
        model: Callable[..., object],
        guide: Callable[..., object],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        mirror: AntitheticMessenger | None = None,
    ) -> list[PairedJoints]:
        """The paired joints of one step; ``mirror`` (a messenger over the
        vectorised particle plate, as :func:`~pyro_lfvi.check_stationarity`
        passes for any count of at least four; with an odd count the last
        particle is drawn unmirrored) draws the guide's particles in mirrored
        pairs in place of ``antithetic``'s own messenger."""
        self._setup(model, guide, args, kwargs)
        if self.vectorize_particles and self.num_particles > 1:
            dim = -self._max_nesting(model, guide, args, kwargs) - 1
            plate = pyro.plate(_PARTICLE_PLATE, self.num_particles, dim=dim)
            particles = plate(guide)
            # The contrastive estimator pairs each particle with others than
            # its mirror image (P / 2 away): mirroring needs an even P >= 4.
            mirrored = self.antithetic and self.num_particles >= 4 and self.num_particles % 2 == 0
            if mirror is not None:
                particles, mirrored = mirror(particles), True
            elif mirrored:
                particles = AntitheticMessenger(dim, self.num_particles)(particles)
            pair = pair_joints(
                plate(model),
                particles,
                args,
                kwargs,
                _PARTICLE_PLATE,
                self.num_particles,
                self.widen,
                self.contrast_draws,
                self.point_spread,
                self.model_params == "adversarial",
                allow_nonfinite=not isinstance(self.estimator, JointRatioEstimator),
            )
            pair.mirrored = mirrored
            return [pair]
        return [
            pair_joints(
                model,
                guide,
                args,
                kwargs,
                contrast_draws=self.contrast_draws,
                point_spread=self.point_spread,
                model_grad=self.model_params == "adversarial",
            )
            for _ in range(self.num_particles)
        ]

    # -- objectives ------------------------------------------------------------

    def load_estimator_state(self, state: Mapping[str, Any]) -> None:
        """Restore the ratio estimator's state outside the param store
        (:meth:`~pyro_lfvi.RatioEstimator.state_dict`), now or, if the default
        estimator is not built yet, when it is (used by checkpoints)."""
        if self.estimator is not None:
            self.estimator.load_state_dict(state)
        else:
            self._estimator_state = state

    def _objectives(
        self,
        model: Callable[..., object],
        guide: Callable[..., object],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        update: bool = True,
        mirror: AntitheticMessenger | None = None,
    ) -> StepObjectives:
        """The ELBO estimate and every training loss of one step, averaged over
        particles (``mirror``: see :meth:`_pair`)."""
        pairs = self._pair(model, guide, args, kwargs, mirror)
        estimator = self.estimator
        assert estimator is not None
        out = StepObjectives(model_params=pairs[0].model_params)
        stats: dict[str, float] = {}
        for pair in pairs:
            result = estimator.objectives(pair, update=update)
            ratio_loss, pair_stats = result.loss, result.stats
            log_ratio = result.log_ratio
            if not estimator.includes_offsets:
                log_ratio = log_ratio + pair.q_offset
            out.ratio_loss = out.ratio_loss + ratio_loss / len(pairs)
            scale = pair.scale.expand(log_ratio.shape)
            per_point = (scale * log_ratio).sum() / pair.num_particles
            out.elbo = out.elbo + (pair.global_log_ratio + per_point) / len(pairs)
            for name, contrast in pair.prior_contrasts.items():
                classifier = self._prior_classifier(name, contrast.value.shape[-1])
                with frozen_weights(classifier):
                    shape_term = classifier(contrast.value).sum()
                log_prior = contrast.log_reference + shape_term
                out.elbo = out.elbo + log_prior / pair.num_particles / len(pairs)
                out.prior_loss = out.prior_loss + log_loss(
                    classifier(contrast.prior), classifier(contrast.reference)
                ) / len(pairs)
            if self.model_params == "adversarial":
                assert isinstance(estimator, JointRatioEstimator)
                # KL(model || data) over the training joints, differentiated
                # through the simulations into the simulator's parameters.
                kl = estimator.generator_loss(pair)
                out.generator_loss = out.generator_loss + kl / len(pairs)
            # Diagnostics draw on a forked random stream: on or off, the fit is the same.
            with torch.no_grad(), torch.random.fork_rng():
                variances = global_variances(pair)
                pair_stats.update(pair_checks(pair, variances))
                if pair is pairs[0] and self.monitor is not None:
                    out.global_summary = GlobalSummary(*self._global_summary(pair), *variances)
                for key, value in pair_stats.items():
                    stats[key] = stats.get(key, 0.0) + value / len(pairs)
                if self.debug_model is not None and pair is pairs[0]:
                    stats.update(self._debug(log_ratio, pair, args, kwargs))
        out.stats = stats
        return out

    @torch.no_grad()
    def _debug(
        self,
        log_ratio: torch.Tensor,
        pair: PairedJoints,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> dict[str, float]:
        """Compare the learned per-point log ratio with the explicit model's."""
        # _pair has fixed max_plate_nesting, the particle plate included.
        plate = pyro.plate(_PARTICLE_PLATE, self.num_particles, dim=-int(self.max_plate_nesting))
        assert self.debug_model is not None
        model = plate(self.debug_model)
        trace = poutine.trace(poutine.replay(model, trace=pair.q_trace)).get_trace(*args, **kwargs)
        true = pair.q_offset.clone()
        for name in pair.roles.observed:
            site = trace.nodes[name]
            true = true + point_log_prob(dist_of(site), value_of(site), site, pair.lead)
        learned = log_ratio - log_ratio.mean(0, keepdim=True)
        true = true - true.mean(0, keepdim=True)
        slope = float((learned * true).sum() / (true * true).sum().clamp_min(1e-12))
        corr = float(
            (learned * true).sum()
            / ((learned * learned).sum() * (true * true).sum()).sqrt().clamp_min(1e-12)
        )
        return {"debug_ratio_slope": slope, "debug_ratio_corr": corr}

    @staticmethod
    def _global_summary(pair: PairedJoints) -> tuple[list[float], list[float]]:
        """Mean and spread over particles of the guide's globals (for diagnostics)."""
        if not pair.q_global or pair.num_particles < 2:
            return [], []
        values = torch.cat([v.detach() for v in pair.q_global.values()], -1)
        return values.mean(0).tolist(), values.std(0).tolist()

    def _record(self, step_out: StepObjectives) -> None:
        entry = {
            "elbo": float(step_out.elbo.detach()),
            "discriminator_loss": float(step_out.ratio_loss.detach()),
        }
        entry.update(step_out.stats)
        self.history.append(entry)
        step = self.history.num_steps - 1
        if self.monitor is not None:
            self.monitor.update(step, entry, *(step_out.global_summary or ()))
        if self.callback is not None:
            self.callback(step, entry)

    def loss(
        self, model: Callable[..., object], guide: Callable[..., object], *args: Any, **kwargs: Any
    ) -> float:
        """
        :returns: an estimate of the negative ELBO (up to a constant: the
            ratio estimator replaces the implicit log densities). It trains
            nothing and records nothing.
        :rtype: float
        """
        with _rollback_on_error(), torch.no_grad():
            out = self._objectives(model, guide, args, kwargs, update=False)
        return -float(out.elbo.detach())

    def differentiable_loss(
        self, model: Callable[..., object], guide: Callable[..., object], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """
        :returns: the negative ELBO estimate as a tensor whose gradient also
            trains the ratio estimators (and, in adversarial mode, the model's
            parameters); those terms enter with value zero.
        :rtype: torch.Tensor
        """
        with _rollback_on_error():
            self._train_discriminator(model, guide, args, kwargs)
            out = self._objectives(model, guide, args, kwargs)
        self._record(out)
        surrogate = self._surrogate(out)
        # The value is the negative ELBO; the gradient is the surrogate's.
        return surrogate - surrogate.detach() - out.elbo.detach()

    def loss_and_grads(
        self, model: Callable[..., object], guide: Callable[..., object], *args: Any, **kwargs: Any
    ) -> float:
        """
        Compute the negative ELBO estimate and back-propagate both objectives:
        the ELBO's gradient into the guide's parameters, the scoring rule's
        into the ratio estimator's.

        :returns: an estimate of the negative ELBO.
        :rtype: float
        """
        with _rollback_on_error():
            self._train_discriminator(model, guide, args, kwargs)
            out = self._objectives(model, guide, args, kwargs)
            surrogate = self._surrogate(out)
            if surrogate.requires_grad:
                surrogate.backward(retain_graph=self.retain_graph)
        if not self._model_params_checked and self.history.num_steps >= self.warmup_steps:
            self._check_model_params(out.model_params)
        self._record(out)
        return -float(out.elbo.detach())
