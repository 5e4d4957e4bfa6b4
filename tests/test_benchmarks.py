"""The benchmark scripts run at a tiny size and end with their documented line (their figures come
from running them at full size, not from tests). All but the GPU one are slow: each trains or scans for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"[\d.]+"


def run(script: str, *args: str, timeout: int = 600) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                            text=True, timeout=timeout, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


@pytest.mark.slow
def test_train_throughput_prints_its_line():
    lines = run("train_throughput.py", "--rows", "20", "--eval-rows", "4", "--batch", "4", "--rounds", "1",
                "--no-levers", "--threads", "1")
    assert re.fullmatch(rf"throughput: hubtune_tok_s={NUMBER} baseline_tok_s={NUMBER} ratio={NUMBER} "
                        rf"hubtune_eval_loss={NUMBER} baseline_eval_loss={NUMBER}", lines[-1]), lines[-1]
    assert any(line.startswith("round 1: hubtune") for line in lines)


@pytest.mark.slow
def test_gpu_check_runs_its_cpu_sized_variant():
    lines = run("gpu_check.py", "--sizes", "tiny", "--steps", "2", "--batch", "2")
    size = next(line for line in lines if line.startswith("gpu_check: size=tiny"))
    assert re.match(rf"gpu_check: size=tiny params_b={NUMBER} estimate_gb={NUMBER} measured_gb=n/a ratio=n/a "
                    rf"hubtune_tok_s={NUMBER} baseline_tok_s={NUMBER} speedup={NUMBER}", size), size
    assert re.fullmatch(r"gpu_check: device=cpu \(no GPU: peak memory not measured\) sizes=1 seconds=\d+", lines[-1])


@pytest.mark.slow
def test_dedup_templated_variant_finds_the_planted_paraphrases():
    lines = run("dedup.py", "--rows", "3000", "--templated", "--seed", "3")
    match = re.fullmatch(rf"dedup: rows=3000 seconds={NUMBER} peak_rss_mb=\d+ recall=({NUMBER}) precision=({NUMBER})",
                         lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) >= 0.95 and float(match.group(2)) >= 0.95
    assert "templated" in lines[0]


@pytest.mark.slow
def test_dedup_pipeline_times_the_whole_data_check():
    lines = run("dedup.py", "--rows", "600", "--pipeline")
    match = re.fullmatch(rf"data check: rows=600 seconds={NUMBER} peak_rss_mb=\d+ kept=(\d+) near_duplicates=(\d+) planted=\d+",
                         lines[-1])
    assert match, lines[-1]
    kept, near = map(int, match.groups())
    assert near > 0 and kept + near <= 600


@pytest.mark.gpu
def test_gpu_check_measures_a_peak_near_the_estimate():
    lines = run("gpu_check.py", "--sizes", "0.5b", "--steps", "4")
    size = next(line for line in lines if line.startswith("gpu_check: size=0.5b"))
    ratio = float(re.search(rf"ratio=({NUMBER})", size).group(1))
    assert 0.75 <= ratio <= 1.25, size


@pytest.mark.slow
def test_busy_cpu_prints_its_line():
    lines = run("busy_cpu.py", "--steps", "5", "--competitors", "1", "--rounds", "1")
    assert re.fullmatch(rf"busy_cpu: idle_tok_s={NUMBER} busy_tok_s={NUMBER} busy_over_idle={NUMBER}", lines[-1]), lines[-1]


@pytest.mark.slow
def test_methods_benchmark_prints_its_line():
    lines = run("methods.py", "--methods", "dpo", "--dpo-steps", "1", "--test-rows", "4", "--threads", "1")
    assert re.fullmatch(rf"methods: dpo_accuracy=0\.50->{NUMBER} dpo_margin=0\.00->-?{NUMBER} not measured "
                        rf"minutes={NUMBER}", lines[-1]), lines[-1]


@pytest.mark.slow
def test_expert_quantization_prints_its_line():
    lines = run("expert_quantization.py", "--hidden", "128", "--layers", "1", "--experts", "4")
    match = re.fullmatch(rf"experts: weights_mb=({NUMBER}),({NUMBER}),({NUMBER}) peak_mb={NUMBER},{NUMBER},{NUMBER} "
                         rf"device=(cpu|cuda)", lines[-1])
    assert match, lines[-1]


@pytest.mark.slow
def test_nvfp4_base_prints_its_line():
    lines = run("nvfp4_base.py", "--hidden", "128", "--layers", "1", "--experts", "4", "--steps", "1")
    match = re.fullmatch(rf"nvfp4: weights_mb=({NUMBER}),({NUMBER}) peak_mb={NUMBER},{NUMBER} "
                         rf"step_s={NUMBER},{NUMBER} device=(cpu|cuda)", lines[-1])
    assert match, lines[-1]
