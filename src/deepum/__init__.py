"""deepum: train PyTorch models larger than the GPU.

DeepUM (ASPLOS 2023) as software paging: every aten operator is intercepted,
tensor storages are the pages, and a correlation prefetcher moves them between
device and pinned host memory ahead of need.
"""

from .errors import (
    BudgetError,
    BudgetOvershootError,
    BudgetTooSmallError,
    DeepUMError,
    HostMemoryError,
    RestoreError,
    UnmanagedMemoryError,
    UnsupportedError,
)
from .host_access import resident
from .session import Session, current, disable, enable, oversubscribe

__version__ = "0.1.0"

__all__ = [
    "BudgetError",
    "BudgetOvershootError",
    "BudgetTooSmallError",
    "DeepUMError",
    "HostMemoryError",
    "RestoreError",
    "Session",
    "UnmanagedMemoryError",
    "UnsupportedError",
    "current",
    "disable",
    "enable",
    "oversubscribe",
    "resident",
]
