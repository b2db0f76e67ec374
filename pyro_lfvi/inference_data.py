"""Conversion of a fitted LFVI guide to ArviZ data (InferenceData or DataTree)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyro
import torch
from pyro import poutine

from .compat import site_is_subsample
from .errors import LFVIWarning
from .handlers import name_implicit_sites
from .history import History
from .reweighting import POOL_FACTOR, reweighted_globals
from .roles import classify_sites, plate_nesting, value_of
from .validation import check_positive_int

if TYPE_CHECKING:  # ArviZ and xarray are imported when converting
    import xarray

    from .compat import Site, SiteInfer
    from .elbo import LFVI

__all__ = ["to_inference_data"]

_DRAWS = "_lfvi_draws"


def _chunks(size: int, batch: int) -> list[torch.Tensor]:
    """Index chunks of exactly ``batch`` covering ``range(size)`` (the last wraps)."""
    out = []
    for start in range(0, size, batch):
        idx = torch.arange(start, start + batch) % size
        out.append(idx)
    return out


def _dims(
    site: Site, value: torch.Tensor, draws: bool, chains: int = 1
) -> tuple[np.ndarray, list[str]]:
    """Name each axis after its plate (or ``<site>_dim_k``), dropping empty ones."""
    fn = site["fn"]
    event_dim = len(getattr(fn, "event_shape", ()))
    # A sequential plate's frame has no dim (each iteration is a site of its own).
    frames = {
        int(f.dim): f.name
        for f in site["cond_indep_stack"]
        if f.name != _DRAWS and f.dim is not None
    }
    batch_rank = value.dim() - event_dim
    keep, names = [], []
    for axis in range(value.dim()):
        if axis < batch_rank:
            dim = axis - batch_rank
            if draws and axis == 0:
                keep.append(axis)
                names.append("draw")
            elif dim in frames:
                keep.append(axis)
                names.append(frames[dim])
            elif value.shape[axis] != 1:
                keep.append(axis)
                names.append(f"{site['name']}_batch_{axis}")
        else:
            keep.append(axis)
            names.append(f"{site['name']}_dim_{axis - batch_rank}")
    squeeze = [a for a in range(value.dim()) if a not in keep]
    array = value.detach()
    for axis in reversed(squeeze):
        array = array.squeeze(axis)
    out = array.cpu().numpy()
    if draws:  # iid draws, laid out as chains so that r-hat and ESS are defined
        out = out.reshape((chains, out.shape[0] // chains, *out.shape[1:]))
        names = ["chain", *names]
    return out, names


def _collect(
    per_chunk: list[tuple[torch.Tensor | None, poutine.Trace]],
    names: list[str],
    data_plate: str | None,
    draws: bool,
    chains: int = 1,
) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Stitch chunked sites back into full arrays along the data plate."""
    out: dict[str, tuple[np.ndarray, list[str]]] = {}
    for name in names:
        pieces = []
        for idx, trace in per_chunk:
            site = trace.nodes[name]
            pieces.append((idx, *_dims(site, value_of(site), draws, chains)))
        idx0, arr0, dims0 = pieces[0]
        if idx0 is None or data_plate not in dims0:
            out[name] = (arr0, dims0)
            continue
        axis = dims0.index(data_plate)
        full_size = int(max(int(p[0].max()) for p in pieces if p[0] is not None)) + 1
        shape = list(arr0.shape)
        shape[axis] = full_size
        full = np.empty(shape, dtype=arr0.dtype)
        for idx, arr, _ in pieces:
            assert idx is not None
            np.put_along_axis(
                full,
                np.expand_dims(idx.numpy(), [a for a in range(arr.ndim) if a != axis]),
                arr,
                axis=axis,
            )
        out[name] = (full, dims0)
    return out


