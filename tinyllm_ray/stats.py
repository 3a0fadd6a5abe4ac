"""Statistics that make an accuracy a result: its confidence interval, and paired comparisons of two models scored
on the same problems. Pure functions over counts and per-problem correctness; the tests come from scipy.

- One accuracy: the Wilson score interval (:func:`wilson_interval`), scipy's ``binomtest(...).proportion_ci``.
- Two models on the same problems (:func:`paired_comparison`): the 2x2 table of per-problem outcomes, the difference
  in accuracy with Newcombe's hybrid score interval for paired proportions (Newcombe 1998, "Improved confidence
  intervals for the difference between binomial proportions based on paired data", Statistics in Medicine 17,
  method 10: built from the two Wilson intervals and the phi correlation of the table, no continuity correction),
  and the exact McNemar test (a two-sided binomial test of the discordant problems against 1/2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

LEVEL = 0.95  # every interval of the reports
SIGNIFICANCE = 0.05  # the McNemar p-value below which a difference is called significant


def wilson_interval(correct: int, total: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of the accuracy ``correct / total`` (no continuity correction). ``total`` 0: (0, 1),
    nothing is known."""
    from scipy.stats import binomtest

    if not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total, got {correct} / {total}")
    if total == 0:
        return 0.0, 1.0
    ci = binomtest(int(correct), int(total)).proportion_ci(confidence_level=level, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: ``binomtest(b, b + c, 1/2)``; 1.0 when no
    problem is discordant (nothing speaks for either model)."""
    from scipy.stats import binomtest

    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    return 1.0 if b + c == 0 else float(binomtest(int(b), int(b + c), 0.5).pvalue)


@dataclass(frozen=True)
class PairedTable:
    """Per-problem outcomes of model X against model Y on the same ``n`` problems: ``both`` right, ``only_x``
    right (b), ``only_y`` right (c), ``neither``."""

    both: int
    only_x: int
    only_y: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.only_x + self.only_y + self.neither

    @classmethod
    def of(cls, x: Mapping[str, bool], y: Mapping[str, bool]) -> "PairedTable":
        """From per-problem correctness keyed by problem id; both must cover exactly the same problems."""
        if x.keys() != y.keys():
            missing, extra = sorted(set(y) - set(x)), sorted(set(x) - set(y))
            raise ValueError("a paired comparison needs the same problems on both sides; "
                             f"only in the second: {missing[:5]}, only in the first: {extra[:5]}"
                             f" ({len(missing)} and {len(extra)} in all)")
        counts = [0, 0, 0, 0]
        for key, right in x.items():
            counts[(not right) * 2 + (not y[key])] += 1  # (x, y) = (T,T) (T,F) (F,T) (F,F)
        return cls(counts[0], counts[1], counts[2], counts[3])


@dataclass(frozen=True)
class PairedDifference:
    """accuracy(X) - accuracy(Y) on the same problems, its interval, the discordant counts and McNemar's p."""

    difference: float
    low: float
    high: float
    better: int  # b: problems only X gets right
    worse: int  # c: problems only Y gets right
    n: int
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE

    def to_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "significant": self.significant}


def newcombe_paired_interval(table: PairedTable, level: float = LEVEL) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10) for p_x - p_y from a paired 2x2 table.

    With Wilson intervals (l1, u1) of p_x = (both + only_x) / n and (l2, u2) of p_y = (both + only_y) / n,
    D = p_x - p_y and phi = (both * neither - only_x * only_y) / sqrt(product of the four margins) (0 when a margin
    is 0): low = D - sqrt((p_x - l1)^2 - 2 phi (p_x - l1)(u2 - p_y) + (u2 - p_y)^2),
    high = D + sqrt((u1 - p_x)^2 - 2 phi (u1 - p_x)(p_y - l2) + (p_y - l2)^2).
    With no discordant problem (only_x = only_y = 0) phi is 1 and the interval collapses to [0, 0], a known property
    of the method; McNemar's p (1.0 there) still says nothing is shown. An empty table gives [-1, 1].
    """
    a, b, c, d = table.both, table.only_x, table.only_y, table.neither
    n = table.n
    if n == 0:
        return -1.0, 1.0
    px, py = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, level)
    l2, u2 = wilson_interval(a + c, n, level)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(margins) if margins else 0.0
    diff = px - py
    low = diff - math.sqrt(max(0.0, (px - l1) ** 2 - 2 * phi * (px - l1) * (u2 - py) + (u2 - py) ** 2))
    high = diff + math.sqrt(max(0.0, (u1 - px) ** 2 - 2 * phi * (u1 - px) * (py - l2) + (py - l2) ** 2))
    return max(-1.0, low), min(1.0, high)


def paired_comparison(x: Mapping[str, bool], y: Mapping[str, bool], level: float = LEVEL) -> PairedDifference:
    """Model X against model Y, each as ``{problem id: correct}`` over the same problems."""
    table = PairedTable.of(x, y)
    low, high = newcombe_paired_interval(table, level)
    n = table.n
    return PairedDifference(difference=(table.only_x - table.only_y) / n if n else 0.0, low=low, high=high,
                            better=table.only_x, worse=table.only_y, n=n,
                            p_value=mcnemar_exact(table.only_x, table.only_y))
