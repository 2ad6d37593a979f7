"""Smoke checks of the benchmarks: agl's side of the store comparison alone (it runs in CI), and the
peers driver (benchmarks/peers.py) with one tiny run of its cheapest benchmark (it needs the anchor)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = ROOT / ".venvs" / "anchor" / "bin" / "python"


def test_agl_s_store_benchmark_over_http_reports_pure_json() -> None:
    """compare_stores.py parses this output: nothing else (the store server's own lines) may reach it."""
    command = [
        sys.executable,
        "benchmarks/store_bench.py",
        "--json",
        "--runs",
        "1",
        "--n",
        "20",
        "--backends",
        "http+memory",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["http+memory"]["enqueue"]["median"] > 0, report


@pytest.mark.skipif(not ANCHOR.exists(), reason="Agent Lightning 0.3.0 is not installed in .venvs/anchor")
def test_store_report_has_machine_versions_and_ratios(tmp_path: Path) -> None:
    report = tmp_path / "peers.md"
    command = [sys.executable, "benchmarks/peers.py", "--only", "store", "--runs", "1", "--quick", "--output", report]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = report.read_text()
    assert text in done.stdout
    assert "Machine: " in text and "cores available (nproc)" in text and "GiB RAM" in text
    assert "agentlightning 0.3.0" in text and "agl-core" in text
    assert "Command: `python benchmarks/peers.py --only store" in text
    header = next(line for line in text.splitlines() if line.startswith("| operation | anchor in-memory"))
    assert "| ratio |" in header
    enqueue = next(line for line in text.splitlines() if line.startswith("| enqueue |"))
    assert enqueue.count("x |") == 3  # memory, sqlite and sqlite-full, each as a ratio to the anchor
