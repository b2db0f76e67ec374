r"""The probe behind :func:`~pyro_lfvi.check_stationarity`: the guide's base
noise, scaled and mixed by factors that require grad.

A guide site built on Normal noise draws :math:`\theta = \mu + T \epsilon`.
:class:`ScaleProbe` draws instead :math:`\theta = \mu + T (s \odot \epsilon +
C \epsilon)`, with :math:`s = 1` and a strictly lower triangular :math:`C = 0`
across all probed coordinates, so the draw is unchanged but the ELBO's
gradient in :math:`s` and :math:`C` can be taken. For a Gaussian posterior with
precision :math:`\Lambda` (on the probed coordinates, in the guide's base
space) those gradients are :math:`g_j = 1 - (T^\top \Lambda T)_{jj}` and
:math:`g_{jk} = -(T^\top \Lambda T)_{jk}`: they measure

.. math::

    M = T^\top \Lambda T, \qquad M_{jj} = 1 - g_j, \quad M_{jk} = -g_{jk}.

The posterior's covariance in the guide's base space is then
:math:`T M^{-1} T^\top` against the guide's :math:`T T^\top`, which gives the
guide's sd over the posterior's marginal sd in each coordinate, whether the
guide is off because it had not converged (:math:`g_j \neq 0`) or because its
family lacks the posterior's correlations (:math:`g_{jk} \neq 0`; a mean-field
guide at its optimum has :math:`M_{jj} = 1` and too narrow marginals).

References

[1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
    Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.distributions import Distribution, MultivariateNormal, Normal

from .antithetic import AntitheticMessenger, normal_noise

__all__ = [
    "MAX_MIXED",
    "ScaleProbe",
    "coordinate_names",
    "curvature_matrix",
    "local_schur",
    "marginal_factor",
    "marginal_sd_factors",
    "pairwise_variance_bound",
]


def _learned_base(fn: Distribution) -> Normal | MultivariateNormal | None:
    """The Normal noise under ``fn`` (see :func:`~pyro_lfvi.antithetic.normal_noise`)
    when its scale is learned (requires grad), else None."""
    base, _ = normal_noise(fn)
    if isinstance(base, Normal) and base.scale.requires_grad:
        return base
    if isinstance(base, MultivariateNormal) and base.scale_tril.requires_grad:
        return base
    return None


MAX_MIXED = 512
"""Probed coordinates beyond which the check measures the scales only, not the correlations."""


def _scale_matrix(base: Normal | MultivariateNormal) -> torch.Tensor:
    """The matrix that maps one particle's flattened standard Normal noise to
    its deviation from the mean (block diagonal: ``diag(scale)`` or the
    ``scale_tril`` of each batch entry)."""
    if isinstance(base, Normal):
        return torch.diag(base.scale.expand(base.batch_shape)[0].flatten())
    d = base.event_shape[0]
    trils = base.scale_tril.expand((*base.batch_shape, d, d))[0].reshape(-1, d, d)
    return torch.block_diag(*trils.unbind(0))


class ScaleProbe(AntitheticMessenger):
    r"""
    An :class:`~pyro_lfvi.antithetic.AntitheticMessenger` that also maps the
    base noise :math:`\epsilon` of each site outside ``data_plate`` whose base
    Normal has a learned scale to :math:`s \odot \epsilon + C \epsilon_{\le}`:
    ``scales[name]`` holds :math:`s` (ones, one per coordinate right of the
    particle dim) and ``mixing[name]`` :math:`C` (zeros, one row per
    coordinate, one column per coordinate drawn before it in the guide run,
    its own site's included), both requiring grad. The gradients of the ELBO
    in them are :math:`g` of :mod:`pyro_lfvi.stationarity`. ``mixed`` turns
    False (correlations not measured) when a site's particle dim is not its
    leftmost, the guide's sites change between runs, or there are more than
    ``MAX_MIXED`` coordinates.

    The local sites of a data plate that is drawn whole (not subsampled) get
    ``local_scales[name]`` (ones, one per coordinate),
    ``local_mixing[name]`` (zeros, one row per local coordinate, one column per
    global coordinate) and ``local_funnel[name]`` (zeros, the same shape):
    their noise becomes :math:`(s + F \epsilon_\beta) \odot \epsilon + C
    \epsilon_\beta`, so :math:`F` lets each local's spread follow the
    globals (a funnel). ``locals_mixed`` turns False where that does not apply
    (a subsampled plate, a global drawn after a local, a site whose ELBO
    scale is not one number).

    :param int dim: the particle plate's dim (negative).
    :param int size: the number of particles.
    :param str data_plate: the data plate's name (None: no data plate).
    """

    def __init__(self, dim: int, size: int, data_plate: str | None) -> None:
        super().__init__(dim, size)
        self.data_plate = data_plate
        self.scales: dict[str, torch.Tensor] = {}
        self.mixing: dict[str, torch.Tensor] = {}
        self.blocks: dict[str, torch.Tensor] = {}
        self.mixed = True
        self.local_scales: dict[str, torch.Tensor] = {}
        self.local_mixing: dict[str, torch.Tensor] = {}
        self.local_funnel: dict[str, torch.Tensor] = {}
        self.local_weights: dict[str, float] = {}
        self.locals_mixed = True
        self._drawn: list[torch.Tensor] = []  # this guide run's flattened global noise
        self._local_seen = False

    def leaves(self) -> dict[str, torch.Tensor]:
        """Every factor to take the ELBO's gradient in, by key: the site name
        (``scales``), ``"mixing:"``, ``"local:"``, ``"local_mixing:"`` and
        ``"local_funnel:"`` and the site name (the keys :func:`curvature_matrix`
        and :mod:`pyro_lfvi.stationarity` read)."""
        out = dict(self.scales)
        out.update({"mixing:" + name: mix for name, mix in self.mixing.items()})
        for name, local in self.local_scales.items():
            out["local:" + name] = local
            out["local_mixing:" + name] = self.local_mixing[name]
            out["local_funnel:" + name] = self.local_funnel[name]
        return out

    def __enter__(self) -> ScaleProbe:
        self._drawn = []
        self._local_seen = False
        super().__enter__()
        return self

    def _noise_map(
        self, msg: Any, position: int
    ) -> Callable[[torch.Tensor, Distribution], torch.Tensor] | None:
        base = _learned_base(msg["fn"])
        frames = [f for f in msg["cond_indep_stack"] if f.name == self.data_plate]
        if frames:
            return self._local_map(msg, position, frames[0]) if base is not None else None
        if base is None:
            return None
        if self._local_seen:
            self.locals_mixed = False  # a global drawn after a local: its mixing is incomplete
        name = msg["name"]
        shape = (base.batch_shape + base.event_shape)[position + 1 :]
        if name not in self.scales:
            self.scales[name] = torch.ones(
                shape, dtype=base.loc.dtype, device=base.loc.device, requires_grad=True
            )
        scale = self.scales[name]
        self.mixed = self.mixed and position == 0

        def noise_map(noise: torch.Tensor, drawn_from: Distribution) -> torch.Tensor:
            scaled = noise * scale
            if not self.mixed:
                return scaled
            flat = noise.reshape(self.size, -1)
            before = sum(x.shape[1] for x in self._drawn)
            mix = self.mixing.get(name)
            if mix is None and before + flat.shape[1] <= MAX_MIXED:
                mix = self.mixing[name] = flat.new_zeros(
                    (flat.shape[1], before + flat.shape[1]), requires_grad=True
                )
            if mix is None or mix.shape != (flat.shape[1], before + flat.shape[1]):
                self.mixed = False
                return scaled
            extra = flat @ torch.tril(mix[:, before:], diagonal=-1).T
            if before:
                extra = extra + torch.cat(self._drawn, 1) @ mix[:, :before].T
            self._drawn.append(flat)
            self.blocks[name] = _scale_matrix(drawn_from).detach()  # type: ignore[arg-type]
            return scaled + extra.reshape(noise.shape)

        return noise_map

    def _local_map(
        self, msg: Any, position: int, frame: Any
    ) -> Callable[[torch.Tensor, Distribution], torch.Tensor] | None:
        """Scale a local site's noise per coordinate and mix the globals' noise
        into it, where every data point is drawn in every run (no subsampling)."""
        fn = msg["fn"]
        scale = msg["scale"]
        subsampled = fn.batch_shape[frame.dim] != frame.size
        weight = float(scale) if not torch.is_tensor(scale) or scale.numel() == 1 else None
        if subsampled or position != 0 or weight is None or not self.mixed:
            self.locals_mixed = False
        if not self.locals_mixed:
            return None
        self._local_seen = True
        name = msg["name"]

        def noise_map(noise: torch.Tensor, drawn_from: Distribution) -> torch.Tensor:
            flat = noise.reshape(self.size, -1)
            width = sum(x.shape[1] for x in self._drawn)
            if name not in self.local_scales and width:
                self.local_scales[name] = flat.new_ones(flat.shape[1], requires_grad=True)
                self.local_mixing[name] = flat.new_zeros((flat.shape[1], width), requires_grad=True)
                self.local_funnel[name] = flat.new_zeros((flat.shape[1], width), requires_grad=True)
                self.local_weights[name] = weight  # type: ignore[assignment]
            mix = self.local_mixing.get(name)
            if mix is None or mix.shape != (flat.shape[1], width):
                self.locals_mixed = False
                return noise
            drawn = torch.cat(self._drawn, 1)
            spread = self.local_scales[name] + drawn @ self.local_funnel[name].T
            return (flat * spread + drawn @ mix.T).reshape(noise.shape)

        return noise_map


def coordinate_names(scales: dict[str, torch.Tensor]) -> list[str]:
    """The probed coordinates' names, in order: ``"mu"``, or ``"theta[2]"``
    for a site with more than one coordinate.

    :param dict scales: a :class:`ScaleProbe`'s ``scales``.
    :rtype: list
    """
    names = []
    for name, s in scales.items():
        names += [name] if s.numel() == 1 else [f"{name}[{i}]" for i in range(s.numel())]
    return names


def curvature_matrix(grads: dict[str, torch.Tensor], probe: ScaleProbe) -> torch.Tensor:
    """:math:`M = I - G` of one batch: ``G`` holds :math:`g_j` on its diagonal
    and the mixing derivatives :math:`g_{jk}` off it (zero where not measured).

    :param dict grads: the ELBO's gradient in each of ``probe.scales`` (by
        site name) and in each of ``probe.mixing`` (by ``"mixing:"`` and the
        site name).
    :param ScaleProbe probe: the probe that drew the batch.
    :rtype: torch.Tensor
    """
    diag = torch.cat([grads[name].flatten() for name in probe.scales])
    lower = torch.zeros(len(diag), len(diag), dtype=diag.dtype, device=diag.device)
    if probe.mixed and set(probe.mixing) == set(probe.scales):
        start = 0
        for name in probe.scales:
            mix = grads["mixing:" + name]
            end = start + mix.shape[0]
            lower[start:end, :end] = mix
            start = end
        lower = torch.tril(lower, diagonal=-1)
    eye = torch.eye(len(diag), dtype=diag.dtype, device=diag.device)
    return eye - lower - lower.T - diag.diag()


def marginal_factor(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The guide's sd over the posterior's marginal sd, per coordinate: the
    posterior's covariance is :math:`T M^{-1} T^\\top`, the guide's
    :math:`T T^\\top`.

    The squared factor is computed as :math:`(T T^\\top)_{jj} / (T M^{-1}
    T^\\top)_{jj}`, which passes smoothly through zero where a noisy :math:`M`
    stops being positive definite (a posterior correlation near :math:`\\pm 1`:
    the posterior's marginal is far wider than the guide); the factor is 0
    where that square is not positive, so that such a guide reads as far too
    narrow rather than as unmeasured.

    :param torch.Tensor m: :math:`M` (NaN returned where it is singular).
    :param torch.Tensor t: :math:`T`, the guide's scale matrix on its noise.
    :rtype: torch.Tensor
    """
    inverse, info = torch.linalg.inv_ex(m)
    if info.item() != 0:
        return torch.full((len(m),), math.nan, dtype=m.dtype)
    square = torch.diagonal(t @ t.T) / torch.diagonal(t @ inverse @ t.T)
    return square.clamp_min(0.0).sqrt()


