"""benchmarks/dedup.py runs and reports in its documented format (its speed is measured by
running it at full size, not here)."""

from __future__ import annotations

import pytest

import re
import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "dedup.py"
LAST_LINE = re.compile(r"dedup: rows=(\d+) seconds=([\d.]+) peak_rss_mb=(\d+) recall=([\d.]+) precision=([\d.]+)")


def test_the_dedup_benchmark_finds_the_planted_paraphrases():
    result = subprocess.run([sys.executable, str(BENCHMARK), "--rows", "3000", "--seed", "3"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    match = LAST_LINE.fullmatch(result.stdout.splitlines()[-1])
    assert match, result.stdout
    rows, _, _, recall, precision = match.groups()
    assert int(rows) == 3000
    assert float(recall) >= 0.95 and float(precision) >= 0.95
