"""Statistics a release report must get right: intervals, detection limits, verdicts.

A fraction k/n gets a Wilson score interval; when no cell of a class is seen (k = 0) its
interval is [0, 1 - alpha^(1/n)], the exact one-sided upper bound, which is also the run's limit
of detection (the smallest fraction seen at least once with probability 1 - alpha).
"""

from __future__ import annotations

from scipy.stats import binomtest

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval of the fraction ``k / n`` (scipy's ``binomtest``)."""
    if n <= 0:
        return 0.0, 1.0
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    p = k / n
    # exact at k = 0 and k = n in theory; in floating point a bound can fall just past p
    return min(p, max(0.0, ci.low)), max(p, min(1.0, ci.high))


def detection_limit(n: int, level: float = 0.95) -> float:
    """Fraction seen at least once with probability ``level`` among ``n`` cells:
    ``1 - (1 - level)^(1/n)`` (about 3/n). Also the upper bound when none is seen."""
    if n <= 0:
        return 1.0
    return 1 - (1 - level) ** (1 / n)


def fraction_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Interval reported for ``k / n``: Wilson, or [0, exact upper bound] when ``k == 0``."""
    if k == 0:
        return 0.0, detection_limit(n, level)
    return wilson_interval(k, n, level)


def verdict(ci_low: float, ci_high: float, limit: float | None, *, kind: str = "max") -> str | None:
    """PASS when the whole interval meets the limit, FAIL when the whole interval violates it,
    INCONCLUSIVE when it straddles the limit. ``kind="max"``: the fraction may be at most
    ``limit``; ``kind="min"``: at least ``limit``. ``None`` when there is no limit."""
    if limit is None:
        return None
    if kind == "max":
        if ci_high <= limit:
            return PASS
        return FAIL if ci_low > limit else INCONCLUSIVE
    if ci_low >= limit:
        return PASS
    return FAIL if ci_high < limit else INCONCLUSIVE


def cells_needed(
    fraction: float,
    limit: float | None,
    *,
    kind: str = "max",
    level: float = 0.95,
    max_cells: int = 100_000_000,
) -> int | None:
    """Fewest cells at which a lot showing ``fraction`` would get a decided verdict (PASS or
    FAIL) against ``limit``; ``None`` when no number would (the fraction sits on the limit, or
    more than ``max_cells`` are needed)."""
    if limit is None or fraction == limit:
        return None

    def decided(n: int) -> bool:
        k = round(fraction * n)
        lo, hi = fraction_interval(k, n, level)
        return verdict(lo, hi, limit, kind=kind) != INCONCLUSIVE

    if not decided(max_cells):
        return None
    lo, hi = 1, max_cells  # decided(hi) holds; find the smallest n from which it keeps holding
    while lo < hi:
        mid = (lo + hi) // 2
        if decided(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def overall_verdict(verdicts) -> str:
    """FAIL if any criterion fails, else INCONCLUSIVE if any is, else PASS."""
    given = [v for v in verdicts if v is not None]
    if FAIL in given:
        return FAIL
    return INCONCLUSIVE if INCONCLUSIVE in given else PASS
