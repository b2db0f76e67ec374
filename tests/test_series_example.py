"""PooledSeries.exact: the integrated posterior against a brute-force grid on the twin."""

import pyro.distributions as dist
import pytest
import torch

from pyro_lfvi.examples.series import PooledSeries


@pytest.mark.parametrize("num_series", [5, 40])
def test_exact_posterior_matches_a_grid_over_both_globals(num_series):
    torch.manual_seed(0)
    problem = PooledSeries(num_series=num_series, length=20)
    exact = problem.exact()
    # Brute force: the twin's log density on a 2-D grid of (a, log sigma), +-8 sds
    # of the integrated answer, straight from the densities (no sufficient statistics).
    state = problem.data[..., 0].double().reshape(-1)
    prev = torch.cat([torch.ones(num_series, 1), problem.data[:, :-1, 0]], -1).double()
    prev = prev.reshape(-1)
    (a_m, a_s), (s_m, s_s) = exact["a"], exact["log_sigma"]
    a = a_m + a_s * torch.linspace(-8, 8, 321, dtype=torch.float64)
    ls = s_m + s_s * torch.linspace(-8, 8, 321, dtype=torch.float64)
    A, LS = a.view(-1, 1, 1), ls.view(1, -1, 1)
    log_p = dist.Normal(A * prev, LS.exp()).log_prob(state).sum(-1)
    log_p = log_p + dist.Normal(0.5, 0.3).log_prob(A[..., 0])
    log_p = log_p + dist.Normal(0.0, 0.5).log_prob(LS[..., 0])  # LogNormal in log sigma
    w = torch.softmax(log_p.reshape(-1), 0).reshape(log_p.shape)
    for name, values, weights in (("a", a, w.sum(1)), ("log_sigma", ls, w.sum(0))):
        mean = (weights * values).sum()
        sd = ((weights * values**2).sum() - mean**2).sqrt()
        ref_mean, ref_sd = exact[name]
        assert abs(float(mean - ref_mean)) < 0.01 * float(ref_sd), name
        assert abs(float(sd / ref_sd) - 1) < 0.01, name
