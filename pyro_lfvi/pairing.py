"""Pairing the model's and the guide's joints through poutine traces.

One call of :func:`pair_joints` runs the guide once and the model twice:

* the **q-side** replays every latent from the guide into the model, so each
  data point contributes ``(x_n, z_n ~ q(z | x_n, beta), beta ~ q(beta))``;
* the **p-side** replays only the *global* latents (and the plates' subsample
  indices) and un-conditions the observed sites, so the model itself simulates
  ``z'_n ~ p(z | beta)`` and ``x'_n ~ p(x | z'_n, beta)`` for the same
  minibatch. The guide's local values never reach the p-side.

Every observed and local value is then flattened to one row per data point,
``(particles, points, features)``, and every global to ``(particles, features)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine import Trace
from torch.distributions import Distribution, biject_to

from .compat import site_is_subsample
from .embeddings import PointShape
from .errors import ModelStructureError
from .global_ratio import PriorContrast, fit_moments, prior_contrast
from .handlers import name_implicit_sites
from .implicit import ImplicitSite
from .roles import (
    SiteRoles,
    check_globals,
    classify_sites,
    dist_of,
    frame_names,
    sample_sites,
    trace_guide,
    trace_model,
    value_of,
)

PRIOR_DRAWS = 64
"""Draws of an implicit global prior per particle and step."""

if TYPE_CHECKING:
    from .compat import Site

__all__ = [
    "PairedJoints",
    "gaussian_contrast",
    "pair_joints",
    "point_log_prob",
    "widen_globals",
]


@dataclass
class PairedJoints:
    """Per-data-point values of both joints, ready for a ratio estimator.

    Observed and local values have shape ``(P, M, d)``, globals ``(P, d)``,
    where ``P`` is the number of vectorised particles (1 if not vectorised)
    and ``M`` the number of data points in the minibatch. ``q_*`` feed the
    ELBO (they carry gradients to the guide); ``p_*`` and ``t_*`` are the
    detached p-side and q-side inputs on which the discriminator trains, drawn
    at the (possibly widened) training globals ``p_global``.

    When every local latent has an explicit prior and an explicit guide
    density (``explicit_locals``), the ``*_offset`` tensors ``(P, M)`` hold
    ``log p(z_n | beta) - log q(z_n | x_n, beta)`` per data point, and the
    discriminator only has to learn the implicit likelihood's part of the
    ratio; otherwise the offsets are zero. ``model_params`` names the
    params that the model registers and the guide does not.
    ``global_log_ratio`` leaves out the prior of globals whose prior is
    implicit; ``prior_contrasts`` holds what estimates it (see
    :mod:`pyro_lfvi.global_ratio`). ``mirrored`` says that the particles
    were drawn in antithetic pairs, particle ``k + P // 2`` the mirror image
    of particle ``k`` (see :mod:`pyro_lfvi.antithetic`).
    """

    roles: SiteRoles
    q_observed: dict[str, torch.Tensor]
    q_local: dict[str, torch.Tensor]
    q_global: dict[str, torch.Tensor]
    p_observed: dict[str, torch.Tensor]
    p_local: dict[str, torch.Tensor]
    p_global: dict[str, torch.Tensor]
    t_local: dict[str, torch.Tensor]
    q_offset: torch.Tensor
    p_offset: torch.Tensor
    t_offset: torch.Tensor
    explicit_locals: bool
    q_trace: Trace
    lead: list[str | None]
    scale: torch.Tensor
    global_log_ratio: torch.Tensor
    num_particles: int
    model_params: list[str]
    prior_contrasts: dict[str, PriorContrast]
    observed_points: dict[str, PointShape]
    mirrored: bool = False


def _to_rows(value: torch.Tensor, fn: object, site: Site, lead: list[str | None]) -> torch.Tensor:
    """
    Move the plate dims named in ``lead`` to the front, flatten the rest, in
    the default float dtype (the ratio estimator's networks use it, whatever
    dtype the data, the guide's parameters or the simulator came in).
    """
    value = value.to(torch.get_default_dtype())
    event_dim = len(getattr(fn, "event_shape", ()))
    shape = torch.Size(getattr(fn, "batch_shape", value.shape[: value.dim() - event_dim]))
    full = value.expand(shape + value.shape[value.dim() - event_dim :])
    frames = {f.name: f for f in site["cond_indep_stack"]}
    need = max([-int(frames[n].dim or 0) for n in lead if n is not None and n in frames] + [0])
    pad = need - (full.dim() - event_dim)
    if pad > 0:
        full = full.reshape((1,) * pad + full.shape)
    batch_rank = full.dim() - event_dim
    moved = []
    for name in lead:
        if name is not None and name in frames:
            moved.append(batch_rank + int(frames[name].dim or 0))
    full = full.movedim(moved, list(range(len(moved)))) if moved else full
    sizes = list(full.shape[: len(moved)])
    it = iter(sizes)
    lead_sizes = [next(it) if (n is not None and n in frames) else 1 for n in lead]
    return full.reshape([*lead_sizes, -1])


def _check_declared_dims(name: str, site: Site) -> None:
    """
    Refuse a site whose batch shape has a dim of size > 1 that no plate
    declares: LFVI would otherwise mix it silently into the particle or data
    dims (for instance a vector global passed to an ImplicitSite without
    ``param_event_dims``).
    """
    fn = site["fn"]
    batch = tuple(getattr(fn, "batch_shape", ()))
    declared = {int(f.dim) for f in site["cond_indep_stack"] if f.dim is not None}
    for dim in range(-1, -len(batch) - 1, -1):  # rightmost first: the likeliest culprit
        if batch[dim] > 1 and dim not in declared:
            raise ModelStructureError(
                f"Site '{name}' has batch shape {batch}, whose dim {dim} (size "
                f"{batch[dim]}) no plate declares. If that dim belongs to one draw, make "
                f"it an event dim: event_shape= (or .to_event) for the site, and "
                f"param_event_dims= for a vector parameter of an ImplicitSite; if it "
                f"indexes data, open a pyro.plate for it"
            )


def _point_shape(site: Site, rows: torch.Tensor) -> PointShape:
    """The layout of one data point: nested-plate elements and the event shape."""
    event = tuple(int(s) for s in getattr(site["fn"], "event_shape", ()))
    size = 1
    for s in event:
        size *= s
    return PointShape(max(1, int(rows.shape[-1]) // max(1, size)), event)


def _particle_axis(value: torch.Tensor, site: Site, particle_plate: str) -> int:
    frame = next(f for f in site["cond_indep_stack"] if f.name == particle_plate)
    event_dim = len(dist_of(site).event_shape)
    return value.dim() - event_dim + int(frame.dim or 0)


def widen_globals(
    guide_trace: Trace,
    model_trace: Trace,
    names: list[str],
    particle_plate: str,
    factor: float,
    point_spread: float = 0.0,
) -> dict[str, torch.Tensor]:
    """
    Spread the particles of each global latent ``factor`` times further from
    their mean, in the unconstrained space of the model's prior support.

    The optimal ratio estimator does not depend on the distribution of the
    globals that both of its sides share, so the discriminator may train on
    these wider draws: they show it how the data change with the globals over
    a range that does not shrink to the posterior's width.

    Where all particles coincide (a point-mass guide such as ``AutoDelta``:
    variational EM), there is no spread to widen; the training globals are
    then drawn around the point with standard deviation ``point_spread``.
    """
    out = {}
    for name in names:
        site = guide_trace.nodes[name]
        value = value_of(site).detach()
        support = dist_of(model_trace.nodes[name]).support
        transform = biject_to(support)
        axis = _particle_axis(value, site, particle_plate)
        u = transform.inv(value)
        if not bool(torch.isfinite(u).all()):
            raise ModelStructureError(
                f"The guide's values of global site '{name}' lie outside the support of "
                f"its prior ({support}). Use a guide distribution with the same support "
                f"(e.g. LogNormal for a positive global, or an autoguide)"
            )
        centre = u.mean(axis, keepdim=True)
        spread = factor * (u - centre)
        if point_spread > 0:
            tol = 1e-6 * (1.0 + centre.abs())
            point = ((u - centre).abs() <= tol).all(axis, keepdim=True)
            if bool(point.any()):  # draw only then: other guides keep their random stream
                spread = torch.where(point, point_spread * torch.randn_like(u), spread)
        out[name] = transform(_within_prior(centre + spread, model_trace.nodes[name]["fn"]))
    return out


PRIOR_RANGE_DRAWS = 512
"""Prior draws per step that bound the training globals (see :func:`widen_globals`)."""


def _tail_quantiles(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 0.1% and 99.9% quantiles of each column of ``flat`` as ``torch.quantile``
    computes them (linear interpolation between order statistics, ranks in
    ``flat``'s dtype), from a partial sort of each tail: same values, several
    times faster than ``torch.quantile``'s full sort."""
    n = flat.shape[0]
    ranks = torch.tensor([0.001, 0.999], dtype=flat.dtype) * (n - 1)
    below, above = ranks.floor(), ranks.ceil()
    weights = ranks - below
    (low_below, high_below), (low_above, high_above) = below.long().tolist(), above.long().tolist()
    ascending = flat.topk(low_above + 1, 0, largest=False, sorted=True).values
    descending = flat.topk(n - high_below, 0, largest=True, sorted=True).values
    low = torch.lerp(ascending[low_below], ascending[low_above], weights[0])
    high = torch.lerp(descending[n - 1 - high_below], descending[n - 1 - high_above], weights[1])
    return low, high


def _within_prior(u: torch.Tensor, prior: Any) -> torch.Tensor:
    """
    Clamp unconstrained training globals ``u`` to the range of the prior: its
    0.1% and 99.9% quantiles (from fresh draws) widened by a tenth of their
    distance. Widened draws then never reach regions the prior rules out, where
    a simulator may blow up (an AR coefficient beyond 1, a rate of 1e6).
    """
    try:
        # A side computation: it must not move the random stream of training.
        with torch.no_grad(), torch.random.fork_rng():
            draws = biject_to(prior.support).inv(prior.sample(torch.Size([PRIOR_RANGE_DRAWS])))
    except NotImplementedError:
        return u
    flat = draws.reshape(PRIOR_RANGE_DRAWS, -1)
    if not bool(torch.isfinite(flat).all()):
        return u
    low, high = _tail_quantiles(flat)
    pad = 0.1 * (high - low)
    low, high = (low - pad).reshape(draws.shape[1:]), (high + pad).reshape(draws.shape[1:])
    return torch.maximum(torch.minimum(u, high), low)


def point_log_prob(
    fn: Distribution, value: torch.Tensor, site: Site, lead: list[str | None]
) -> torch.Tensor:
    """``fn.log_prob(value)`` summed to one number per (particle, data point)."""
    log_p = fn.log_prob(value)
    return _to_rows(log_p, None, site, lead).sum(-1)


def gaussian_contrast(site: Site, num_draws: int) -> Distribution:
    """
    A Normal fitted, per batch element, to the value of an implicit guide
    site and ``num_draws`` fresh draws of it: an explicit stand-in for its
    unknown density.

    Its moments are constants (no gradient), so differentiating its log
    density at a reparameterised draw gives the pathwise entropy gradient of
    the Normal that matches the guide's first two moments. The site's own
    value is among the draws, so no draw can lie more than
    ``sqrt(num_draws)`` fitted sds from the fitted mean: a guide cannot
    inflate its estimated entropy with rare outliers that the fresh draws
    happen to miss.
    """
    fn = dist_of(site)
    with torch.no_grad():
        extra = fn.sample(torch.Size([num_draws]))
        draws = torch.cat([value_of(site).detach().expand(extra.shape[1:]).unsqueeze(0), extra])
        loc, scale = fit_moments(draws)
    return dist.Normal(loc, scale).to_event(len(fn.event_shape))


def _local_offset(
    prior_trace: Trace,
    guide_trace: Trace,
    values: Trace,
    names: list[str],
    lead: list[str | None],
    densities: dict[str, Distribution],
) -> torch.Tensor:
    total = torch.zeros(())
    for name in names:
        value = value_of(values.nodes[name])
        site = guide_trace.nodes[name]
        total = total + point_log_prob(dist_of(prior_trace.nodes[name]), value, site, lead)
        total = total - point_log_prob(densities.get(name, dist_of(site)), value, site, lead)
    return total


def _site_log_prob(site: Site) -> torch.Tensor:
    log_p = dist_of(site).log_prob(value_of(site))
    scale = site["scale"]
    return (log_p * scale).sum()


def local_guide_densities(
    guide_trace: Trace, model_trace: Trace, names: list[str], contrast_draws: int
) -> dict[str, Distribution]:
    """
    Densities that stand in for local guide sites whose own ``fn`` cannot be
    evaluated away from its draw: a Normal fitted to an implicit guide
    (:func:`gaussian_contrast`), and, for ``AutoNormal``'s point mass on the
    transformed value of its auxiliary ``<name>_unconstrained`` draw, that
    draw's Normal pushed through the support's bijection.

    :raises ModelStructureError: for a point-mass local guide without such an
        auxiliary site (``AutoDelta``, or an ``AutoContinuous`` guide that
        draws the locals jointly with the globals).
    """
    out: dict[str, Distribution] = {}
    for name in names:
        site = guide_trace.nodes[name]
        if isinstance(site["fn"], ImplicitSite):
            out[name] = gaussian_contrast(site, contrast_draws)
        elif isinstance(site["fn"], dist.Delta):
            aux = guide_trace.nodes.get(f"{name}_unconstrained")
            if aux is None:
                raise ModelStructureError(
                    f"Local site '{name}' has a point-mass guide (Delta), which has no "
                    f"density for LFVI to compare with the prior; AutoDelta and guides "
                    f"that draw all latents jointly (AutoDiagonalNormal, "
                    f"AutoMultivariateNormal, AutoIAFNormal) do this to locals. Guide the "
                    f"locals with AutoNormal, a hand-written or an implicit guide, and use "
                    f"AutoGuideList to keep such an autoguide for the globals"
                )
            support = dist_of(model_trace.nodes[name]).support
            out[name] = dist.TransformedDistribution(aux["fn"], [biject_to(support)])
    return out


def pair_joints(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    particle_plate: str | None = None,
    num_particles: int = 1,
    widen: float = 1.0,
    contrast_draws: int = 16,
    point_spread: float = 0.5,
    model_grad: bool = False,
    allow_nonfinite: bool = False,
) -> PairedJoints:
    """
    Run the guide and both sides of the model, and flatten them per data point.

    :param callable model: the model.
    :param callable guide: the guide.
    :param tuple args: positional arguments of both.
    :param dict kwargs: keyword arguments of both.
    :param str particle_plate: name of a vectorised particle plate wrapping
        model and guide, if any.
    :param int num_particles: its size.
    :param float widen: factor by which the training globals are spread
        around the particle mean (see :func:`widen_globals`); used only with
        a particle plate of two or more particles.
    :param int contrast_draws: extra draws of each implicit local guide site
        to which a Normal is fitted (see :func:`gaussian_contrast`); 0 leaves
        the whole local ratio to the discriminator.
    :param float point_spread: spread of the training globals around a
        point-mass guide's value (see :func:`widen_globals`).
    :param bool model_grad: keep the graph from the model's own parameters
        to the p-side simulations (for adversarial training of a
        differentiable simulator).
    :param bool allow_nonfinite: let the p-side simulations contain NaN or
        inf (the ratio estimator drops those rows).
    """
    guide_trace = trace_guide(name_implicit_sites(guide), args, kwargs)
    model_fn = name_implicit_sites(model)
    q_trace = trace_model(model_fn, guide_trace, args, kwargs)
    roles = classify_sites(q_trace, guide_trace, particle_plate)
    check_globals(q_trace, guide_trace, roles)

    wide: dict[str, torch.Tensor] = {}
    if widen != 1.0 and particle_plate is not None and num_particles > 1 and roles.global_:
        wide = widen_globals(
            guide_trace, q_trace, roles.global_, particle_plate, widen, point_spread
        )

    # Replay the globals and the minibatch indices the q-side used (taken from
    # the model's run, so that a guide without the data plate still pairs).
    subsample_only = poutine.Trace()
    for name, site in q_trace.nodes.items():
        if site["type"] == "sample" and site_is_subsample(site):
            subsample_only.add_node(name, **site)
    globals_only = subsample_only.copy()
    for name in roles.global_:
        site = guide_trace.nodes[name]
        value = wide[name] if name in wide else value_of(site).detach()
        globals_only.add_node(name, **dict(site, value=value))
    # The p-side carries gradients only to the model's own parameters, and
    # only when they are trained adversarially.
    with torch.set_grad_enabled(model_grad and torch.is_grad_enabled()):
        p_model = name_implicit_sites(model, allow_nonfinite=allow_nonfinite)
        p_trace = poutine.trace(
            poutine.uncondition(poutine.replay(p_model, trace=globals_only))
        ).get_trace(*args, **kwargs)
    with torch.no_grad():
        t_trace = guide_trace
        if wide and roles.local:
            # The guide's locals at the widened globals, on the same minibatch.
            conditioned = poutine.condition(name_implicit_sites(guide), data=wide)
            t_trace = poutine.trace(poutine.replay(conditioned, trace=subsample_only)).get_trace(
                *args, **kwargs
            )

    lead = [particle_plate, roles.data_plate]

    def rows(trace: Trace, names: list[str], lead_: list[str | None]) -> dict[str, torch.Tensor]:
        out = {}
        for name in names:
            if name not in trace.nodes:
                raise ModelStructureError(
                    f"Site '{name}' ran in the model with observations but not when "
                    f"the model simulated its data; LFVI needs a model whose sites do "
                    f"not depend on whether data are observed"
                )
            site = trace.nodes[name]
            _check_declared_dims(name, site)
            out[name] = _to_rows(value_of(site), site["fn"], site, lead_)
        return out

    q_obs = rows(q_trace, roles.observed, lead)
    for name, value in q_obs.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise ModelStructureError(
                f"The observed data of site '{name}' hold {bad} NaN or inf value(s). LFVI "
                f"cannot compare simulations with missing data: drop or impute those points"
            )
    p_obs = rows(p_trace, roles.observed, lead)
    q_loc = rows(q_trace, roles.local, lead)
    p_loc = rows(p_trace, roles.local, lead)
    q_glob = rows(q_trace, roles.global_, [particle_plate])
    p_glob = {k: v.detach() for k, v in q_glob.items()}
    for name, value in wide.items():
        site = q_trace.nodes[name]
        p_glob[name] = _to_rows(value, site["fn"], site, [particle_plate])
    t_loc = {k: v.detach() for k, v in rows(t_trace, roles.local, lead).items()}
    for kind, q_rows, p_rows in (("Observed", q_obs, p_obs), ("Local", q_loc, p_loc)):
        for name, value in q_rows.items():
            if value.shape != p_rows[name].shape:
                raise ModelStructureError(
                    f"{kind} site '{name}' has shape {tuple(value.shape)} (particles, "
                    f"points, features) on the data/guide side but "
                    f"{tuple(p_rows[name].shape)} when the model simulates it"
                )

    implicit_guides = [
        name for name in roles.local if isinstance(guide_trace.nodes[name]["fn"], ImplicitSite)
    ]
    explicit = (
        bool(roles.local)
        and not any(isinstance(q_trace.nodes[n]["fn"], ImplicitSite) for n in roles.local)
        and (contrast_draws > 0 or not implicit_guides)
    )
    zeros = torch.zeros(q_obs[roles.observed[0]].shape[:2])
    q_off, p_off, t_off = zeros, zeros, zeros
    if explicit:
        q_dens = local_guide_densities(guide_trace, q_trace, roles.local, contrast_draws)
        t_dens = q_dens
        if t_trace is not guide_trace:
            t_dens = local_guide_densities(t_trace, q_trace, roles.local, contrast_draws)
        q_off = zeros + _local_offset(q_trace, guide_trace, q_trace, roles.local, lead, q_dens)
        with torch.set_grad_enabled(model_grad and torch.is_grad_enabled()):
            p_off = zeros + _local_offset(p_trace, t_trace, p_trace, roles.local, lead, t_dens)
        with torch.no_grad():
            t_off = zeros + _local_offset(p_trace, t_trace, t_trace, roles.local, lead, t_dens)

    first = q_trace.nodes[roles.observed[0]]
    scale = torch.as_tensor(first["scale"], dtype=torch.get_default_dtype())
    if scale.numel() > 1:
        batch_shape = first["fn"].batch_shape  # type: ignore[attr-defined]
        scale = _to_rows(scale.expand(batch_shape), None, first, lead).mean(-1)

    zero = torch.zeros(())
    implicit_priors = [n for n in roles.global_ if isinstance(q_trace.nodes[n]["fn"], ImplicitSite)]
    explicit_priors = [n for n in roles.global_ if n not in implicit_priors]
    log_p = sum((_site_log_prob(q_trace.nodes[n]) for n in explicit_priors), zero)
    contrasts = {n: prior_contrast(q_trace.nodes[n], PRIOR_DRAWS) for n in implicit_priors}
    # Guide-only sites outside the data plate (e.g. the latent of Pyro's
    # AutoContinuous guides) carry part of log q(beta), as in Trace_ELBO.
    auxiliary = [
        name
        for name, site in sample_sites(guide_trace).items()
        if name not in q_trace.nodes
        and not site["is_observed"]
        and roles.data_plate not in frame_names(site, None)
    ]
    log_q = sum((_site_log_prob(guide_trace.nodes[n]) for n in roles.global_ + auxiliary), zero)
    return PairedJoints(
        roles=roles,
        q_observed=q_obs,
        q_local=q_loc,
        q_global=q_glob,
        p_observed=p_obs,
        p_local=p_loc,
        p_global=p_glob,
        t_local=t_loc,
        q_offset=q_off,
        p_offset=p_off,
        t_offset=t_off,
        explicit_locals=explicit,
        q_trace=q_trace,
        lead=lead,
        scale=scale,
        global_log_ratio=(log_p - log_q) / num_particles,
        prior_contrasts=contrasts,
        observed_points={n: _point_shape(q_trace.nodes[n], q_obs[n]) for n in roles.observed},
        num_particles=num_particles,
        model_params=[
            name
            for name, site in q_trace.nodes.items()
            if site["type"] == "param" and name not in guide_trace.nodes
        ],
    )
