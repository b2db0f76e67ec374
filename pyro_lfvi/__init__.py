"""Likelihood-free variational inference for hierarchical implicit models in Pyro."""

from .discriminator import MLPDiscriminator
from .elbo import LFVI
from .implicit import ImplicitDensityError, ImplicitSite, SimulatorError
from .ratio_losses import hinge_loss, log_loss
from .validation import DiscriminatorError, ModelStructureError

__version__ = "0.1.0"

__all__ = [
    "LFVI",
    "DiscriminatorError",
    "ImplicitDensityError",
    "ImplicitSite",
    "MLPDiscriminator",
    "ModelStructureError",
    "SimulatorError",
    "hinge_loss",
    "log_loss",
]