def pairwise_variance_bound(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An upper bound on the square of :func:`marginal_factor` (the guide's
    variance over the posterior's marginal variance) for a guide without
    correlations (diagonal :math:`T`), from the coordinate's most correlated
    pair alone: :math:`\\min_k (M_{jj} - M_{jk}^2 / M_{kk})` (a Gaussian's
    conditional variance given one coordinate is at least that given all).

    It is nearly linear in :math:`M` and needs no inverse of it, so it stays
    stable where several partial correlations near :math:`\\pm 1` make the
    full factor swing between batches; negative where a pair's estimate is
    not positive definite.

    :param torch.Tensor m: :math:`M`.
    :param torch.Tensor t: :math:`T`; NaN returned unless it is diagonal.
    :rtype: torch.Tensor
    """
    d = len(m)
    if d < 2 or bool((t - torch.diag(torch.diagonal(t))).any()):
        return torch.full((d,), math.nan, dtype=m.dtype)
    diag = torch.diagonal(m)
    conditional = diag[:, None] - m**2 / diag[None, :].clamp_min(1e-12)
    conditional.fill_diagonal_(math.inf)
    return conditional.min(1).values


def local_schur(
    scale_grads: torch.Tensor,
    mixing_grads: torch.Tensor,
    weight: float,
    funnel_grads: torch.Tensor | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    r"""The locals' share of :math:`M` on the globals, as a function of the
    batches to use (the locals taken as independent given the globals):

    .. math::

        \sum_k \frac{M_{\beta k} M_{k \beta}}{M_{kk}}
        + \frac{1}{2} \sum_k \frac{\partial_\beta M_{kk} \,
        \partial_\beta M_{kk}^\top}{M_{kk}^2}.

    The first sum is Schur's complement (the globals' linear correlations
    with the locals). The second is the funnel: where a local's curvature
    :math:`M_{kk}` changes with the globals (a hierarchical scale sets the
    locals' spread), the locals' conditional entropy
    :math:`-\frac{1}{2} \log M_{kk}` moves with the globals, which widens
    their marginal (Laplace's approximation of the integral over the locals).
    Stein's identity gives :math:`\partial_\beta M_{kk}` as minus the
    ELBO's gradient in the probe's funnel factor :math:`F_{k\beta}`
    (:class:`ScaleProbe`). Each product takes its two factors from the even
    and the odd batches, so their noise does not add up to a bias.

    :param torch.Tensor scale_grads: the ELBO's gradient in a local site's
        scales, one row per batch.
    :param torch.Tensor mixing_grads: its gradient in the site's mixing with
        the globals, ``(batches, local coordinates, global coordinates)``.
    :param float weight: the site's scale in the ELBO (``poutine.scale``).
    :param torch.Tensor funnel_grads: its gradient in the site's funnel
        factors, shaped as ``mixing_grads``; None leaves the funnel out.
    :rtype: callable
    """

    def schur(idx: torch.Tensor) -> torch.Tensor:
        m_kk = 1 - scale_grads[idx].mean(0) / weight
        keep = m_kk > 0.1  # a local far too narrow for its posterior: left out
        product = torch.zeros(
            mixing_grads.shape[-1], mixing_grads.shape[-1], dtype=m_kk.dtype, device=m_kk.device
        )
        pairs = [(mixing_grads, m_kk[keep, None], 1.0)]
        if funnel_grads is not None:
            pairs.append((funnel_grads, m_kk[keep, None] ** 2, 0.5))
        for grads, divisor, share in pairs:
            left = -grads[idx[0::2]].mean(0)[keep] / weight
            right = -grads[idx[1::2]].mean(0)[keep] / weight
            product = product + share * weight * (left / divisor).T @ right
        return (product + product.T) / 2

    return schur


def marginal_sd_factors(
    batches: torch.Tensor,
    t: torch.Tensor,
    groups: int = 8,
    schur: Callable[[torch.Tensor], torch.Tensor] | None = None,
    statistic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = marginal_factor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The marginal sd factors (:func:`marginal_factor`, or ``statistic``,
    such as :func:`pairwise_variance_bound`) of the batches' mean :math:`M` (less the
    locals' share, ``schur``), with jackknife standard errors over ``groups``
    groups of batches.

    :param torch.Tensor batches: :math:`M` of each batch, stacked.
    :param torch.Tensor t: :math:`T`.
    :param int groups: jackknife groups (at most the number of batches).
    :param callable schur: the locals' share of :math:`M` given the batches to
        use (:func:`local_schur`), or None.
    :param callable statistic: the function of :math:`M` and :math:`T` to
        estimate (default :func:`marginal_factor`).
    :returns: the factors and their standard errors.
    :rtype: tuple
    """

    def factor_of(idx: torch.Tensor) -> torch.Tensor:
        m = batches[idx].mean(0)
        return statistic(m if schur is None else m - schur(idx), t)

    every = torch.arange(len(batches))
    factor = factor_of(every)
    parts = torch.stack(
        [
            factor_of(
                torch.cat([k for j, k in enumerate(torch.tensor_split(every, groups)) if j != g])
            )
            for g in range(groups)
        ]
    )
    stderr = ((groups - 1) / groups * ((parts - parts.mean(0)) ** 2).sum(0)).sqrt()
    return factor, stderr