def _dataset(
    variables: Mapping[str, tuple[np.ndarray, list[str]]],
    coords: Mapping[str, Any] | None,
    dims: Mapping[str, Sequence[str]] | None,
) -> xarray.Dataset:
    import xarray as xr

    data_vars = {}
    for name, (array, names) in variables.items():
        names = list(names)
        if dims and name in dims:
            user = list(dims[name])
            names[len(names) - len(user) :] = user
        data_vars[name] = (names, array)
    ds = xr.Dataset(data_vars)
    for dim, values in (coords or {}).items():
        if dim in ds.dims:
            ds = ds.assign_coords({dim: values})
    for dim in ("chain", "draw"):
        if dim in ds.dims:
            ds = ds.assign_coords({dim: np.arange(ds.sizes[dim])})
    return ds


def _history_dataset(history: Sequence[Mapping[str, float]]) -> xarray.Dataset:
    import xarray as xr

    if not isinstance(history, History):
        history = History.from_rows(history, max(len(history), 2))
    return xr.Dataset(
        {k: ("step", history.column(k)) for k in history.keys()},
        coords={"step": history.steps},
    )


def _assemble(groups: dict[str, xarray.Dataset]) -> Any:
    """An ``arviz.InferenceData`` with ArviZ 0.x, an ``xarray.DataTree`` with 1.x."""
    import arviz as az

    if int(az.__version__.split(".")[0]) >= 1:  # ArviZ 1.x: xarray.DataTree
        import xarray as xr

        return xr.DataTree.from_dict({name: ds for name, ds in groups.items()})
    # ArviZ 0.x types its keywords attrs and warn_on_custom_groups, which a dict of
    # groups cannot be checked against.
    return az.InferenceData(**groups)  # type: ignore[arg-type]


