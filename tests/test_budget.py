import re

import pytest

from deepum.core.budget import parse_budget
from deepum.errors import BudgetError

GiB = 1 << 30
TOTAL = 80 * GiB


@pytest.mark.parametrize("budget,expected", [
    (12 * GiB, 12 * GiB),
    ("12GiB", 12 * GiB),
    ("12 GiB", 12 * GiB),
    ("800MB", 800_000_000),
    ("1.5gib", int(1.5 * GiB)),
    ("1e9", 1_000_000_000),
    (0.5, 40 * GiB),
    ("0.25", 20 * GiB),
    ("50%", 40 * GiB),
    (1.0, TOTAL),
    (1 << 20, 1 << 20),
])
def test_parses(budget, expected):
    assert parse_budget(budget, TOTAL) == expected


@pytest.mark.parametrize("budget,words", [
    ("lots", "cannot be parsed"),
    ("12 parsecs", "unknown unit"),
    (0, "must be positive"),
    (-5, "must be positive"),
    ("-5", "must be positive"),
    ("-1GiB", "must be positive"),
    (1, "budget=1 is one byte; did you mean '1GiB' or a fraction like 0.5"),
    ("512", "did you mean '512MiB'"),
    ("600KB", "under 1 MiB is surely a mistake"),
    ((1 << 20) - 1, "under 1 MiB is surely a mistake"),
    ("0GiB", "must be positive"),
    (1.5, "fraction"),
    (0.0, "fraction"),
    ("150%", "percentage"),
    (True, "bool"),
    ([1], "type list"),
    ("100GiB", "larger than the device"),
    (TOTAL + 1, "larger than the device"),
])
def test_rejects_with_a_reason(budget, words):
    with pytest.raises(BudgetError, match=re.escape(words)):
        parse_budget(budget, TOTAL)


def test_numpy_numbers_are_accepted():
    np = pytest.importorskip("numpy")
    assert parse_budget(np.int64(12 * GiB), TOTAL) == 12 * GiB
    assert parse_budget(np.float32(0.5), TOTAL) == 40 * GiB


def test_the_core_error_is_the_public_one():
    import deepum
    from deepum.core import errors

    assert errors.BudgetError is deepum.BudgetError and issubclass(errors.BudgetError, deepum.DeepUMError)
