"""Argument checks shared by the package."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

__all__ = [
    "check_shape",
    "check_sizes",
    "check_nonnegative_int",
    "check_positive_int",
    "check_positive_number",
]


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"Expected {name} to be an integer >= 1, actual {value!r}")
    return int(value)


def check_nonnegative_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"Expected {name} to be an integer >= 0, actual {value!r}")
    return int(value)


def check_positive_number(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise ValueError(f"Expected {name} to be a number > 0, actual {value!r}")
    return float(value)


def check_sizes(name: str, value: object) -> tuple[int, ...]:
    """Return ``value`` as a tuple of ints >= 1, or raise ``ValueError`` naming ``name``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(
            f"Expected {name} to be a sequence of integers >= 1 (e.g. (64, 64)), actual {value!r}"
        )
    return tuple(check_positive_int(f"each of {name}", width) for width in value)


def check_shape(name: str, value: object) -> tuple[int, ...]:
    """Return ``value`` as a shape (a tuple of ints >= 0), or raise ``ValueError``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"Expected {name} to be a tuple of integers >= 0, actual {value!r}")
    return tuple(check_nonnegative_int(f"each entry of {name}", size) for size in value)
