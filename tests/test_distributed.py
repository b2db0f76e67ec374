"""Data-parallel LFVI (pyro_lfvi.distributed): two gloo processes on this machine.

One spawn of two ranks trains ConjugateNormal's model for a few steps and saves
what every rank holds after every step; the tests then compare

* the ranks with each other: the guide's params, the ratio estimator's weights
  and its running standardisation must be identical after every step;
* the ranks with a single-process reference (no process group, plain Adam):
  for each step it runs, one after the other, exactly the computations of the
  two ranks (each on its share of the combined minibatch, from the same
  standardisation, with that rank's random seed), averages their gradients
  and their standardisations as the ranks should, and steps. A step of two
  ranks is such an average: each rank's ELBO scales its share's sum by N/b, so
  the average gradient is the combined minibatch's (N/B times its sum); see
  pyro_lfvi.distributed. The comparison is exact (torch.equal): gloo sums two
  tensors as a + b, and both sides divide by 2;
* a resumed run with the uninterrupted one: rank 0 alone writes the
  checkpoint, both ranks load it, each gets its own random streams and its
  own replayed simulations back (the estimator replays the latest steps,
  ``replay=256``, each rank its own), and the next steps must match bit for
  bit.
"""

from __future__ import annotations

import doctest
import os
import socket
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from pyro import poutine

import pyro_lfvi.distributed as lfvi_dist
from pyro_lfvi import LFVI, ContrastiveRatioEstimator, ImplicitSite
from pyro_lfvi.contrastive import ContrastiveNetwork
from pyro_lfvi.distributed import (
    DistributedOptim,
    average_statistics,
    barrier,
    broadcast_params,
    load_distributed_checkpoint,
    save_distributed_checkpoint,
    shard,
)
from pyro_lfvi.errors import CheckpointError
from pyro_lfvi.examples import ConjugateNormal

WORLD = 2
NUM_DATA = 64
BATCH = 16  # combined minibatch: 8 points per rank
LR = 0.05
COMPARED = 2  # steps compared with the single-process reference
RESUMED = 2  # steps after the checkpoint, run twice (uninterrupted and resumed)


def _problem() -> tuple[ConjugateNormal, Any, Any]:
    """ConjugateNormal's data and guide; the model subsamples the given indices."""
    torch.manual_seed(0)
    problem = ConjugateNormal(num_data=NUM_DATA, batch_size=BATCH)

    def model(data: torch.Tensor, idx: torch.Tensor) -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, problem.prior_scale))
        with pyro.plate("data", NUM_DATA, subsample=idx):
            pyro.sample("x", ImplicitSite(problem.simulate, mu), obs=data[idx])

    def guide(data: torch.Tensor, idx: torch.Tensor) -> None:
        problem.guide(data)

    return problem, model, guide


def _batches() -> Any:
    """The combined minibatches, the same on every rank."""
    gen = torch.Generator().manual_seed(1)
    while True:
        yield torch.randperm(NUM_DATA, generator=gen)[:BATCH]


def _step_seed(step: int, rank: int) -> int:
    return 1000 * (step + 1) + rank


def _snapshot(elbo: LFVI) -> dict[str, torch.Tensor]:
    """Every param (unconstrained), and whether the standardisation is fitted."""
    out = {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}
    net = elbo.estimator.network  # type: ignore[union-attr]
    out["fitted"] = torch.tensor(net.fitted)
    return out


