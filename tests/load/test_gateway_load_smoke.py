"""bench/gateway_load.py runs end to end: 2 SDK clients for 3 s, no unintended errors, a table and a plot."""

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
        [sys.executable, str(BENCH), "--duration", "3", "--clients", "2", "--procs", "1", "--setup-seconds", "5",
         "--out", str(tmp_path), "--docs", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = json.loads((tmp_path / "gateway_load.json").read_text())["runs"]
    assert result["errors"] == 0, result["error_samples"]
    assert result["total_ok"] > 0
    assert result["routes"]["GET /v1/batches/{id}"]["ok"] > 0
    assert result["routes"]["S3 GET record (direct)"]["ok"] > 0  # the baseline ran in the same run
    assert result["rss_mb"]["start"] > 0 and result["rss_mb"]["end"] > 0
    assert "GET /v1/batches/{id}" in proc.stdout  # the table was printed
    assert (tmp_path / "gateway_load.png").stat().st_size > 0
