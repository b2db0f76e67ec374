"""Which site plays which role: observed, local or global, and the data plate.

A latent is *local* when it lies inside the data plate (the outermost plate
shared by every observed site); every other latent is *global*. This module
classifies the sites of a pair of traces, checks what LFVI needs of the
globals, and traces a guide with errors that say what to change.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from pyro import poutine
from pyro.poutine import Trace
from torch.distributions import Distribution

from .compat import duplicate_site_name, plate_shape_mismatch, site_is_subsample, zero_size_plate
from .errors import ImplicitDensityError, ModelStructureError
from .implicit import ImplicitSite

if TYPE_CHECKING:
    from .compat import Site

__all__ = [
    "SiteRoles",
    "check_globals",
    "classify_sites",
    "deepest_plate",
    "dist_of",
    "frame_names",
    "plate_nesting",
    "sample_sites",
    "value_of",
    "trace_guide",
    "trace_model",
]


@dataclass
class SiteRoles:
    """Which model sites are observed, local and global, and the data plate."""

    observed: list[str]
    local: list[str]
    global_: list[str]
    data_plate: str | None
    num_points: int
    full_size: int


def sample_sites(trace: Trace) -> OrderedDict[str, Site]:
    return OrderedDict(
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    )


def dist_of(site: Site) -> Distribution:
    """A sample site's distribution (Pyro types it as any callable)."""
    return cast(Distribution, site["fn"])


def value_of(site: Site) -> torch.Tensor:
    """A sample site's value (Pyro types it as optional)."""
    return cast(torch.Tensor, site["value"])


def _vectorised_frames(*traces: Trace) -> list[Any]:
    """The plate frames of every sample site in the traces, sequential plates left out."""
    return [
        f
        for trace in traces
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for f in site["cond_indep_stack"]
        if f.dim is not None
    ]


def plate_nesting(*traces: Trace) -> int:
    """The deepest plate nesting (``-dim`` of the leftmost plate) in the traces."""
    return max([*(-int(f.dim) for f in _vectorised_frames(*traces)), 0])


def deepest_plate(*traces: Trace) -> str | None:
    """The name of the plate at the leftmost dim in the traces (None without plates)."""
    frames = _vectorised_frames(*traces)
    return min(frames, key=lambda f: int(f.dim)).name if frames else None


def frame_names(site: Site, skip: str | None) -> list[str]:
    """
    The site's vectorised plates, except ``skip``. A sequential plate (no
    dim) is left out: each of its iterations is a site of its own, so it
    cannot index data points along a dim.
    """
    return [f.name for f in site["cond_indep_stack"] if f.name != skip and f.dim is not None]


def classify_sites(model_trace: Trace, guide_trace: Trace, particle_plate: str | None) -> SiteRoles:
    """
    Split the model's sample sites into observed, local and global ones.

    The data plate is the outermost plate shared by every observed site; a
    latent inside it is local (plates nested in it belong to one data point),
    every other latent is global.

    :raises ModelStructureError: if the model has no observed site, or the
        guide lacks one of the model's latent sites.
    """
    sites = sample_sites(model_trace)
    observed = [name for name, site in sites.items() if site["is_observed"]]
    if not observed:
        raise ModelStructureError(
            "Expected at least one observed site in the model, actual none. LFVI "
            "compares simulated with observed data: pass obs= to the likelihood's "
            "pyro.sample (e.g. pyro.sample('x', ImplicitSite(sim, theta), obs=x))"
        )
    guide_sites = sample_sites(guide_trace)
    for name, site in sites.items():
        if not site["is_observed"] and name not in guide_sites:
            raise ModelStructureError(
                f"Expected the guide to sample every latent site of the model, but "
                f"it lacks '{name}'. Add pyro.sample('{name}', ...) to the guide "
                f"(for a local latent, inside the same plate), or use an autoguide"
            )
    shared = frame_names(sites[observed[0]], particle_plate)
    for name in observed[1:]:
        names = set(frame_names(sites[name], particle_plate))
        shared = [f for f in shared if f in names]
    data_plate = shared[0] if shared else None
    local: list[str] = []
    global_: list[str] = []
    for name, site in sites.items():
        if site["is_observed"]:
            continue
        is_local = data_plate is not None and data_plate in frame_names(site, None)
        (local if is_local else global_).append(name)
    num_points, full_size = 1, 1
    if data_plate is not None:
        frame = next(f for f in sites[observed[0]]["cond_indep_stack"] if f.name == data_plate)
        num_points = int(frame.size)
        full_size = int(frame.full_size if frame.full_size is not None else frame.size)
    return SiteRoles(observed, local, global_, data_plate, num_points, full_size)


def check_globals(model_trace: Trace, guide_trace: Trace, roles: SiteRoles) -> None:
    """Globals need an explicit, reparameterised guide (their prior may be implicit)."""
    where = (
        f"inside plate '{roles.data_plate}'"
        if roles.data_plate
        else "inside the plate that indexes data points"
    )
    for name in roles.global_:
        post = dist_of(guide_trace.nodes[name])
        if isinstance(post, ImplicitSite):
            raise ModelStructureError(
                f"Global site '{name}' has an implicit guide (ImplicitSite). LFVI "
                f"needs log q(beta) for global latents: use an explicit distribution "
                f"in the guide (e.g. dist.Normal or an autoguide such as AutoNormal), "
                f"or, if '{name}' is per data point, sample it {where} in model and guide"
            )
        if not post.has_rsample:
            raise ModelStructureError(
                f"Global site '{name}' has a guide distribution without rsample "
                f"({type(post).__name__}). LFVI follows reparameterised gradients: "
                f"use a reparameterisable guide distribution for '{name}'"
            )


