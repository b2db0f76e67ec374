r"""Data-parallel LFVI across processes with :mod:`torch.distributed`.

LFVI scales to many observations by stochastic optimisation over minibatches
[1]; with several processes (ranks: CPU cores with the ``gloo`` backend, GPUs
with ``nccl``), each rank takes its own share of every minibatch, and

* the gradients of the guide and of the ratio estimator are averaged across
  ranks before the optimiser steps (:class:`DistributedOptim`), so that every
  rank takes the same step and the parameters stay identical;
* so are the ratio estimator's adaptive statistics, the running input
  standardisation of the default contrastive estimator
  (:func:`average_statistics`, which :class:`DistributedOptim` calls);
* rank 0 writes checkpoints and every rank resumes from them, each with its own
  random number streams (:func:`save_distributed_checkpoint`,
  :func:`load_distributed_checkpoint`).

**Why the average is the combined batch's gradient.** A rank whose share is
:math:`b` of the :math:`N` data points scales its sum over them by
:math:`N/b` (``pyro.plate("data", N, subsample=share)``), an unbiased estimate
of the ELBO. With :math:`W` ranks and equal shares :math:`b = B/W` (as
:func:`shard` cuts them), the average of their gradients is

.. math::

    \frac{1}{W} \sum_{r=1}^{W} \frac{N}{b} \sum_{n \in \text{share}_r} g_n
    = \frac{N}{B} \sum_{n \in \text{batch}} g_n,

the gradient of the combined minibatch of :math:`B` points; the terms of the
global latents are averaged over :math:`W` times as many particles. The ratio
estimator's loss is an average over simulations, so its averaged gradient is
that of all ranks' simulations together. What does not split over data points
(the self-normalisation of the ratio and the shuffled pairings of the
contrastive estimator) is computed within each rank's share: a step on
:math:`W` ranks is the average of :math:`W` single-process steps on the
shares, each with its own random draws, and not the same numbers as one
process drawing for the whole batch.

**Random streams.** Give each rank its own seed (``pyro.set_rng_seed(seed +
rank)``), so that the ranks draw different particles and simulations; draw the
combined minibatch from a generator seeded alike on every rank, and hand each
rank its :func:`shard`. Call :func:`broadcast_params` once after the params
exist (e.g. after one ``svi.evaluate_loss``), so that every rank starts from
rank 0's initial values; :class:`DistributedOptim` broadcasts any param it
has not seen before as well, but only after the step that created it.

Example (``torchrun --nproc_per_node=2 train.py``)::

    import pyro, torch
    import torch.distributed as dist
    from pyro_lfvi import LFVI
    from pyro_lfvi.distributed import DistributedOptim, broadcast_params, shard

    dist.init_process_group("gloo")  # "nccl" on GPUs
    pyro.set_rng_seed(dist.get_rank())  # each rank its own simulations
    batches = torch.Generator().manual_seed(0)  # the same minibatches everywhere
    elbo = LFVI()
    optim = DistributedOptim(pyro.optim.Adam({"lr": 0.01}), elbo)
    svi = pyro.infer.SVI(model, guide, optim, elbo)  # model(data, idx) uses
    #   pyro.plate("data", len(data), subsample=idx)
    svi.evaluate_loss(data, shard(torch.arange(200)))  # creates the params
    broadcast_params()
    for step in range(1000):
        svi.step(data, shard(torch.randperm(len(data), generator=batches)[:200]))

**From PyTorch Lightning**, as in Pyro's ``svi_lightning`` example:
``LFVI()(model, guide)`` is a :class:`torch.nn.Module` whose ``forward``
returns the loss, and which owns the ratio estimator's networks once it has
run. Lightning's DDP strategy then averages the gradients (and broadcasts rank
0's parameters when it wraps the module); the guide must keep its parameters
in the module (a :class:`~pyro.nn.PyroModule` such as ``AutoNormal``, with
``pyro.settings.set(module_local_params=True)``), the statistics are averaged
by :func:`average_statistics` in ``on_before_optimizer_step``, and
``find_unused_parameters=True`` because the standardisation gets no gradient.
Lightning's ``DistributedSampler`` hands each rank its share of every
minibatch; pass the indices to the model. ``tests/test_distributed.py`` runs
this on two CPU ranks::

    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy
    from pyro.infer.autoguide import AutoNormal

    class Plan(pl.LightningModule):
        def __init__(self, loss_fn):
            super().__init__()
            self.loss_fn = loss_fn

        def training_step(self, batch, batch_idx):
            return self.loss_fn(batch[0])  # model(idx): plate(..., subsample=idx)

        def on_before_optimizer_step(self, optimizer):
            average_statistics(self.loss_fn.elbo)

        def configure_optimizers(self):
            return torch.optim.Adam(self.loss_fn.parameters(), lr=0.01)

    pyro.settings.set(module_local_params=True)
    loss_fn = LFVI()(model, AutoNormal(model))
    loader = DataLoader(TensorDataset(torch.arange(N)), batch_size=100, shuffle=True)
    loss_fn(next(iter(loader))[0])  # creates the parameters before DDP wraps them
    strategy = DDPStrategy(find_unused_parameters=True)  # process_group_backend="gloo" on CPU
    pl.Trainer(strategy=strategy, devices=2, max_steps=1000).fit(Plan(loss_fn), loader)

References

[1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
    Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017),
    https://arxiv.org/abs/1702.08896
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pyro
import torch
import torch.distributed as dist
from pyro.optim import PyroOptim

from .checkpoint import (
    load_checkpoint,
    random_states,
    restore_random_states,
    save_checkpoint,
)
from .contrastive import StandardizedInputs, replay_from_state
from .elbo import LFVI
from .errors import CheckpointError
from .plain_state import plain_to_numpy

__all__ = [
    "DistributedOptim",
    "average_statistics",
    "barrier",
    "broadcast_params",
    "load_distributed_checkpoint",
    "rank_and_world_size",
    "save_distributed_checkpoint",
    "shard",
]

_RANKS_FORMAT = "pyro_lfvi.distributed.ranks"
_RANKS_SUFFIX = ".ranks"


def _active() -> bool:
    """Whether a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world_size() -> tuple[int, int]:
    """
    This process's rank and the number of ranks in the default process group:
    ``(0, 1)`` when :mod:`torch.distributed` is not initialised.

    :rtype: tuple[int, int]
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (``torch.distributed.barrier``); nothing in a single process."""
    if _active():
        dist.barrier()


