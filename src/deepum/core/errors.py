"""The errors the pure core raises; deepum.errors re-exports them.

They live here so that core/ needs nothing outside itself, and are the very
classes users catch (``deepum.BudgetError`` is this ``BudgetError``).
"""

from __future__ import annotations


class DeepUMError(RuntimeError):
    """Base class of every error deepum raises on purpose."""


class BudgetError(DeepUMError, ValueError):
    """The budget cannot be parsed, is not positive, is surely a mistake, or exceeds the device."""