@torch.no_grad()
def to_inference_data(
    model: Callable[..., object],
    guide: Callable[..., object],
    *args: Any,
    num_samples: int = 1000,
    num_chains: int = 4,
    lfvi: LFVI | None = None,
    coords: Mapping[str, Any] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    prior: bool = True,
    var_names: Sequence[str] | None = None,
    reweight: bool | str = "auto",
    **kwargs: Any,
) -> Any:
    """
    Draw from a fitted guide and from the model, and return ArviZ data.

    Groups: ``posterior`` (every global and local latent, drawn from the
    guide, its globals reweighted where ``lfvi``'s check found a lag: see
    below), ``posterior_predictive`` (the observed sites simulated by the
    model at posterior draws), ``observed_data``, ``prior`` and
    ``prior_predictive`` (simulated from the model) and, when ``lfvi`` has a
    training history, ``training_history`` with one entry per training step
    along a ``step`` dimension (ELBO estimate, ratio estimator's loss and
    accuracy, the diagnostics' figures). The history is not draw-level data,
    so it stays out of ``sample_stats`` and its ``(chain, draw)`` schema.

    The guide's draws are independent, not a Markov chain: ``num_chains``
    only lays them out as ``(chain, draw)``. ArviZ's r-hat and effective
    sample sizes over such "chains" are therefore no convergence check (they
    sit near 1 and near the number of draws whatever the fit's quality);
    judge the fit by LFVI's training diagnostics instead.

    With many data points, ``var_names`` keeps the result small: with only
    global latents named, no ``(draws, N)`` array of local draws or
    simulations is built (the guide and the model run on one minibatch) and
    the predictive groups are left out; name an observed site to get them.

    Plate dimensions are named after their plates; event dimensions
    ``<site>_dim_<k>`` unless ``dims`` renames them. A subsampled data plate
    is swept in minibatches so that every data point gets its local draws.

    With ``lfvi`` given, and where :func:`~pyro_lfvi.fit`'s end-of-training
    check found that the ratio estimator lagged behind the guide (it warned:
    its copy, trained to convergence at the final guide, beat the estimator by
    more than its threshold), the globals in ``posterior`` (and the locals and
    simulations drawn at them) are the guide's draws importance-resampled by
    that copy (:func:`~pyro_lfvi.reweighted_globals`): this corrects the blur
    the lagging estimator left in the guide (``reweight="auto"``, the
    default). Where the copy is no better than the estimator (a gain at most
    the check's threshold), the guide's draws are kept: a copy that has not
    improved differs from the estimator only by noise, which would move the
    draws for nothing. The ``posterior`` group's attributes ``reweighted`` (1
    or 0) and ``reweighted_effective_fraction`` say whether it was done and the
    weights' effective sample size over the draws they were resampled from.
    When that leaves fewer effective draws than asked for (as with many data
    points, where small errors per point add up), the guide's draws are kept,
    with an :class:`~pyro_lfvi.LFVIWarning`. It helps with few data points,
    such as a single observation. It costs
    :data:`~pyro_lfvi.reweighting.POOL_FACTOR` times the draws' simulations
    and the copy's training to the end, also where the weights then
    collapse. ``reweight=False`` always returns the guide's draws, at no such
    cost; ``reweight=True`` requires the reweighting (an error without a
    checked ``lfvi`` whose estimator has a log likelihood).

    With ArviZ 0.x this is an :class:`arviz.InferenceData`; with ArviZ >= 1.0
    an :class:`xarray.DataTree` with the same groups.

    Example::

        >>> import pyro
        >>> from pyro_lfvi import LFVI, fit, to_inference_data
        >>> from pyro_lfvi.examples import ConjugateNormal
        >>> pyro.set_rng_seed(0)
        >>> pyro.clear_param_store()
        >>> problem = ConjugateNormal()  # model, guide and data
        >>> elbo = LFVI()
        >>> svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        >>> losses = fit(svi, problem.data, num_steps=3, progress=False, check=False)  # a demo
        >>> idata = to_inference_data(problem.model, problem.guide, problem.data,
        ...                           num_samples=100, num_chains=2, lfvi=elbo)
        >>> idata.posterior["mu"].shape  # (chain, draw)
        (2, 100)
        >>> idata.training_history["elbo"].shape  # one entry per training step
        (3,)

    ``arviz.summary(idata, var_names=["mu"])`` then tabulates the posterior.

    :param callable model: the model (with :class:`~pyro_lfvi.ImplicitSite` sites).
    :param callable guide: the fitted guide.
    :param args: the model's and guide's arguments.
    :param int num_samples: draws per chain.
    :param int num_chains: how many rows of ``num_samples`` independent draws
        to lay the draws out in (ArviZ expects a ``chain`` dimension; see
        above for what r-hat means here). Default 4.
    :param lfvi: the :class:`~pyro_lfvi.LFVI` used to fit, for its history.
    :param dict coords: coordinate values by dimension (plate) name.
    :param dict dims: dimension names by site, for its rightmost dimensions.
    :param bool prior: also draw ``prior`` and ``prior_predictive``.
    :param var_names: the sites to convert (default: every latent and observed
        site): latents go to ``posterior`` and ``prior``, observed sites to
        the predictive groups and ``observed_data``, which are left out when
        no observed site is named.
    :type var_names: list of str or None
    :param reweight: importance-resample the globals by the last
        :func:`~pyro_lfvi.check_ratio_estimator` of ``lfvi`` where it found a
        lag: ``"auto"`` (the default) where ``lfvi`` was checked and its
        estimator has a log likelihood (the contrastive or likelihood
        estimator), ``True`` requires it, ``False`` never.
    :type reweight: bool or str
    """
    num_samples = check_positive_int("num_samples", num_samples)
    num_chains = check_positive_int("num_chains", num_chains)
    if reweight not in (True, False, "auto"):
        raise ValueError(
            f"Expected reweight=True, False or 'auto', actual {reweight!r}: 'auto' (the default) "
            "reweights where the end-of-training check found a lag, True requires it, False "
            "returns the guide's draws"
        )
    check = getattr(lfvi, "estimator_check", None)
    if reweight == "auto":  # reweight=True, but only where it applies
        reweight = check is not None and check.log_ratios is not None
    if reweight and lfvi is None:
        raise ValueError(
            "Expected lfvi=<the LFVI instance used to fit> with reweight=True, actual None: "
            "the reweighting uses its end-of-training check"
        )
    if getattr(lfvi, "monitor", None) is not None:
        lfvi.monitor.check_convergence()  # type: ignore[union-attr]
    model_n = name_implicit_sites(model)
    guide_n = name_implicit_sites(guide)
    with poutine.block():
        g0 = poutine.trace(guide_n).get_trace(*args, **kwargs)
        m0 = poutine.trace(poutine.replay(model_n, trace=g0)).get_trace(*args, **kwargs)
    roles = classify_sites(m0, g0, None)
    latents = roles.global_ + roles.local
    observed = list(roles.observed)
    if var_names is not None:
        wanted = _wanted(var_names, latents + observed)
        latents = [n for n in latents if n in wanted]
        observed = [n for n in observed if n in wanted]
    # Only the globals: one minibatch of data points and no simulations.
    globals_only = not observed and all(n in roles.global_ for n in latents)
    dim = -plate_nesting(g0, m0) - 1
    subsampled = [
        (name, site)
        for name, site in m0.nodes.items()
        if site["type"] == "sample" and site_is_subsample(site) and name == roles.data_plate
    ]
    sub_site: Site | None = None
    if subsampled and roles.num_points < roles.full_size:
        sub_name, sub_site = subsampled[0]
        chunks: list[torch.Tensor | None] = list(_chunks(roles.full_size, roles.num_points))
        if globals_only:
            chunks = chunks[:1]
    else:
        sub_name, sub_site, chunks = None, None, [None]

    draws = pyro.plate(_DRAWS, num_samples * num_chains, dim=dim)

    def run(fn: Callable[..., object], replayed: poutine.Trace, model_side: bool) -> poutine.Trace:
        """Trace ``fn`` for all draws at once, replaying the given sites."""
        fn = poutine.replay(draws(fn), trace=replayed)
        return poutine.trace(poutine.uncondition(fn) if model_side else fn).get_trace(
            *args, **kwargs
        )

    def replay_of(base: poutine.Trace, sites: Mapping[str, Site] | None) -> poutine.Trace:
        out = base.copy()
        for name, site in (sites or {}).items():
            if name not in out.nodes:  # the guide may hold the minibatch site too
                out.add_node(name, **site)
        return out

    # Globals are drawn with the first chunk and replayed for the others, so
    # that every chunk of data points shares the same draws of the globals.
    posterior, prior_tr = [], []
    post_globals: dict[str, Site] | None = None
    effective: float | None = None
    reweighted = False
    if reweight and check is not None and check.log_ratios and check.gain <= check.threshold:
        effective = 1.0  # the copy is no better than the estimator: nothing to correct
    elif reweight:
        assert lfvi is not None
        resampled, effective = reweighted_globals(
            lfvi, model, guide, *args, num_samples=num_samples * num_chains, **kwargs
        )
        reweighted = _enough(effective, num_samples * num_chains)
        if reweighted:
            with poutine.block():
                base = poutine.Trace()
                if sub_name is not None and sub_site is not None and chunks[0] is not None:
                    base.add_node(sub_name, **dict(sub_site, value=chunks[0]))
                g = run(guide_n, base, model_side=False)
            post_globals = {n: _with_draws(g.nodes[n], resampled[n], dim) for n in roles.global_}
    prior_globals: dict[str, Site] | None = None
    with poutine.block():
        for idx in chunks:
            base = poutine.Trace()
            if sub_name is not None and sub_site is not None and idx is not None:
                base.add_node(sub_name, **dict(sub_site, value=idx))
            g = run(guide_n, replay_of(base, post_globals), model_side=False)
            post_globals = post_globals or {n: g.nodes[n] for n in roles.global_}
            # The model simulates the observed sites only for the predictive groups.
            m = run(model_n, replay_of(base, dict(g.nodes)), True) if observed else g
            posterior.append((idx, m))
            if prior:
                p = run(model_n, replay_of(base, prior_globals), model_side=bool(observed))
                prior_globals = prior_globals or {n: p.nodes[n] for n in roles.global_}
                prior_tr.append((idx, p))

    plate = roles.data_plate
    groups = {
        "posterior": _dataset(_collect(posterior, latents, plate, True, num_chains), coords, dims)
    }
    if effective is not None:
        groups["posterior"].attrs["reweighted"] = int(reweighted)
        groups["posterior"].attrs["reweighted_effective_fraction"] = effective
    if observed:
        groups["posterior_predictive"] = _dataset(
            _collect(posterior, observed, plate, True, num_chains), coords, dims
        )
        groups["observed_data"] = _dataset(_observed(posterior, observed, plate), coords, dims)
    if prior:
        groups["prior"] = _dataset(
            _collect(prior_tr, latents, plate, True, num_chains), coords, dims
        )
        if observed:
            groups["prior_predictive"] = _dataset(
                _collect(prior_tr, observed, plate, True, num_chains), coords, dims
            )
    history = getattr(lfvi, "history", None)
    if history:
        groups["training_history"] = _history_dataset(history)
    return _assemble(groups)


