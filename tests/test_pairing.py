"""Pairing the joints: helpers of pyro_lfvi.pairing."""

import pytest
import torch

from pyro_lfvi.pairing import _tail_quantiles


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num", [1, 2, 3, 100, 512, 5000])
def test_tail_quantiles_equal_torch_quantile_bit_for_bit(num, dtype):
    # The prior's range is taken from these every step: a partial sort that must give
    # exactly torch.quantile's 0.1% and 99.9% quantiles (ties included), so that the
    # clamp of the training globals and every fit's random stream stay as they were.
    for trial in range(10):
        flat = (torch.randn(num, 8) * torch.rand(8) * 10).to(dtype)
        if trial % 2:
            flat = flat.round()  # ties
        expected = torch.quantile(flat, torch.tensor([0.001, 0.999], dtype=dtype), dim=0)
        low, high = _tail_quantiles(flat)
        assert torch.equal(low, expected[0]) and torch.equal(high, expected[1])
