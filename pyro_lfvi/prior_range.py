"""The range of a global's prior, within which LFVI keeps its training globals.

Widened training globals (:func:`pyro_lfvi.pairing.widen_globals`) are clamped
to the range of the prior, so that they never reach regions the prior rules
out, where a simulator may blow up (an AR coefficient beyond 1, a rate of 1e6).
The range comes from prior draws; it depends on the prior alone, so it is
computed once per prior and reused while the prior's parameters stay the same
(most priors are constants; a prior that moves with other globals is
recomputed at every step).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pyro.distributions as dist
import torch
from torch.distributions import Distribution, biject_to

__all__ = ["PRIOR_RANGE_DRAWS", "clamp_to_prior", "prior_range"]

PRIOR_RANGE_DRAWS = 512
"""Prior draws that bound the training globals (see :func:`prior_range`)."""

_SEED = 20171204  # the draws are a function of the prior alone, not of the training stream
_CACHE_SIZE = 64
_Key = tuple[tuple[type, ...], torch.Size, torch.Size]
_cache: OrderedDict[_Key, list[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]] = (
    OrderedDict()
)


def _transform_parameters(t: Any) -> tuple[tuple[type, ...], list[torch.Tensor]]:
    if isinstance(t, torch.distributions.transforms.ComposeTransform):
        kinds: tuple[type, ...] = (type(t),)
        params: list[torch.Tensor] = []
        for part in t.parts:
            k, p = _transform_parameters(part)
            kinds, params = kinds + k, params + p
        return kinds, params
    return (type(t),), [v for v in vars(t).values() if isinstance(v, torch.Tensor)]


def _describe(fn: Any) -> tuple[tuple[type, ...], list[torch.Tensor]] | None:
    """
    The kinds (distribution and transform classes) and the tensors that
    define a distribution, or None where they cannot be listed.
    """
    kinds: tuple[type, ...] = (type(fn),)
    if isinstance(fn, dist.Independent | torch.distributions.Independent):
        base = _describe(fn.base_dist)
        return None if base is None else (kinds + base[0], base[1])
    if isinstance(fn, dist.ExpandedDistribution | dist.MaskedDistribution):
        base = _describe(fn.base_dist)
        mask = getattr(fn, "_mask", None)
        extra = [mask] if isinstance(mask, torch.Tensor) else []
        return None if base is None else (kinds + base[0], base[1] + extra)
    if isinstance(fn, torch.distributions.TransformedDistribution):
        base = _describe(fn.base_dist)
        if base is None:
            return None
        kinds, params = kinds + base[0], list(base[1])
        for t in fn.transforms:
            k, p = _transform_parameters(t)
            kinds, params = kinds + k, params + p
        return kinds, params
    names = getattr(type(fn), "arg_constraints", None)
    if not isinstance(names, dict) or not names:
        return None
    params = []
    for name in names:
        if name in ("probs", "logits") and name not in vars(fn):
            continue  # lazily derived from the other one
        value = getattr(fn, name, None)
        if not isinstance(value, torch.Tensor):
            return None
        params.append(value)
    return kinds, params


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and x.device == y.device and torch.equal(x, y)
        for x, y in zip(a, b, strict=True)
    )


def _draw_range(prior: Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(_SEED)
            draws = biject_to(prior.support).inv(prior.sample(torch.Size([PRIOR_RANGE_DRAWS])))
    except NotImplementedError:
        return None
    flat = draws.reshape(PRIOR_RANGE_DRAWS, -1)
    if not bool(torch.isfinite(flat).all()):
        return None
    quantiles = torch.tensor([0.001, 0.999], dtype=flat.dtype, device=flat.device)
    low, high = torch.quantile(flat, quantiles, dim=0)
    pad = 0.1 * (high - low)
    return (low - pad).reshape(draws.shape[1:]), (high + pad).reshape(draws.shape[1:])


def prior_range(prior: Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    """
    The range of a prior in the unconstrained space of its support: the 0.1%
    and 99.9% quantiles of :data:`PRIOR_RANGE_DRAWS` draws, widened by a tenth
    of their distance, per element of the prior's shape. The draws come from a
    fixed seed on a forked random stream, so the range is a function of the
    prior alone and training's random stream does not move.

    :param prior: the prior distribution of a global site.
    :returns: ``(low, high)``, or None for a prior that cannot be sampled or
        whose draws are not finite (it is then not clamped).
    """
    described = _describe(prior)
    if described is None:
        return _draw_range(prior)
    kinds, params = described
    key = (kinds, prior.batch_shape, prior.event_shape)
    entries = _cache.get(key, [])
    for cached, low, high in entries:
        if _same(cached, params):
            _cache.move_to_end(key)
            return low, high
    found = _draw_range(prior)
    if found is None:
        return None
    # Up to four parameter sets per kind of prior (the newest kept).
    _cache[key] = [*entries[-3:], ([p.detach().clone() for p in params], *found)]
    _cache.move_to_end(key)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return found


def clamp_to_prior(u: torch.Tensor, prior: Distribution) -> torch.Tensor:
    """Clamp unconstrained training globals ``u`` to :func:`prior_range`."""
    bounds = prior_range(prior)
    if bounds is None:
        return u
    low, high = bounds
    return torch.maximum(torch.minimum(u, high), low)
