"""Intervals and paired tests against numbers worked out by hand for small tables."""

from __future__ import annotations

import math

import pytest

from tinyllm_ray.stats import (
    PairedTable, mcnemar_exact, newcombe_paired_interval, paired_comparison, wilson_interval,
)

Z = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_by_hand(x: int, n: int) -> tuple[float, float]:
    """(x + z^2/2) / (n + z^2) -/+ z / (n + z^2) * sqrt(x (n - x) / n + z^2 / 4)."""
    centre = (x + Z * Z / 2) / (n + Z * Z)
    half = Z / (n + Z * Z) * math.sqrt(x * (n - x) / n + Z * Z / 4)
    return centre - half, centre + half


@pytest.mark.parametrize("x,n,expected", [
    (4, 8, (0.2152, 0.7848)),   # centre 0.5, half 0.16552 * sqrt(2 + 0.96036) = 0.28478
    (5, 8, (0.3057, 0.8632)),   # centre 6.92073 / 11.84146 = 0.58445, half 0.16552 * sqrt(1.875 + 0.96036)
    (0, 10, (0.0, 0.2775)),     # centre = half = 1.92073 / 13.84146: the interval starts at 0
    (10, 10, (0.7225, 1.0)),
])
def test_wilson_interval_matches_the_formula(x, n, expected):
    low, high = wilson_interval(x, n)
    assert (low, high) == pytest.approx(expected, abs=5e-5)
    hand_low, hand_high = wilson_by_hand(x, n)
    assert low == pytest.approx(max(hand_low, 0.0), abs=1e-9) and high == pytest.approx(min(hand_high, 1.0), abs=1e-9)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    low, high = wilson_interval(4, 8, level=0.5)  # z = 0.67449: centre 0.5, half 0.67449 / 8.45494 * sqrt(2.11373)
    assert (low, high) == pytest.approx((0.3840, 0.6160), abs=5e-5)


@pytest.mark.parametrize("b,c,expected", [
    (1, 5, 14 / 64),   # 2 * P(X <= 1), X ~ Bin(6, 1/2) = 2 * (1 + 6) / 2^6
    (5, 1, 14 / 64),   # symmetric
    (0, 6, 2 / 64),    # 2 * (1/2)^6
    (3, 3, 1.0),       # capped at 1
    (2, 8, 112 / 1024),  # 2 * (1 + 10 + 45) / 2^10
    (0, 0, 1.0),       # no discordant problem: no evidence either way
])
def test_exact_mcnemar(b, c, expected):
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_paired_table_counts_the_four_outcomes():
    x = {"p1": True, "p2": True, "p3": False, "p4": False, "p5": True}
    y = {"p1": True, "p2": False, "p3": True, "p4": False, "p5": False}
    assert PairedTable.of(x, y) == PairedTable(both=1, only_x=2, only_y=1, neither=1)
    with pytest.raises(ValueError, match="same problems"):
        PairedTable.of(x, {"p1": True})


def test_newcombe_interval_by_hand_for_a_small_table():
    # a=2 both right, b=3 only X, c=1 only Y, d=2 neither; n=8: p_x = 5/8, p_y = 3/8, D = 2/8
    table = PairedTable(2, 3, 1, 2)
    l1, u1 = wilson_by_hand(5, 8)
    l2, u2 = wilson_by_hand(3, 8)
    phi = (2 * 2 - 3 * 1) / math.sqrt(5 * 3 * 3 * 5)  # = 1/15
    px, py, diff = 5 / 8, 3 / 8, 2 / 8
    low = diff - math.sqrt((px - l1) ** 2 - 2 * phi * (px - l1) * (u2 - py) + (u2 - py) ** 2)
    high = diff + math.sqrt((u1 - px) ** 2 - 2 * phi * (u1 - px) * (py - l2) + (py - l2) ** 2)
    assert (low, high) == pytest.approx((-0.18619, 0.57538), abs=5e-5)
    assert newcombe_paired_interval(table) == pytest.approx((low, high), abs=1e-9)


def test_newcombe_interval_published_example_and_degenerate_tables():
    # Newcombe (1998), Table II, example (a): 36 / 12 / 2 / 0 of 50, D = 0.2, method 10: 0.0569 to 0.3404.
    assert newcombe_paired_interval(PairedTable(36, 12, 2, 0)) == pytest.approx((0.0569, 0.3404), abs=5e-5)
    # no discordant problem: phi = (4 * 4 - 0) / sqrt(4^4) = 1 and the two Wilson intervals are mirror images, so
    # the interval collapses to D = 0 (a known property of the method; McNemar's p is 1 there)
    assert newcombe_paired_interval(PairedTable(4, 0, 0, 4)) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert newcombe_paired_interval(PairedTable(0, 0, 0, 0)) == (-1.0, 1.0)
    # all discordant one way: phi from the table, interval within [-1, 1] and excluding 0
    low, high = newcombe_paired_interval(PairedTable(0, 8, 0, 0))
    assert 0 < low <= 1.0 and high == pytest.approx(1.0)


def test_paired_comparison_of_two_models():
    ids = [f"q{i}" for i in range(10)]
    x = dict(zip(ids, [True] * 7 + [False] * 3))           # 7 / 10
    y = dict(zip(ids, [True, True] + [False] * 7 + [True]))  # 3 / 10
    # both: q0 q1; only x: q2..q6 (5); only y: q9 (1); neither: q7 q8
    result = paired_comparison(x, y)
    assert (result.better, result.worse, result.n) == (5, 1, 10)
    assert result.difference == pytest.approx(0.4)
    assert result.p_value == pytest.approx(14 / 64)
    assert not result.significant
    assert (result.low, result.high) == pytest.approx(newcombe_paired_interval(PairedTable(2, 5, 1, 2)))
    assert result.to_dict()["significant"] is False and result.to_dict()["p_value"] == result.p_value
    flipped = paired_comparison(y, x)
    assert flipped.difference == pytest.approx(-0.4)
    assert (flipped.low, flipped.high) == pytest.approx((-result.high, -result.low))


def test_a_clear_difference_is_significant():
    ids = [f"q{i}" for i in range(12)]
    x = dict.fromkeys(ids, True)
    y = {key: i < 4 for i, key in enumerate(ids)}  # 8 problems only x gets right
    result = paired_comparison(x, y)
    assert (result.better, result.worse) == (8, 0)
    assert result.p_value == pytest.approx(2 / 256) and result.significant
    assert result.low > 0