def trace_guide(guide: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Trace:
    """Trace the guide, explaining the plate clash typical of AutoGuideList parts."""
    try:
        return poutine.trace(guide).get_trace(*args, **kwargs)
    except ImplicitDensityError as err:
        raise ModelStructureError(
            f"The guide evaluated the model's log density, which implicit sites do not "
            f"have ({err.args[0].split(':')[0]}). Autoguides such as AutoGaussian and "
            f"AutoStructured do that: use AutoNormal, AutoDiagonalNormal, "
            f"AutoMultivariateNormal, AutoIAFNormal or AutoDelta for the globals, and "
            f"AutoGuideList to add a hand-written local guide"
        ) from err
    except (ValueError, ZeroDivisionError) as err:
        explain_trace_error(err, guide, args, kwargs)
        raise
    except RuntimeError as err:
        name = duplicate_site_name(err)
        if name is None:
            raise
        raise ModelStructureError(
            f"The guide has two sample sites named '{name}'. If '{name}' is a plate: "
            f"AutoGuideList opens the model's plates itself, so a hand-written part must "
            f"enter the list's own plate (with guide.plates['{name}'] as idx: ...) "
            f"instead of opening a new pyro.plate"
        ) from err


def trace_model(
    model: Callable[..., Any], guide_trace: Trace, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Trace:
    """Trace the model with the guide's values replayed, explaining shape errors."""
    try:
        return poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    except (ValueError, ZeroDivisionError) as err:
        explain_trace_error(err, model, args, kwargs, guide_trace)
        raise


def explain_trace_error(
    err: BaseException,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    guide_trace: Trace | None = None,
) -> None:
    """
    Raise a :class:`~pyro_lfvi.ModelStructureError` in place of Pyro's error
    for a plate of size zero or a site that does not fit its plate, naming
    the likely cause; return (so the caller re-raises) for any other error.
    """
    if zero_size_plate(err):
        raise ModelStructureError(
            "A plate has size zero: there are no data points. Pass at least one "
            "observation (a single one without a plate, or in a plate of size 1)"
        ) from err
    prior = _prior_trace(fn, args, kwargs) if guide_trace is not None else None
    outside = _guide_values_outside_support(prior, guide_trace)
    if outside:
        raise ModelStructureError(
            f"The guide's values of {', '.join(outside)} lie outside the support of the "
            f"model's prior there, so the model failed on them ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}). Use a guide distribution with the prior's "
            f"support (e.g. LogNormal for a positive site, or an autoguide, which "
            f"transforms to the support)"
        ) from err
    found = plate_shape_mismatch(err)
    if found is None:
        return
    causes = []
    if prior is not None:
        mismatched = _guide_shapes_unlike_prior(prior, guide_trace)
        if mismatched:
            causes.append(
                "the guide's values have other shapes than the model's draws: "
                + ", ".join(mismatched)
                + "; give the guide's sites the model's shapes"
            )
    causes.append(
        "if a parameter of an ImplicitSite is a vector per draw (a vector global "
        "fed to the simulator, for instance), pass param_event_dims=1 so that "
        "its last dim belongs to one draw rather than to the batch"
    )
    raise ModelStructureError(
        f"Site '{found.site}' does not fit plate '{found.plate}': its batch shape has "
        f"{found.site_size} at dim {found.dim} where the plate has {found.plate_size}. "
        + _sentence("; or ".join(causes))
    ) from err


def _prior_trace(
    model: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Trace | None:
    """A side run of the model from its prior (None if that fails too)."""
    try:
        with poutine.block(), torch.random.fork_rng():
            return poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
    except Exception:  # the model fails without the guide too: nothing to compare
        return None


def _guide_sites(prior: Trace | None, guide_trace: Trace | None) -> list[tuple[str, Site, Site]]:
    """(name, guide site, model site) for each latent both traces share."""
    if prior is None or guide_trace is None:
        return []
    return [
        (name, site, prior.nodes[name])
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and name in prior.nodes and not site_is_subsample(site)
    ]


def _guide_values_outside_support(prior: Trace | None, guide_trace: Trace | None) -> list[str]:
    """'name' for each guide value outside the support of the model's distribution."""
    out = []
    for name, site, model_site in _guide_sites(prior, guide_trace):
        fn = model_site["fn"]
        if isinstance(fn, ImplicitSite) or not hasattr(fn, "support"):
            continue
        try:
            inside = bool(fn.support.check(value_of(site)).all())
        except (RuntimeError, ValueError, NotImplementedError):  # shapes differ
            continue
        if not inside:
            out.append(f"'{name}' ({fn.support})")
    return out


def _guide_shapes_unlike_prior(prior: Trace | None, guide_trace: Trace | None) -> list[str]:
    """'name guide (a,) vs model (b,)' for each guide site shaped unlike the model's draw."""
    out = []
    for name, site, model_site in _guide_sites(prior, guide_trace):
        q_shape = tuple(torch.as_tensor(site["value"]).shape)
        p_shape = tuple(torch.as_tensor(model_site["value"]).shape)
        if q_shape != p_shape:
            out.append(f"'{name}' guide {q_shape} vs model {p_shape}")
    return out


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]
