"""TokenRate: a sliding minute of counts, asked once per result line."""

from __future__ import annotations

import pytest

from dropbatch.observability.metrics import TokenRate


def test_rate_counts_only_the_last_window() -> None:
    rate = TokenRate(window_seconds=60.0)
    rate.add(600, now=0.0)
    rate.add(1200, now=30.0)
    assert rate.per_second(now=30.0) == pytest.approx(30.0)
    assert rate.per_second(now=61.0) == pytest.approx(20.0)  # the first 600 slid out
    assert rate.per_second(now=91.0) == 0.0
    rate.add(60, now=95.0)
    assert rate.per_second(now=95.0) == pytest.approx(1.0)


def test_many_events_keep_an_exact_running_total() -> None:
    rate = TokenRate(window_seconds=10.0)
    for i in range(10_000):
        rate.add(i % 7, now=i / 100)  # 100 events a second for 100 s
    expected = sum(i % 7 for i in range(10_000) if i / 100 >= 99.99 - 10.0) / 10.0
    assert rate.per_second(now=99.99) == pytest.approx(expected)
