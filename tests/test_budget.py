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
])
def test_parses(budget, expected):
    assert parse_budget(budget, TOTAL) == expected


@pytest.mark.parametrize("budget,words", [
    ("lots", "cannot be parsed"),
    ("12 parsecs", "unknown unit"),
    (0, "must be positive"),
    (-5, "must be positive"),
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
    with pytest.raises(BudgetError, match=words):
        parse_budget(budget, TOTAL)
