import os

import pyro
import pytest
import torch


def pytest_configure(config):
    """One intra-op thread for torch, here and in the processes tests start
    (notebook kernels, executors): the suite's tensors are small, so threads
    cost more than they save, and the default run then computes as the slow
    run (``OMP_NUM_THREADS=1``) does. A value the user set is kept."""
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Every test starts from an empty param store, validation on, a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    torch.set_default_dtype(torch.float32)
    yield
    pyro.clear_param_store()
