"""The few places where pyro-lfvi relies on more than ``pyro.infer``'s exports.

Each dependency on a Pyro name outside ``pyro.infer.__all__``, or on the text
of a Pyro error message, lives here, with the reason; ``tests/test_compat.py``
checks every one against the installed Pyro, so an upgrade that changes one
fails there, by name, rather than somewhere deep in training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

# ``ELBO.__call__(model, guide)`` returns an ``ELBOModule`` (the route PyTorch
# Lightning users take, as in Pyro's ``svi_lightning`` example); LFVI returns a
# subclass that also owns the ratio estimator's networks. Pyro documents the
# class but does not export it from ``pyro.infer``.
from pyro.infer.elbo import ELBOModule

# Pyro's base class for effect handlers, documented in ``pyro.poutine.messenger``
# but not re-exported by ``pyro.poutine``.
from pyro.poutine.messenger import Messenger

# Tells the sample site that a subsampled ``pyro.plate`` records for its
# indices from a latent or observed site; documented in ``pyro.poutine.util``.
from pyro.poutine.util import site_is_subsample

if TYPE_CHECKING:
    # The TypedDict of a trace's sites (``trace.nodes[name]``), in
    # ``pyro.poutine.runtime`` (Pyro 1.9) but not re-exported by
    # ``pyro.poutine``; imported for annotations only, as ``Site``. ``InferDict``
    # is the type of a site's ``infer`` entry there, ``SiteInfer`` here.
    from pyro.poutine.runtime import InferDict, Message

#: A site of a Pyro trace, ``trace.nodes[name]`` (for annotations).
Site: TypeAlias = "Message"
#: A site's ``infer`` dict, ``trace.nodes[name]["infer"]`` (for annotations).
SiteInfer: TypeAlias = "InferDict"

__all__ = [
    "ELBOModule",
    "Messenger",
    "PlateShapeMismatch",
    "Site",
    "SiteInfer",
    "duplicate_site_name",
    "elbo_of",
    "plate_shape_mismatch",
    "site_is_subsample",
    "zero_size_plate",
]

# Pyro's trace raises ``RuntimeError("Multiple sample sites named '...'")``
# (pyro/poutine/trace_struct.py) when a name is used twice.
_DUPLICATE_SITE = re.compile(r"Multiple sample sites named '([^']*)'")

# Pyro's plate raises ``ValueError("Shape mismatch inside plate('...') at site
# ... dim ..., ... vs ...")`` (pyro/poutine/broadcast_messenger.py) when a
# site's batch shape does not fit the plate.
_PLATE_MISMATCH = re.compile(
    r"Shape mismatch inside plate\('([^']*)'\) at site (\S+) dim (-?\d+), (\d+) vs (\d+)"
)


# Pyro's plate raises ``ZeroDivisionError("size cannot be zero")``
# (pyro/poutine/indep_messenger.py) for a plate of size zero.
_ZERO_SIZE = "size cannot be zero"


@dataclass(frozen=True)
class PlateShapeMismatch:
    """What Pyro's plate shape error says: plate, site, dim, plate size, site size."""

    plate: str
    site: str
    dim: int
    plate_size: int
    site_size: int


def duplicate_site_name(err: BaseException) -> str | None:
    """The site name of Pyro's duplicate-site error, or None for another error."""
    found = _DUPLICATE_SITE.match(str(err))
    return found.group(1) if isinstance(err, RuntimeError) and found else None


def plate_shape_mismatch(err: BaseException) -> PlateShapeMismatch | None:
    """The parts of Pyro's plate shape error, or None for another error."""
    found = _PLATE_MISMATCH.match(str(err))
    if not isinstance(err, ValueError) or found is None:
        return None
    plate, site, dim, plate_size, site_size = found.groups()
    return PlateShapeMismatch(plate, site, int(dim), int(plate_size), int(site_size))


def elbo_of(svi: Any) -> Any:
    """
    The ELBO object an :class:`~pyro.infer.SVI` was built with, or None.

    ``SVI`` keeps only the bound method ``loss`` of the ELBO it was given, not
    the object; ``__self__`` of that method is the object.
    """
    return getattr(getattr(svi, "loss", None), "__self__", None)


def zero_size_plate(err: BaseException) -> bool:
    """Whether ``err`` is Pyro's error for a plate of size zero (no data)."""
    return isinstance(err, ZeroDivisionError) and str(err) == _ZERO_SIZE
