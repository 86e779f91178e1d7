"""The statistics of a release report: interval coverage, detection limit, verdicts, cells needed."""

from __future__ import annotations

import numpy as np
import pytest

from sc_celltherapy import _stats
from sc_celltherapy._stats import FAIL, INCONCLUSIVE, PASS


@pytest.mark.parametrize(("n", "p"), [(200, 0.3), (1000, 0.05), (5000, 0.01)])
def test_wilson_interval_covers_truth_95_percent(n, p):
    rng = np.random.default_rng(0)
    draws = rng.binomial(n, p, size=4000)
    covered = [lo <= p <= hi for lo, hi in (_stats.fraction_interval(k, n) for k in draws)]
    assert 0.93 <= np.mean(covered) <= 0.97


def test_detection_limit_is_the_95_percent_sampling_limit():
    for n in (10, 1000, 10_000):
        lod = _stats.detection_limit(n)
        # a contaminant at the limit is seen at least once with probability 0.95
        assert 1 - (1 - lod) ** n == pytest.approx(0.95)
    assert _stats.detection_limit(10_000) == pytest.approx(3 / 10_000, rel=0.01)  # ~3/n
    # 0.001% needs ~300,000 cells (PRODUCT.md)
    assert _stats.detection_limit(299_572) == pytest.approx(1e-5, rel=1e-3)


def test_zero_count_interval_is_the_one_sided_upper_bound():
    lo, hi = _stats.fraction_interval(0, 2000)
    assert lo == 0 and hi == pytest.approx(1 - 0.05 ** (1 / 2000))
    # the bound is what a simulation says: with p = hi, zero cells are seen 5% of the time
    zeros = np.mean(np.random.default_rng(1).binomial(2000, hi, size=20_000) == 0)
    assert zeros == pytest.approx(0.05, abs=0.005)


def test_verdict_at_the_edges():
    assert _stats.verdict(0.01, 0.02, 0.02) == PASS  # upper end on the limit meets it
    assert _stats.verdict(0.02, 0.03, 0.02) == INCONCLUSIVE  # lower end on the limit
    assert _stats.verdict(0.0201, 0.03, 0.02) == FAIL
    assert _stats.verdict(0.015, 0.025, 0.02) == INCONCLUSIVE
    assert _stats.verdict(0.8, 0.9, 0.8, kind="min") == PASS
    assert _stats.verdict(0.7, 0.79, 0.8, kind="min") == FAIL
    assert _stats.verdict(0.75, 0.85, 0.8, kind="min") == INCONCLUSIVE
    assert _stats.verdict(0.0, 1.0, None) is None


def test_cells_needed_is_the_fewest_that_decide():
    for fraction, limit, kind in [(0.03, 0.02, "max"), (0.01, 0.02, "max"), (0.85, 0.8, "min")]:
        n = _stats.cells_needed(fraction, limit, kind=kind)
        k = round(fraction * n)
        assert _stats.verdict(*_stats.fraction_interval(k, n), limit, kind=kind) != INCONCLUSIVE
        k = round(fraction * (n - 1))
        assert _stats.verdict(*_stats.fraction_interval(k, n - 1), limit, kind=kind) == INCONCLUSIVE
    # zero cells seen: the bound 1 - 0.05^(1/n) must fall to the limit, n >= log(0.05)/log(1-limit)
    n = _stats.cells_needed(0.0, 1e-4)
    assert n == int(np.ceil(np.log(0.05) / np.log(1 - 1e-4)))
    assert _stats.cells_needed(0.02, 0.02) is None


def test_overall_verdict():
    assert _stats.overall_verdict([PASS, None, PASS]) == PASS
    assert _stats.overall_verdict([PASS, INCONCLUSIVE]) == INCONCLUSIVE
    assert _stats.overall_verdict([INCONCLUSIVE, FAIL, PASS]) == FAIL


def test_wilson_interval_contains_the_fraction_at_the_edges():
    """k = n gave an upper bound of 0.9999999999999999 < 1 for some n (a release crashed
    drawing a 100% target fraction with a negative error bar)."""
    for n in range(1, 3000):
        low, high = _stats.wilson_interval(n, n)
        assert low < 1.0 and high == 1.0
        assert _stats.wilson_interval(0, n)[0] == 0.0
