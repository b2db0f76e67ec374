"""Argument checks shared by the package."""

from __future__ import annotations

import numbers
from typing import Any

__all__ = [
    "check_nonnegative_int",
    "check_positive_int",
    "check_positive_number",
]


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"Expected {name} to be an integer >= 1, actual {value!r}")
    return int(value)


def check_nonnegative_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"Expected {name} to be an integer >= 0, actual {value!r}")
    return int(value)


def check_positive_number(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise ValueError(f"Expected {name} to be a number > 0, actual {value!r}")
    return float(value)
