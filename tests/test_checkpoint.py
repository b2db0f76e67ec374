"""Resuming from a checkpoint continues bit for bit; a seed reproduces a whole fit."""

import pyro
import torch

from pyro_lfvi import LFVI, load_checkpoint, save_checkpoint
from pyro_lfvi.examples import HierarchicalNormal


def new_run():
    problem = HierarchicalNormal(num_groups=6, batch_size=3)
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.999})
    elbo = LFVI()
    svi = pyro.infer.SVI(problem.model, problem.guide, optim, elbo)
    return problem, optim, elbo, svi


def params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_resume_matches_uninterrupted_run_bit_for_bit(tmp_path):
    steps = 20
    pyro.set_rng_seed(3)
    problem, _, elbo, svi = new_run()
    for _ in range(steps):
        svi.step(problem.data)
    uninterrupted, history = params(), list(elbo.history)

    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    problem, optim, elbo, svi = new_run()
    for _ in range(steps // 2):
        svi.step(problem.data)
    save_checkpoint(tmp_path / "ckpt.pt", optim, elbo)

    # A fresh process would start here: new objects, empty store, other RNG state.
    pyro.clear_param_store()
    pyro.set_rng_seed(12345)
    _, optim, elbo, svi = new_run()
    load_checkpoint(tmp_path / "ckpt.pt", optim, elbo)
    for _ in range(steps - steps // 2):
        svi.step(problem.data)
    resumed = params()
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    assert elbo.history == history


def test_same_seed_reproduces_the_whole_fit_including_the_lazy_discriminator():
    fits = []
    for _ in range(2):
        pyro.clear_param_store()
        pyro.set_rng_seed(7)
        problem, _, elbo, svi = new_run()
        for _ in range(10):
            svi.step(problem.data)
        fits.append((params(), elbo.history))
    (a, ha), (b, hb) = fits
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ha == hb
