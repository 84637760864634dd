"""Budgets: how many bytes of device memory the process may hold."""

from __future__ import annotations

import numbers
import re

from .errors import BudgetError

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
    "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}
_PATTERN = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
# [Note: smallest budget]
# No training program fits in less than a MiB, while "budget=1" (meant as a
# GiB, or as the whole device) or "512" (meant as MiB) are easy slips that
# would otherwise run as a budget of a few bytes and fail later, far from the
# cause. Below this the budget is refused, naming the value and the units.
MIN_BUDGET = 1 << 20


def allocator_cap(budget: int, slack: int) -> int:
    """What the CUDA caching allocator may reserve under a budget: a little under it
    (``Thresholds.cap_slack``), never under half of it."""
    return max(budget - slack, budget // 2)


def release_limit(budget: int, limit: int, share: float, floor: int) -> int:
    """The most a step's demand may be for paging to stop: the budget less ``share`` of it
    (at least ``floor`` less), and never under the pager's ``limit`` ([Note: the release's
    margin] in core/dormancy.py)."""
    reserve = budget - limit
    return budget - min(reserve, max(int(budget * share), floor))


def parse_budget(budget: int | float | str, total: int) -> int:
    """Return the budget in bytes.

    ``budget`` is bytes (an int, numpy integers included), a string with units
    ("12GiB", "800MB", "1e9"), or a fraction of ``total`` (a float in (0, 1],
    or a string such as "0.5" or "50%"). ``total`` is the device's memory in
    bytes. Budgets under 1 MiB are refused as surely a mistake.
    """
    if isinstance(budget, bool):
        raise BudgetError(f"budget {budget!r} is a bool; give bytes, a size such as '12GiB', or a fraction such as 0.5")
    if isinstance(budget, numbers.Integral):
        nbytes = int(budget)
    elif isinstance(budget, numbers.Real):
        budget = float(budget)
        if not (0.0 < budget <= 1.0):
            raise BudgetError(
                f"budget {budget!r}: a float is a fraction of the device's memory and must be in (0, 1]; "
                "for bytes give an int or a string such as '12GiB'"
            )
        nbytes = int(budget * total)
    elif isinstance(budget, str):
        nbytes = _parse_string(budget, total)
    else:
        raise BudgetError(f"budget {budget!r} has type {type(budget).__name__}; give an int, float or str")
    if nbytes <= 0:
        raise BudgetError(f"budget {budget!r} is {nbytes} bytes; a budget must be positive")
    if nbytes < MIN_BUDGET:
        raise BudgetError(_too_small(budget, nbytes))
    if nbytes > total:
        raise BudgetError(
            f"budget {budget!r} ({nbytes} bytes) is larger than the device's {total} bytes; "
            "give a budget no larger than the device, or a fraction such as 0.9"
        )
    return nbytes


def _too_small(budget: int | float | str, nbytes: int) -> str:
    size = "one byte" if nbytes == 1 else f"{nbytes} bytes"
    bare = str(budget).strip()
    if _PATTERN.match(bare) and not _PATTERN.match(bare).group(2) and "." not in bare and float(bare) < 1024:
        unit = "GiB" if float(bare) < 64 else "MiB"  # devices hold tens of GiB
        guess = f"did you mean '{bare}{unit}' or a fraction like 0.5?"
    else:
        guess = "give a size such as '512MiB' or '12GiB', or a fraction like 0.5."
    return (f"budget={budget!r} is {size}; {guess} A budget under 1 MiB is surely a mistake: "
            "no training program fits in it")


def _parse_string(text: str, total: int) -> int:
    s = text.strip()
    if s.endswith("%"):
        try:
            pct = float(s[:-1])
        except ValueError:
            raise BudgetError(f"budget {text!r} is not a percentage such as '50%'") from None
        if not (0.0 < pct <= 100.0):
            raise BudgetError(f"budget {text!r}: a percentage must be in (0, 100]")
        return int(pct / 100.0 * total)
    m = _PATTERN.match(s)
    if not m:
        raise BudgetError(
            f"budget {text!r} cannot be parsed; examples: '12GiB', '800MB', '0.5' (half the device), '50%'"
        )
    number, unit = m.group(1), m.group(2).lower()
    if unit not in _UNITS:
        raise BudgetError(f"budget {text!r} has unknown unit {m.group(2)!r}; use B, KB, MB, GB, KiB, MiB, GiB or TiB")
    value = float(number)
    if value <= 0:
        raise BudgetError(f"budget {text!r} is not positive; a budget must be positive")
    if unit == "" and "." in number:
        # A bare decimal such as "0.5" reads as a fraction, as a float would.
        if not (0.0 < value <= 1.0):
            raise BudgetError(f"budget {text!r}: a bare decimal is a fraction and must be in (0, 1]")
        return int(value * total)
    return int(value * _UNITS[unit])
