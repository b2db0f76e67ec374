"""Every dependency on Pyro beyond ``pyro.infer``'s exports still holds.

These tests fail, by name, when a Pyro upgrade moves a class or rewords one of
the error messages that :mod:`pyro_lfvi.compat` reads.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_lfvi import LFVI
from pyro_lfvi.compat import (
    ELBOModule,
    Messenger,
    duplicate_site_name,
    elbo_of,
    plate_shape_mismatch,
    site_is_subsample,
    zero_size_plate,
)


def test_elbo_call_returns_an_elbo_module():
    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0))

    assert isinstance(pyro.infer.Trace_ELBO()(model, model), ELBOModule)
    assert isinstance(LFVI()(model, model), ELBOModule)


def test_messenger_is_pyros_handler_base():
    assert isinstance(poutine.trace(lambda: None).msngr, Messenger)


def test_duplicate_site_message():
    def twice():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("a", dist.Normal(0.0, 1.0))

    with pytest.raises(RuntimeError) as info:
        poutine.trace(twice).get_trace()
    assert duplicate_site_name(info.value) == "a"
    assert duplicate_site_name(RuntimeError("something else")) is None


def test_plate_shape_mismatch_message():
    with pytest.raises(ValueError) as info, pyro.plate("data", 8):
        pyro.sample("x", dist.Normal(torch.zeros(3), 1.0))
    found = plate_shape_mismatch(info.value)
    assert found is not None
    assert (found.plate, found.site, found.dim, found.plate_size, found.site_size) == (
        "data",
        "x",
        -1,
        8,
        3,
    )
    assert plate_shape_mismatch(ValueError("other")) is None


def test_zero_size_plate_message():
    with pytest.raises(ZeroDivisionError) as info, pyro.plate("data", 0):
        pass
    assert zero_size_plate(info.value)
    assert not zero_size_plate(ZeroDivisionError("division by zero"))


def test_subsample_site_is_recognised():
    def model():
        with pyro.plate("data", 10, subsample_size=3):
            pyro.sample("x", dist.Normal(0.0, 1.0))

    trace = poutine.trace(model).get_trace()
    assert site_is_subsample(trace.nodes["data"])
    assert not site_is_subsample(trace.nodes["x"])


def test_svi_keeps_its_elbo_reachable():
    elbo = LFVI()
    svi = pyro.infer.SVI(lambda: None, lambda: None, pyro.optim.Adam({}), elbo)
    assert elbo_of(svi) is elbo
    assert elbo_of(object()) is None
