"""Likelihood-free variational inference for hierarchical implicit models in Pyro."""

from importlib.metadata import PackageNotFoundError, version

from .checkpoint import load_checkpoint, save_checkpoint
from .contrastive import ContrastiveRatioEstimator
from .diagnostics import TrainingMonitor
from .discriminator import MLPDiscriminator
from .elbo import LFVI
from .embeddings import ConvEmbedding, DeepSetEmbedding, MLPEmbedding, default_embedding
from .errors import (
    CheckpointError,
    DiscriminatorError,
    ImplicitDensityError,
    LFVIWarning,
    ModelStructureError,
    SimulatorError,
)
from .estimator_check import EstimatorCheck, check_ratio_estimator
from .history import History
from .implicit import ImplicitSite
from .inference_data import to_inference_data
from .joint import JointRatioEstimator
from .likelihood import LikelihoodEstimator
from .networks import NoiseNetwork
from .ratio import RatioEstimator, RatioObjectives
from .ratio_losses import hinge_loss, log_loss
from .reweighting import reweighted_globals
from .stationarity import Stationarity, check_stationarity
from .training import fit, plot_history

try:
    __version__ = version("pyro-lfvi")  # one source: pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "LFVI",
    "CheckpointError",
    "ContrastiveRatioEstimator",
    "ConvEmbedding",
    "DeepSetEmbedding",
    "DiscriminatorError",
    "EstimatorCheck",
    "History",
    "ImplicitDensityError",
    "ImplicitSite",
    "JointRatioEstimator",
    "LFVIWarning",
    "LikelihoodEstimator",
    "MLPDiscriminator",
    "MLPEmbedding",
    "ModelStructureError",
    "NoiseNetwork",
    "RatioEstimator",
    "RatioObjectives",
    "SimulatorError",
    "Stationarity",
    "TrainingMonitor",
    "check_ratio_estimator",
    "check_stationarity",
    "default_embedding",
    "fit",
    "hinge_loss",
    "load_checkpoint",
    "log_loss",
    "plot_history",
    "reweighted_globals",
    "save_checkpoint",
    "to_inference_data",
]
