"""deepum: train PyTorch models larger than the GPU.

DeepUM (ASPLOS 2023) as software paging: every aten operator is intercepted,
tensor storages are the pages, and a correlation prefetcher moves them between
device and pinned host memory ahead of need.
"""

from .api.session import Config, Session, current, disable, enable, oversubscribe
from .engine.intercept.host_access import resident
from .errors import (
    BudgetError,
    BudgetOvershootError,
    BudgetTooSmallError,
    DeepUMError,
    DeviceUnavailableError,
    HostMemoryError,
    OptionError,
    RestoreError,
    UnmanagedMemoryError,
    UnsupportedError,
)

__version__ = "0.1.0"

__all__ = [
    "BudgetError",
    "BudgetOvershootError",
    "BudgetTooSmallError",
    "Config",
    "DeepUMError",
    "DeviceUnavailableError",
    "HostMemoryError",
    "OptionError",
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
