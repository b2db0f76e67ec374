"""NoiseNetwork: shapes, randomness, location-scale form, gradients."""

import torch

from pyro_lfvi import NoiseNetwork


def test_one_draw_per_batch_element_broadcasting_inputs():
    net = NoiseNetwork(inputs=2)
    x, beta = torch.randn(5), torch.randn(3, 1)
    out = net(x, beta)
    assert out.shape == (3, 5)
    assert not torch.equal(net(x, beta), out)  # fresh noise each call


def test_location_scale_form_and_reparameterised_gradients():
    net = NoiseNetwork(inputs=0, location_scale=True)
    loc = torch.tensor([0.0, 10.0], requires_grad=True)
    scale = torch.tensor([1.0, 0.001], requires_grad=True)
    draws = torch.stack([net(loc, scale) for _ in range(200)])
    assert draws.shape == (200, 2)
    assert abs(float(draws[:, 1].detach().mean()) - 10.0) < 0.1
    draws.sum().backward()
    assert loc.grad is not None and torch.allclose(loc.grad, torch.tensor([200.0, 200.0]))
    assert scale.grad is not None