def _device() -> torch.device:
    """Where the collectives' own tensors live: the current GPU with NCCL."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place, and return it."""
    dist.all_reduce(tensor)
    return tensor


def shard(
    indices: torch.Tensor, rank: int | None = None, world_size: int | None = None
) -> torch.Tensor:
    """
    This rank's share of a combined minibatch: the ``rank``-th of
    ``world_size`` equal, contiguous chunks of ``indices``.

    Every rank must pass the same ``indices`` (draw them from a generator
    seeded alike on every rank) and use its share as the plate's subsample,
    ``pyro.plate("data", N, subsample=share)``. The shares are equal so that
    the average of the ranks' gradients is the gradient of the combined
    minibatch (see :mod:`pyro_lfvi.distributed`).

    Example::

        >>> import torch
        >>> from pyro_lfvi.distributed import shard
        >>> shard(torch.arange(6), rank=1, world_size=3)
        tensor([2, 3])

    :param torch.Tensor indices: the combined minibatch, a 1-D tensor of data
        indices whose length is a multiple of ``world_size``.
    :param int rank: this rank (default: from :mod:`torch.distributed`, 0
        without a process group).
    :param int world_size: the number of ranks (default: from
        :mod:`torch.distributed`, 1 without a process group).
    :returns: the ``len(indices) // world_size`` indices of this rank.
    :rtype: torch.Tensor
    """
    if not isinstance(indices, torch.Tensor) or indices.dim() != 1:
        shape = tuple(indices.shape) if isinstance(indices, torch.Tensor) else None
        raise ValueError(
            f"Expected indices to be a 1-D tensor of data indices, actual "
            f"{type(indices).__name__ if shape is None else f'a tensor of shape {shape}'}: "
            f"pass the combined minibatch, e.g. torch.randperm(N, generator=g)[:B]"
        )
    if (rank is None) != (world_size is None):
        raise ValueError(
            f"Expected both rank and world_size, or neither (then torch.distributed gives "
            f"them), actual rank={rank!r}, world_size={world_size!r}"
        )
    if rank is None or world_size is None:
        rank, world_size = rank_and_world_size()
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"Expected world_size to be an int >= 1, actual {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"Expected rank to be an int in [0, {world_size}), actual {rank!r}")
    size = indices.shape[0]
    if size == 0 or size % world_size:
        raise ValueError(
            f"Expected a minibatch whose size is a positive multiple of the world size "
            f"{world_size}, actual {size}: with unequal shares the average of the ranks' "
            f"gradients is not the combined minibatch's; choose a batch size divisible by "
            f"{world_size}"
        )
    share = size // world_size
    return indices[rank * share : (rank + 1) * share]


