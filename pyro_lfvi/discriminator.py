r"""The ratio estimator :math:`r(x_n, z_n, \beta)`: a classifier's logit.

A discriminator is any :class:`torch.nn.Module` whose ``forward`` takes three
dicts keyed by site name and returns one logit per data point:

* ``observed[name]``: shape ``(P, M, d)``, one row per data point;
* ``local[name]``: shape ``(P, M, d)``, the local latents of each data point;
* ``global_[name]``: shape ``(P, d)``, the global latents;
* returns: shape ``(P, M)``.

``P`` is the number of vectorised particles (1 otherwise), ``M`` the number of
data points in the minibatch, ``d`` the flattened size of one data point's value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .errors import DiscriminatorError
from .validation import check_positive_int, check_sizes

__all__ = ["MLPDiscriminator", "Summary", "checked_summary", "concat_features", "mlp"]

Summary = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]
"""Summary statistics of the observed rows: ``{name: (P, M, d)} -> {name: (P, M, k)}``."""


def checked_summary(
    summary: Summary, observed: Mapping[str, torch.Tensor]
) -> Mapping[str, torch.Tensor]:
    """Apply a user's ``summary`` to observed rows, checking what it returns."""
    try:
        out = summary(observed)
    except Exception as err:
        raise DiscriminatorError(
            f"The summary function raised {type(err).__name__}: {err}. It receives a "
            f"dict of observed rows of shape (particles, points, features) and must "
            f"return a dict of tensors of shape (particles, points, k)"
        ) from err
    lead = next(iter(observed.values())).shape[:-1]
    if not isinstance(out, Mapping) or not out:
        raise DiscriminatorError(
            f"Expected summary to return a non-empty dict of tensors, actual {type(out).__name__}"
        )
    for name, value in out.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 3 or value.shape[:-1] != lead:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else value
            raise DiscriminatorError(
                f"Expected summary['{name}'] to have shape {(*lead, 'k')} (particles, "
                f"points, k), actual {shape}"
            )
    return out


def concat_features(
    observed: Mapping[str, torch.Tensor],
    local: Mapping[str, torch.Tensor],
    global_: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Concatenate per-point features, broadcasting globals over data points."""
    rows = list(observed.values()) + list(local.values())
    lead = rows[0].shape[:-1]
    for value in global_.values():
        rows.append(value.unsqueeze(-2).expand(lead + value.shape[-1:]))
    return torch.cat(rows, dim=-1)


def mlp(
    input_size: int, hidden_sizes: Sequence[int], activation: type[nn.Module] = nn.ELU
) -> nn.Sequential:
    """A multilayer perceptron from ``input_size`` features to one output."""
    layers: list[nn.Module] = []
    size = input_size
    for width in hidden_sizes:
        layers += [nn.Linear(size, int(width)), activation()]
        size = int(width)
    layers.append(nn.Linear(size, 1))
    return nn.Sequential(*layers)


class MLPDiscriminator(nn.Module):
    r"""
    The default ratio estimator: a multilayer perceptron on the concatenated
    per-data-point features ``[x_n, z_n, beta]``, with inputs standardised by
    a fixed affine map fitted to the first batch of both joints.

    The standardisation matters because the global latents vary over a range
    as narrow as the posterior; it is stored as parameters (never trained) so
    that it is saved and restored with Pyro's param store.

    :param int input_size: number of features per data point (after
        ``summary``).
    :param hidden_sizes: widths of the hidden layers.
    :type hidden_sizes: sequence of int
    :param activation: activation module class (default :class:`torch.nn.ELU`).
    :param callable summary: optional summary statistics of the observed
        sites, ``summary(observed) -> observed`` on dicts of ``(P, M, d)``
        rows, applied before the network sees them (see :class:`~pyro_lfvi.LFVI`).
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.ELU,
        summary: Summary | None = None,
    ) -> None:
        super().__init__()
        self.summary = summary
        input_size = check_positive_int("input_size", input_size)
        self.net = mlp(input_size, check_sizes("hidden_sizes", hidden_sizes), activation)
        # Row 0: location, row 1: scale. A parameter (never trained: it is
        # detached in forward) so that Pyro's param store saves it.
        self.standardization = nn.Parameter(
            torch.stack([torch.zeros(input_size), torch.ones(input_size)])
        )

    @torch.no_grad()
    def fit_standardization(self, *feature_batches: torch.Tensor) -> None:
        """Set the input standardisation from batches of features ``(..., d)``."""
        feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feature_batches])
        std = feats.std(0) if feats.shape[0] > 1 else torch.ones_like(feats[0])
        self.standardization[0].copy_(feats.mean(0))
        self.standardization[1].copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def forward(
        self,
        observed: Mapping[str, torch.Tensor],
        local: Mapping[str, torch.Tensor],
        global_: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        if self.summary is not None:
            observed = self.summary(observed)
        feats = concat_features(observed, local, global_)
        loc, scale = self.standardization.detach()
        feats = (feats - loc) / scale
        return self.net(feats).squeeze(-1)
