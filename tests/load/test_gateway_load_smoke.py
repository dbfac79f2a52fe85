"""bench/gateway_load.py runs end to end: 2 SDK clients for 3 s per configuration, no unintended errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gateway_load.py"


def test_gateway_load_bench_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--seconds", "3", "--clients", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gateway_load.json").read_text())
    assert set(results) == {"token cache 2 s", "no token cache"}
    for result in results.values():
        assert result["errors"] == 0, result["error_samples"]
        assert result["total_ok"] > 0
        assert result["routes"]["GET /v1/batches/{id}"]["ok"] > 0
        assert result["routes"]["POST /v1/batches"]["ok"] > 0
    assert (tmp_path / "gateway_load.png").stat().st_size > 0
