"""Likelihood-free variational inference for hierarchical implicit models in Pyro."""

from .checkpoint import load_checkpoint, save_checkpoint
from .contrastive import ContrastiveRatioEstimator
from .diagnostics import LFVIWarning, TrainingMonitor
from .discriminator import MLPDiscriminator
from .elbo import LFVI
from .embeddings import ConvEmbedding, DeepSetEmbedding, MLPEmbedding, default_embedding
from .implicit import ImplicitDensityError, ImplicitSite, SimulatorError
from .inference_data import to_inference_data
from .joint import JointRatioEstimator
from .networks import NoiseNetwork
from .ratio import RatioEstimator, RatioObjectives
from .ratio_losses import hinge_loss, log_loss
from .training import fit, plot_history
from .validation import DiscriminatorError, ModelStructureError

__version__ = "0.1.0"

__all__ = [
    "LFVI",
    "ContrastiveRatioEstimator",
    "ConvEmbedding",
    "DeepSetEmbedding",
    "DiscriminatorError",
    "ImplicitDensityError",
    "ImplicitSite",
    "JointRatioEstimator",
    "LFVIWarning",
    "MLPDiscriminator",
    "MLPEmbedding",
    "ModelStructureError",
    "NoiseNetwork",
    "RatioEstimator",
    "RatioObjectives",
    "SimulatorError",
    "TrainingMonitor",
    "default_embedding",
    "fit",
    "hinge_loss",
    "load_checkpoint",
    "log_loss",
    "plot_history",
    "save_checkpoint",
    "to_inference_data",
]
