"""Every error and warning class of pyro-lfvi, in one place.

Each error for bad input subclasses :class:`ValueError` (or, for a density
that does not exist, :class:`NotImplementedError`), so that code catching the
builtin keeps working; each message names the offending site, shape or value,
states what was expected and says what to do instead.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DiscriminatorError",
    "ImplicitDensityError",
    "LFVIWarning",
    "ModelStructureError",
    "SimulatorError",
]


class ModelStructureError(ValueError):
    """Raised when a model or guide cannot be paired for LFVI (the message says why)."""


class DiscriminatorError(ValueError):
    """Raised when a ratio estimator returns something LFVI cannot use."""


class SimulatorError(ValueError):
    """Raised when a simulator returns a value of the wrong shape, or NaN or inf."""


class ImplicitDensityError(NotImplementedError):
    """Raised when something asks an :class:`~pyro_lfvi.ImplicitSite` for a density."""


class CheckpointError(ValueError):
    """Raised when a checkpoint cannot be loaded safely or does not match the run."""


class LFVIWarning(UserWarning):
    """A training diagnostic: LFVI's estimates should not be trusted yet."""