def _enough(effective: float, wanted: int) -> bool:
    """Whether the reweighting's pool holds at least ``wanted`` effective draws; if
    not, warn that the guide's draws are kept."""
    pool = POOL_FACTOR * wanted
    if effective * pool >= wanted:
        return True
    warnings.warn(
        "to_inference_data kept the guide's draws instead of reweighting them by the "
        "end-of-training check's copy of the ratio estimator (the check found that the estimator "
        f"lagged behind the guide), since the reweighted posterior would rest on "
        f"about {effective * pool:.0f} effective draws of the {pool} it resamples {wanted} from "
        f"(effective sample size {effective:.1%}). The check's copy of the ratio estimator "
        "changes the likelihood of the data too much for importance weights to carry (with "
        "many data points, small errors per point add up). Do not trust these draws: the "
        "guide followed a lagging estimator. Train longer or give the ratio estimator faster "
        "updates (the check's warning says how), then convert again",
        LFVIWarning,
        stacklevel=4,  # _enough, to_inference_data, torch.no_grad's wrapper, the caller
    )
    return False


def _with_draws(site: Site, flat: torch.Tensor, dim: int) -> Site:
    """A copy of a global ``site`` traced under the draws plate (at ``dim``) whose
    value holds the given draws, ``(S, d)`` in the order of the pairings' rows."""
    value = value_of(site)
    event_dim = len(getattr(site["fn"], "event_shape", ()))
    axis = value.dim() - event_dim + dim
    moved = value.movedim(axis, 0)
    if flat.shape[0] != moved.shape[0] or flat[0].numel() != moved[0].numel():
        raise ValueError(
            f"Expected reweighted draws of global site '{site['name']}' of shape "
            f"({moved.shape[0]}, {moved[0].numel()}), actual {tuple(flat.shape)}"
        )
    draws = flat.to(value.dtype).reshape(moved.shape).movedim(0, axis)
    return cast("Site", {**site, "value": draws})


def _wanted(var_names: Sequence[str], sites: list[str]) -> set[str]:
    """``var_names`` as a set, checked against the model's sites."""
    if isinstance(var_names, str) or not all(isinstance(n, str) for n in var_names):
        raise ValueError(f"Expected var_names to be a list of site names, actual {var_names!r}")
    unknown = [n for n in var_names if n not in sites]
    if unknown or not var_names:
        raise ValueError(
            f"Expected var_names among the model's latent and observed sites {sites}, "
            f"actual {list(var_names)}"
        )
    return set(var_names)


def _observed(
    per_chunk: list[tuple[torch.Tensor | None, poutine.Trace]], names: list[str], plate: str | None
) -> dict[str, tuple[np.ndarray, list[str]]]:
    """The observations, from one draw of each chunk (they do not vary by draw)."""
    stripped = []
    for idx, trace in per_chunk:
        copy = poutine.Trace()
        for name in names:
            site = trace.nodes[name]
            obs = cast("SiteInfer", site["infer"])["obs"]
            copy.add_node(name, **dict(site, value=obs))
        stripped.append((idx, copy))
    return _collect(stripped, names, plate, False)
