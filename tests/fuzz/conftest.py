"""Fixtures of the property-based suites; the shared helpers are in ``fuzz_support``.

case_counter()   call once per generated case; totals per test are printed in the terminal summary
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fuzz_support import CASES


@pytest.fixture
def case_counter(request: pytest.FixtureRequest) -> Callable[[], None]:
    """Call once per generated case; the total per test is printed in the terminal summary."""
    name = request.node.nodeid

    def count() -> None:
        CASES[name] += 1

    return count


def pytest_terminal_summary(terminalreporter) -> None:
    if not CASES:
        return
    terminalreporter.section("generated cases (hypothesis)")
    for name, n in sorted(CASES.items()):
        terminalreporter.write_line(f"{n:6d}  {name}")
    terminalreporter.write_line(f"{sum(CASES.values()):6d}  total")