def _worker(rank: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    pyro.enable_validation(True)
    tdist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        _train(rank, outdir)
    finally:
        tdist.destroy_process_group()


def _lfvi() -> LFVI:
    """8 particles x 8 points a rank: replay holds 4 steps, so each rank's own matter."""
    return LFVI(num_particles=8, estimator=ContrastiveRatioEstimator(replay=256))


def _train(rank: int, outdir: str) -> None:
    problem, model, guide = _problem()
    data = problem.data
    batches = _batches()
    elbo = _lfvi()
    optim = DistributedOptim(pyro.optim.Adam({"lr": LR}), elbo)
    svi = pyro.infer.SVI(model, guide, optim, elbo)
    pyro.set_rng_seed(100 + rank)  # each rank its own initial network
    svi.evaluate_loss(data, shard(next(batches)))
    net = elbo.estimator.network  # type: ignore[union-attr]
    initial_differs = not torch.equal(net.head[0].weight, net.head[0].weight.new_zeros(()))
    broadcast_params()
    records = {"initial": _snapshot(elbo), "initial_differs": initial_differs}
    for step in range(COMPARED):
        pyro.set_rng_seed(_step_seed(step, rank))
        svi.step(data, shard(next(batches)))
        records[f"step{step}"] = _snapshot(elbo)

    # Rank 0 alone writes the checkpoint: any other rank writing fails here.
    path = os.path.join(outdir, "run.pt")
    if rank != 0:

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise AssertionError(f"rank {rank} wrote a checkpoint")

        lfvi_dist.save_checkpoint = refuse  # type: ignore[assignment]
    save_distributed_checkpoint(path, optim, elbo)
    records["saved"] = os.path.exists(path) and os.path.exists(path + ".ranks")
    # The steps after it continue each rank's own random stream (no reseeding).
    for step in range(COMPARED, COMPARED + RESUMED):
        svi.step(data, shard(next(batches)))
        records[f"step{step}"] = _snapshot(elbo)

    # Resume in fresh objects; the minibatch generator is the caller's to restore.
    pyro.clear_param_store()
    torch.manual_seed(12345)  # whatever the streams are now, the checkpoint sets them
    elbo = _lfvi()
    optim = DistributedOptim(pyro.optim.Adam({"lr": LR}), elbo)
    svi = pyro.infer.SVI(model, guide, optim, elbo)
    load_distributed_checkpoint(path, optim, elbo)
    batches = _batches()
    for _ in range(1 + COMPARED):
        next(batches)
    for step in range(COMPARED, COMPARED + RESUMED):
        svi.step(data, shard(next(batches)))
        records[f"resumed{step}"] = _snapshot(elbo)

    # Error paths that need two ranks; each raises on every rank.
    extra = pyro.param(f"only_on_rank_{rank}", torch.zeros(1)).unconstrained()
    with pytest.raises(RuntimeError, match="Expected every rank to step the same parameters"):
        optim({extra})
    bad = os.path.join(outdir, "missing", "run.pt")
    if rank == 0:
        with pytest.raises(RuntimeError, match="does not exist"):
            save_distributed_checkpoint(bad, optim, elbo)
    else:
        with pytest.raises(CheckpointError, match="Rank 0 could not write checkpoint"):
            save_distributed_checkpoint(bad, optim, elbo)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_distributed_checkpoint(bad, optim, elbo)
    barrier()
    torch.save(records, os.path.join(outdir, f"rank{rank}.pt"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of two gloo ranks held after every step."""
    outdir = tmp_path_factory.mktemp("distributed")
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(_worker, args=(_free_port(), str(outdir)), nprocs=WORLD, join=True)
    finally:
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return [torch.load(outdir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _reference() -> dict[str, dict[str, torch.Tensor]]:
    """The ranks' steps computed in one process, shard by shard (see the module doc)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        problem, model, guide = _problem()
        data = problem.data
        batches = _batches()
        elbo = _lfvi()
        optim = pyro.optim.Adam({"lr": LR})
        store = pyro.get_param_store()
        pyro.set_rng_seed(100)  # rank 0's initialisation, which broadcast_params spreads
        elbo.loss(model, guide, data, shard(next(batches), 0, WORLD))
        net = elbo.estimator.network  # type: ignore[union-attr]
        assert isinstance(net, ContrastiveNetwork)
        rows = (net.x_standardization, net.theta_standardization)
        out = {"initial": _snapshot(elbo)}
        estimator = elbo.estimator
        assert estimator is not None
        replays = [estimator.state_dict() for _ in range(WORLD)]  # each rank replays its own
        for step in range(COMPARED):
            idx = next(batches)
            before = [row.detach().clone() for row in rows], net.fitted
            grads: list[dict[str, torch.Tensor | None]] = []
            stats: list[list[torch.Tensor]] = []
            for rank in range(WORLD):
                with torch.no_grad():
                    for row, saved in zip(rows, before[0], strict=True):
                        row.copy_(saved)
                net.fitted = before[1]
                pyro.set_rng_seed(_step_seed(step, rank))
                estimator.load_state_dict(replays[rank])
                with poutine.trace(param_only=True) as capture:
                    elbo.loss_and_grads(model, guide, data, shard(idx, rank, WORLD))
                replays[rank] = estimator.state_dict()
                params = {
                    store.param_name(site["value"].unconstrained()): site["value"].unconstrained()
                    for site in capture.trace.nodes.values()
                }
                grads.append(
                    {n: None if p.grad is None else p.grad.clone() for n, p in params.items()}
                )
                stats.append([row.detach().clone() for row in rows])
                for p in params.values():
                    p.grad = None
            for name, p in params.items():
                g0, g1 = grads[0][name], grads[1][name]
                if g0 is not None and g1 is not None:
                    p.grad = (g0 + g1) / 2
                else:
                    assert g0 is None and g1 is None, name
            with torch.no_grad():
                for i, row in enumerate(rows):
                    s0, s1 = stats[0][i], stats[1][i]
                    row[0].copy_((s0[0] + s1[0]) / 2)
                    row[1].copy_(((s0[1].log() + s1[1].log()) / 2).exp())
            optim(set(params.values()))
            for p in params.values():
                p.grad = None
            out[f"step{step}"] = _snapshot(elbo)
        return out
    finally:
        torch.set_num_threads(threads)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    differ = [name for name in a if not torch.equal(a[name], b[name])]
    assert not differ, f"{what}: {differ} differ"


def test_ranks_stay_identical(ranks: list[dict[str, Any]]) -> None:
    # The ranks initialised different networks, which broadcast_params unified.
    assert ranks[0]["initial_differs"] and ranks[1]["initial_differs"]
    steps = [f"step{s}" for s in range(COMPARED + RESUMED)]
    for key in ["initial", *steps]:
        _assert_same(ranks[0][key], ranks[1][key], f"ranks 0 and 1 at {key}")
    names = ranks[0]["step0"].keys()
    assert {"mu_loc", "mu_scale", "lfvi_ratio$$$x_standardization"} <= names
    assert bool(ranks[0]["step0"]["fitted"])
    # and training moved them
    moved = [n for n in names if not torch.equal(ranks[0]["initial"][n], ranks[0]["step1"][n])]
    assert "mu_loc" in moved and "lfvi_ratio$$$theta_standardization" in moved


def test_step_is_the_average_of_the_shards(ranks: list[dict[str, Any]]) -> None:
    reference = _reference()
    for key in ["initial", *(f"step{s}" for s in range(COMPARED))]:
        _assert_same(ranks[0][key], reference[key], f"rank 0 and the reference at {key}")


def test_checkpoint_written_by_rank_0_resumed_by_every_rank(ranks: list[dict[str, Any]]) -> None:
    for rank in ranks:
        assert rank["saved"]
        for step in range(COMPARED, COMPARED + RESUMED):
            _assert_same(rank[f"step{step}"], rank[f"resumed{step}"], f"resumed step {step}")
    # Each rank got its own random stream back: the ranks drew different
    # simulations after resuming, so their (identical) steps were not trivial.
    assert not torch.equal(ranks[0]["step2"]["mu_loc"], ranks[0]["step1"]["mu_loc"])


# -- a single process ------------------------------------------------------------


def test_single_process_is_unchanged() -> None:
    """Without a process group DistributedOptim is its optimiser, bit for bit."""
    problem, model, guide = _problem()
    results = []
    for wrap in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        elbo = LFVI(num_particles=8)
        optim = pyro.optim.Adam({"lr": LR})
        if wrap:
            optim = DistributedOptim(optim, elbo)
        svi = pyro.infer.SVI(model, guide, optim, elbo)
        batches = _batches()
        for _ in range(3):
            svi.step(problem.data, shard(next(batches)))
        broadcast_params()
        average_statistics(elbo)
        barrier()
        results.append(_snapshot(elbo))
    _assert_same(results[0], results[1], "with and without DistributedOptim")


def test_checkpoint_single_process(tmp_path: Any) -> None:
    problem, model, guide = _problem()
    elbo = LFVI(num_particles=8)
    optim = DistributedOptim(pyro.optim.Adam({"lr": LR}), elbo)
    svi = pyro.infer.SVI(model, guide, optim, elbo)
    batches = _batches()
    svi.step(problem.data, shard(next(batches)))
    path = tmp_path / "run.pt"
    save_distributed_checkpoint(path, optim, elbo)
    after = [svi.step(problem.data, shard(next(batches))) for _ in range(2)]
    load_distributed_checkpoint(path, optim, elbo)
    batches = _batches()
    next(batches)
    assert [svi.step(problem.data, shard(next(batches))) for _ in range(2)] == after

    ranks = torch.load(str(path) + ".ranks", weights_only=True)
    ranks["world_size"] = 2
    torch.save(ranks, str(path) + ".ranks")
    with pytest.raises(CheckpointError, match=r"saved by 1 rank\(s\), actual one saved by 2"):
        load_distributed_checkpoint(path, optim, elbo)
    torch.save({"something": "else"}, str(path) + ".ranks")
    with pytest.raises(CheckpointError, match="not a file of save_distributed_checkpoint"):
        load_distributed_checkpoint(path, optim, elbo)
    save_distributed_checkpoint(path, optim, elbo)
    rng = __import__("numpy").random.default_rng(0)
    with pytest.raises(CheckpointError, match=r"Expected numpy generators \[\] as saved"):
        load_distributed_checkpoint(path, optim, elbo, generators={"sim": rng})


def test_shard() -> None:
    idx = torch.arange(12)
    assert torch.equal(shard(idx), idx)  # one process: the whole minibatch
    parts = [shard(idx, r, 3) for r in range(3)]
    assert torch.equal(torch.cat(parts), idx)
    with pytest.raises(ValueError, match="positive multiple of the world size 5, actual 12"):
        shard(idx, 0, 5)
    with pytest.raises(ValueError, match="Expected indices to be a 1-D tensor"):
        shard(idx.reshape(3, 4), 0, 1)
    with pytest.raises(ValueError, match="Expected indices to be a 1-D tensor"):
        shard([0, 1], 0, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected both rank and world_size"):
        shard(idx, rank=0)
    with pytest.raises(ValueError, match="Expected rank to be an int in"):
        shard(idx, 3, 3)
    with pytest.raises(ValueError, match="Expected world_size to be an int >= 1"):
        shard(idx, 0, 0)


def test_bad_arguments() -> None:
    adam = pyro.optim.Adam({"lr": LR})
    with pytest.raises(ValueError, match=r"Expected optim to be a pyro\.optim optimiser"):
        DistributedOptim(torch.optim.Adam)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a DistributedOptim already"):
        DistributedOptim(DistributedOptim(adam))
    with pytest.raises(ValueError, match=r"Expected lfvi to be the pyro_lfvi\.LFVI"):
        DistributedOptim(adam, pyro.infer.Trace_ELBO())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Expected lfvi to be a pyro_lfvi\.LFVI"):
        average_statistics(LFVI()(lambda: None, lambda: None))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not in the store"):
        lfvi_dist._Sync.order({torch.zeros(1, requires_grad=True)})
    refining = LFVI(estimator=ContrastiveRatioEstimator(refine_steps=2))
    with pytest.raises(ValueError, match="without refine_steps in data-parallel training"):
        DistributedOptim(adam, refining)
    # The wrapper is a PyroOptim that delegates to the optimiser it wraps.
    wrapped = DistributedOptim(adam)
    assert wrapped.pt_optim_args == adam.pt_optim_args
    assert wrapped.get_state() == {}


def test_average_standardization_weights_the_fitted_ranks() -> None:
    """The average runs over the ranks that have fitted the standardisation."""
    problem, model, guide = _problem()
    elbo = LFVI(num_particles=8)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": LR}), elbo)
    svi.step(problem.data, shard(next(_batches())))
    net = elbo.estimator.network  # type: ignore[union-attr]
    assert isinstance(net, ContrastiveNetwork)
    rows = (net.x_standardization, net.theta_standardization)
    fitted = [row.detach().clone() for row in rows]
    # A second rank, fitted, at loc 1 and scale 4 for every feature: the packed
    # weight, then the location and log scale of x and of the latents.
    log4 = float(torch.tensor(4.0).log())
    other = torch.tensor([1.0, 1.0, log4, 1.0, log4])
    net.average_standardization(lambda t: t + other)
    for row, before in zip(rows, fitted, strict=True):
        assert torch.allclose(row[0], (before[0] + 1) / 2)
        assert torch.allclose(row[1], (before[1] * 4).sqrt())
    # Not fitted here: the fitted rank's values.
    net.fitted = False
    net.average_standardization(lambda t: t + other)
    assert net.fitted
    for row in rows:
        assert torch.allclose(row, torch.tensor([[1.0], [4.0]]))
    # Fitted nowhere: unchanged, still not fitted.
    net.fitted = False
    with torch.no_grad():
        rows[0].copy_(torch.tensor([[0.0], [1.0]]))
    net.average_standardization(lambda t: t)
    assert not net.fitted and torch.equal(rows[0], torch.tensor([[0.0], [1.0]]))


def test_docstring_examples_run() -> None:
    result = doctest.testmod(lfvi_dist, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# -- PyTorch Lightning: LFVI()(model, guide) in a LightningModule, on DDP ------------


def _lightning_worker(rank: int, port: int, outdir: str, average: bool) -> None:
    """One rank of Lightning's DDP, launched here as torchrun would (LOCAL_RANK set)."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy
    from pyro.infer.autoguide import AutoNormal

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD),
        NODE_RANK="0",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    pyro.settings.set(module_local_params=True)  # the guide's params live in the module
    torch.manual_seed(0)
    problem = ConjugateNormal(num_data=NUM_DATA)

    def model(idx: torch.Tensor) -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, problem.prior_scale))
        with pyro.plate("data", NUM_DATA, subsample=idx):
            pyro.sample("x", ImplicitSite(problem.simulate, mu), obs=problem.data[idx])

    class Plan(pl.LightningModule):
        def __init__(self, loss_fn: torch.nn.Module) -> None:
            super().__init__()
            self.loss_fn = loss_fn

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            return self.loss_fn(batch[0])  # this rank's share of the minibatch

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            if average:  # DDP has averaged the gradients; the statistics are ours
                average_statistics(self.loss_fn.elbo)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.loss_fn.parameters(), lr=LR)

    pyro.set_rng_seed(100 + rank)  # each rank its own simulations
    loss_fn = LFVI(num_particles=8)(model, AutoNormal(model))
    indices = torch.utils.data.TensorDataset(torch.arange(NUM_DATA))
    loader = torch.utils.data.DataLoader(indices, batch_size=BATCH // WORLD, shuffle=True)
    loss_fn(next(iter(loader))[0])  # creates the params before DDP wraps the module
    initial = {n: p.detach().clone() for n, p in loss_fn.named_parameters()}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy=DDPStrategy(process_group_backend="gloo", find_unused_parameters=True),
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Plan(loss_fn), train_dataloaders=loader)
    final = {n: p.detach().clone() for n, p in loss_fn.named_parameters()}
    out = {"initial": initial, "final": final, "steps": torch.tensor(len(loss_fn.elbo.history))}
    torch.save(out, os.path.join(outdir, f"lightning{rank}.pt"))


def test_lightning_ddp(tmp_path: Any) -> None:
    """Lightning's DDP averages the gradients; average_statistics the standardisation."""
    pytest.importorskip("lightning")
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(
            _lightning_worker, args=(_free_port(), str(tmp_path), True), nprocs=WORLD, join=True
        )
    finally:
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old
    ranks = [torch.load(tmp_path / f"lightning{r}.pt", weights_only=True) for r in range(WORLD)]
    # Each rank began from its own network; DDP started both from rank 0's.
    assert not torch.equal(
        ranks[0]["initial"]["ratio_estimator.lfvi_ratio.head.0.weight"],
        ranks[1]["initial"]["ratio_estimator.lfvi_ratio.head.0.weight"],
    )
    _assert_same(ranks[0]["final"], ranks[1]["final"], "Lightning ranks 0 and 1")
    assert int(ranks[0]["steps"]) == 1 + 3  # the warm-up call and three steps
    names = ranks[0]["final"].keys()
    assert {"guide.locs.mu_unconstrained", "ratio_estimator.lfvi_ratio.x_standardization"} <= names
    moved = [n for n in names if not torch.equal(ranks[0]["initial"][n], ranks[0]["final"][n])]
    assert set(moved) == set(names)