class _Sync:
    """Checks that the ranks hold the same parameters, and broadcasts new ones."""

    def __init__(self) -> None:
        self.checked: set[tuple[Any, ...]] = set()
        self.seen: set[torch.Tensor] = set()

    @staticmethod
    def order(params: Iterable[torch.Tensor]) -> tuple[list[torch.Tensor], list[str]]:
        """The params in an order that is the same on every rank, and their names."""
        given = list(params)
        store = pyro.get_param_store()
        names = [store.param_name(p) for p in given]
        if all(name is not None for name in names):
            pairs = sorted(zip(names, given, strict=True), key=lambda pair: str(pair[0]))
            return [p for _, p in pairs], [str(n) for n, _ in pairs]
        if isinstance(params, (list, tuple)):
            return given, [f"#{i}" if n is None else n for i, n in enumerate(names)]
        missing = sum(name is None for name in names)
        raise ValueError(
            f"Expected the parameters to step to be in Pyro's param store (then they are "
            f"ordered by name on every rank) or given as a list in the same order on every "
            f"rank, actual a {type(params).__name__} with {missing} parameter(s) not in the "
            f"store: register them with pyro.param or pyro.module"
        )

    def check(self, params: list[torch.Tensor], names: list[str], new: list[bool]) -> None:
        """Raise on every rank if the ranks do not step the same parameters."""
        key = tuple(
            (name, tuple(p.shape), str(p.dtype), fresh)
            for name, p, fresh in zip(names, params, new, strict=True)
        )
        if key in self.checked:
            return
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, key)
        for rank, other in enumerate(gathered):
            if other != key:
                mine = {k[0]: k[1:] for k in key}
                theirs = {k[0]: k[1:] for k in other}
                differ = sorted(n for n in set(mine) | set(theirs) if mine.get(n) != theirs.get(n))
                raise RuntimeError(
                    f"Expected every rank to step the same parameters (name, shape, dtype, "
                    f"first seen), actual rank {dist.get_rank()} and rank {rank} differ in "
                    f"{differ}: run the same model, guide and LFVI options on every rank"
                )
        self.checked.add(key)

    def broadcast(self, params: list[torch.Tensor]) -> None:
        """Copy rank 0's values of ``params`` to every rank."""
        for group in _by_dtype(params).values():
            flat = torch.cat([p.detach().reshape(-1) for p in group]).to(_device())
            dist.broadcast(flat, src=0)
            _unflatten(flat, group, lambda p, chunk: p.copy_(chunk))
        self.seen.update(params)


def _by_dtype(params: list[torch.Tensor]) -> dict[tuple[Any, Any], list[torch.Tensor]]:
    groups: dict[tuple[Any, Any], list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault((p.dtype, p.device), []).append(p)
    return groups


@torch.no_grad()
def _unflatten(
    flat: torch.Tensor,
    params: list[torch.Tensor],
    put: Callable[[torch.Tensor, torch.Tensor], object],
) -> None:
    start = 0
    for p in params:
        chunk = flat[start : start + p.numel()].reshape(p.shape).to(p.device)
        put(p, chunk)
        start += p.numel()


def broadcast_params() -> None:
    """
    Copy rank 0's values of every param in Pyro's param store to every rank
    (unconstrained values, in name order). Call it once after the params exist
    (e.g. after one ``svi.evaluate_loss``), so that the ranks start from the
    same initial values; nothing in a single process.
    """
    if not _active():
        return
    store = pyro.get_param_store()
    named = sorted(store.named_parameters(), key=lambda item: item[0])
    names, params = [n for n, _ in named], [p for _, p in named]
    sync = _Sync()
    sync.check(params, names, [False] * len(params))
    sync.broadcast(params)


def average_statistics(lfvi: LFVI) -> None:
    """
    Average the ratio estimator's adaptive statistics across ranks: the
    running input standardisation of the contrastive estimator (see
    :meth:`~pyro_lfvi.contrastive.StandardizedInputs.average_standardization`).
    The joint classifier's standardisation is fixed at its first batch and
    needs only :func:`broadcast_params`. :class:`DistributedOptim` given
    ``lfvi`` calls this before each step; call it yourself where another
    optimiser steps (e.g. in a Lightning module's ``on_before_optimizer_step``).
    Every rank must call it; nothing in a single process.

    :param ~pyro_lfvi.LFVI lfvi: the LFVI instance that trains on every rank.
    """
    if not isinstance(lfvi, LFVI):
        raise ValueError(
            f"Expected lfvi to be a pyro_lfvi.LFVI, actual {type(lfvi).__name__}: from a "
            f"Lightning module pass LFVI()(model, guide).elbo"
        )
    if not _active():
        return
    for module in _standardized_networks(lfvi):
        module.average_standardization(_sum_over_ranks)


def _standardized_networks(lfvi: LFVI | None) -> list[StandardizedInputs]:
    if lfvi is None or lfvi.estimator is None:
        return []
    modules = sorted(lfvi.estimator.modules().items())
    return [module for _, module in modules if isinstance(module, StandardizedInputs)]


def _statistics(lfvi: LFVI | None) -> list[torch.Tensor]:
    """The tensors that :func:`average_statistics` averages."""
    nets = _standardized_networks(lfvi)
    return [t for net in nets for t in (net.x_standardization, net.theta_standardization)]


class DistributedOptim(PyroOptim):
    """
    A :class:`pyro.optim.PyroOptim` that averages, across the ranks of the
    default :mod:`torch.distributed` process group, the gradients of the
    parameters it is about to step (and, given ``lfvi``, the ratio estimator's
    adaptive statistics, :func:`average_statistics`) and then lets ``optim``
    step them; a parameter it has not seen before first gets rank 0's value.
    Every rank thus takes the same step, that of the combined minibatch (see
    :mod:`pyro_lfvi.distributed`). Without a process group, or with one rank,
    it is ``optim`` itself.

    Gradient clipping and learning-rate decay of ``optim`` apply to the
    averaged gradient, as for a single process on the combined minibatch.
    Wrap ``LFVI(discriminator_optim=...)`` too, if you use one.

    Example::

        >>> import pyro
        >>> from pyro_lfvi import LFVI
        >>> from pyro_lfvi.distributed import DistributedOptim
        >>> elbo = LFVI()
        >>> optim = DistributedOptim(pyro.optim.Adam({"lr": 0.01}), elbo)
        >>> isinstance(optim, pyro.optim.PyroOptim)
        True

    :param pyro.optim.PyroOptim optim: the optimiser that steps.
    :param lfvi: the LFVI instance given to ``SVI``, whose adaptive statistics
        are averaged too (default None: gradients only).
    :type lfvi: ~pyro_lfvi.LFVI or None
    """

    def __init__(self, optim: PyroOptim, lfvi: LFVI | None = None) -> None:
        # No PyroOptim.__init__: the wrapped optimiser holds all the state.
        if isinstance(optim, DistributedOptim):
            raise ValueError(
                "Expected a pyro.optim optimiser to wrap, actual a DistributedOptim already: "
                "wrap the optimiser once"
            )
        if not isinstance(optim, PyroOptim):
            raise ValueError(
                f"Expected optim to be a pyro.optim optimiser (e.g. pyro.optim.Adam({{'lr': "
                f"0.01}})), actual {type(optim).__name__}"
            )
        if lfvi is not None and not isinstance(lfvi, LFVI):
            raise ValueError(
                f"Expected lfvi to be the pyro_lfvi.LFVI given to SVI, or None, actual "
                f"{type(lfvi).__name__}"
            )
        refine = getattr(getattr(lfvi, "estimator", None), "refine_steps", 0)
        if refine:
            raise ValueError(
                f"Expected a ratio estimator without refine_steps in data-parallel training, "
                f"actual refine_steps={refine}: its private optimiser's updates would differ "
                f"between ranks; build the estimator with refine_steps=0 (e.g. "
                f"ContrastiveRatioEstimator(refine_steps=0))"
            )
        self.optim = optim
        self.lfvi = lfvi
        self._sync = _Sync()

    def __getattr__(self, name: str) -> Any:
        # Only for attributes not set here: those of the wrapped optimiser.
        if name in ("optim", "lfvi", "_sync"):
            raise AttributeError(name)
        return getattr(self.optim, name)

    def __call__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """
        Average the gradients of ``params`` across ranks, then step them.

        :param params: the parameters to step (``SVI.step`` passes a set of
            param-store tensors).
        """
        if _active():
            ordered, names = self._sync.order(params)
            new = [p not in self._sync.seen for p in ordered]
            self._sync.check(ordered, names, new)
            # The statistics are averaged below: the step that created them has
            # already moved them on every rank.
            averaged = {id(t) for t in _statistics(self.lfvi)}
            fresh = [
                p
                for p, is_new in zip(ordered, new, strict=True)
                if is_new and id(p) not in averaged
            ]
            if fresh:
                self._sync.broadcast(fresh)
            self._sync.seen.update(ordered)
            self._average_grads(ordered)
            if self.lfvi is not None:
                average_statistics(self.lfvi)
        self.optim(params, *args, **kwargs)

    @staticmethod
    @torch.no_grad()
    def _average_grads(params: list[torch.Tensor]) -> None:
        world = dist.get_world_size()
        # Which params have a gradient on some rank: they get the average, with
        # zero from the ranks where they have none; the others stay without.
        present = torch.tensor([p.grad is not None for p in params], device=_device())
        present = _sum_over_ranks(present.to(torch.int64)) > 0
        stepped = [p for p, has in zip(params, present.tolist(), strict=True) if has]
        for group in _by_dtype(stepped).values():
            flat = torch.cat(
                [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in group]
            ).to(_device())
            _sum_over_ranks(flat).div_(world)

            def put(p: torch.Tensor, chunk: torch.Tensor) -> None:
                if p.grad is None:
                    p.grad = chunk.clone()
                else:
                    p.grad.copy_(chunk)

            _unflatten(flat, group, put)

    def get_state(self) -> dict[str, Any]:
        """The wrapped optimiser's state (:meth:`pyro.optim.PyroOptim.get_state`)."""
        return self.optim.get_state()

    def set_state(self, state_dict: dict[str, Any]) -> None:
        """Set the wrapped optimiser's state (:meth:`pyro.optim.PyroOptim.set_state`)."""
        self.optim.set_state(state_dict)

    def save(self, filename: str) -> None:
        """Save the wrapped optimiser's state (:meth:`pyro.optim.PyroOptim.save`)."""
        self.optim.save(filename)

    def load(self, filename: str, map_location: Any = None) -> None:
        """Load the wrapped optimiser's state (:meth:`pyro.optim.PyroOptim.load`)."""
        self.optim.load(filename, map_location=map_location)


def _ranks_path(path: str | os.PathLike[str]) -> str:
    return os.fspath(path) + _RANKS_SUFFIX


def _rng_state(generators: Mapping[str, np.random.Generator]) -> dict[str, Any]:
    states = random_states(generators)
    return {**states["rng"], "generators": states["generators"]}


def _raise_everywhere(error: BaseException | None, what: str) -> None:
    """Raise on every rank if ``what`` failed on any (so that none waits forever);
    in a single process, raise ``error`` if there is one."""
    if not _active():
        if error is not None:
            raise error
        return
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    for rank, message in enumerate(gathered):
        if message is not None:
            raise CheckpointError(f"Rank {rank} could not {what}: {message}")


def save_distributed_checkpoint(
    path: str | os.PathLike[str],
    optim: PyroOptim,
    lfvi: LFVI | None = None,
    *,
    generators: Mapping[str, np.random.Generator] | None = None,
) -> None:
    """
    Save a data-parallel run: rank 0 writes ``path`` with
    :func:`~pyro_lfvi.save_checkpoint` (params, optimiser, LFVI state and its
    own random number generators; the params and optimiser are the same on
    every rank) and ``path + ".ranks"``, the random number generators of every
    rank, so that each resumes its own streams. Every rank must call it (it
    gathers their generators and waits until the files are written); ``path``
    must be on a file system that every rank reads. In a single process it
    writes both files too.

    :param path: file to write (rank 0).
    :type path: str or os.PathLike
    :param pyro.optim.PyroOptim optim: the optimiser given to ``SVI``.
    :param lfvi: the LFVI instance, if any (its history and diagnostics are
        rank 0's).
    :type lfvi: ~pyro_lfvi.LFVI or None
    :param generators: numpy generators of the simulators, by name, as for
        :func:`~pyro_lfvi.save_checkpoint`; each rank's are saved.
    :type generators: mapping[str, numpy.random.Generator] or None
    """
    named = dict(generators or {})
    rank, world = rank_and_world_size()
    own = _rng_state(named)
    # Each rank replays its own simulations (the contrastive estimator's state).
    own["estimator"] = lfvi.estimator.state_dict() if lfvi and lfvi.estimator else {}
    states: list[Any] = [own]
    if _active():
        states = [None] * world
        dist.all_gather_object(states, own)
    error: BaseException | None = None
    if rank == 0:
        try:
            save_checkpoint(path, optim, lfvi, generators=generators)
            ranks = {"format": _RANKS_FORMAT, "world_size": world, "ranks": states}
            torch.save(ranks, _ranks_path(path))
        except Exception as err:  # reported to every rank below
            error = err
    _raise_everywhere(error, f"write checkpoint {os.fspath(path)!r}")


def load_distributed_checkpoint(
    path: str | os.PathLike[str],
    optim: PyroOptim,
    lfvi: LFVI | None = None,
    *,
    generators: Mapping[str, np.random.Generator] | None = None,
) -> None:
    """
    Resume a data-parallel run on every rank from the files that
    :func:`save_distributed_checkpoint` wrote: the params, optimiser and LFVI
    state (with :func:`~pyro_lfvi.load_checkpoint`), then this rank's own
    random number generators. Every rank must call it, with as many ranks as
    saved it; if it fails on one rank, it raises on all.

    :param path: the checkpoint file.
    :type path: str or os.PathLike
    :param pyro.optim.PyroOptim optim: the optimiser given to ``SVI``.
    :param lfvi: the LFVI instance, if any.
    :type lfvi: ~pyro_lfvi.LFVI or None
    :param generators: numpy generators to restore, by the names they were
        saved under.
    :type generators: mapping[str, numpy.random.Generator] or None
    :raises CheckpointError: if the files are not a checkpoint of this kind,
        were saved by another number of ranks, or do not match the run.
    """
    rank, world = rank_and_world_size()
    error: BaseException | None = None
    try:
        state = _read_rank_state(path, rank, world, dict(generators or {}))
        load_checkpoint(path, optim, lfvi, generators=generators)
        if lfvi is not None:
            lfvi.load_estimator_state(state["estimator"])
        restore_random_states(state, state["generators"], generators or {})
    except Exception as err:  # reported to every rank below
        error = err
    _raise_everywhere(error, f"load checkpoint {os.fspath(path)!r}")


def _read_rank_state(
    path: str | os.PathLike[str], rank: int, world: int, generators: dict[str, Any]
) -> dict[str, Any]:
    """This rank's generator states from ``path + ".ranks"``, checked and converted."""
    where = _ranks_path(path)

    def fail(problem: str, err: BaseException | None = None) -> CheckpointError:
        error = CheckpointError(
            f"Cannot load the per-rank state {where!r} of checkpoint {os.fspath(path)!r}: "
            f"{problem}; nothing was restored."
        )
        error.__cause__ = err
        return error

    try:
        saved = torch.load(where, weights_only=True)
    except Exception as err:
        raise fail(f"it cannot be read ({type(err).__name__}: {err})", err) from err
    if not isinstance(saved, dict) or saved.get("format") != _RANKS_FORMAT:
        raise fail(f"it is not a file of save_distributed_checkpoint (no {_RANKS_FORMAT!r})")
    if saved.get("world_size") != world or len(saved.get("ranks", ())) != world:
        raise fail(
            f"Expected a checkpoint saved by {world} rank(s), actual one saved by "
            f"{saved.get('world_size')!r}: resume with as many ranks as saved it"
        )
    state = saved["ranks"][rank]
    try:
        if set(state["generators"]) != set(generators):
            raise fail(
                f"Expected numpy generators {sorted(state['generators'])} as saved, actual "
                f"{sorted(generators)}"
            )
        converted = {
            "torch": state["torch"],
            "numpy": plain_to_numpy(state["numpy"]),
            "python": state["python"],
            "generators": {k: plain_to_numpy(v) for k, v in state["generators"].items()},
            # Absent from checkpoints written before the estimator had state.
            "estimator": state.get("estimator") or {},
        }
        if converted["estimator"]:
            replay_from_state(converted["estimator"])
        torch.Generator().set_state(converted["torch"])
        random.Random().setstate(converted["python"])
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise fail(f"rank {rank}'s generator states are not valid ({err})", err) from err
    return converted
