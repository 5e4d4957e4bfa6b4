"""Training on a busy CPU: the demo's training while CPU-bound processes compete for the cores, against
the same training on the machine as it is.

    python benchmarks/busy_cpu.py [--steps 40] [--competitors 2] [--rounds 2] [--spinning]

Each measurement is one `hubtune train` process on the demo's run config (the embedded tiny base, QLoRA,
the invoice task; no held-out set) for --steps optimizer steps, its throughput read from the run's metrics.jsonl: the
mean of the tokens per second of its logging intervals, the first one (warm-up) left out, so loading and
data preparation do not count. "busy" runs it with --competitors processes that each keep one core busy
(a Python loop), started before training and stopped after. Idle and busy alternate, --rounds times,
so that other work on a shared machine slows both alike; the medians are compared.

hubtune's settings are measured (torch threads from the CPUs the process may use, OpenMP threads that
sleep when they wait: OMP_WAIT_POLICY=PASSIVE, hubtune's default); with --spinning, also spinning waits
(OMP_WAIT_POLICY=ACTIVE, threads that busy-wait for each other), which on a loaded machine can be
many times slower. The last line:

    busy_cpu: idle_tok_s=<x> busy_tok_s=<y> busy_over_idle=<y/x> [spinning_busy_over_idle=<...>]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "hubtune" / "assets" / "configs" / "demo.yaml"
SPIN = "while True:\n    pass\n"


def train(out: Path, steps: int, env: dict) -> float:
    """One training process; its mean tokens/s after the first logging interval. No held-out set: its
    evaluations are not training, and would only lengthen the run."""
    cmd = [sys.executable, "-m", "hubtune.cli", "train", str(DEMO), f"training.max_steps={steps}",
           "training.logging_steps=5", f"training.eval_steps={steps * 10}", f"training.save_steps={steps * 10}",
           "data.val_set_size=0", f"output.dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_second"] for r in rows if r.get("tokens_per_second") and "loss" in r]
    return statistics.mean(speeds[1:] or speeds)


def measure(out: Path, steps: int, env: dict, competitors: int) -> float:
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(competitors)]
    try:
        return train(out, steps, env)
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--competitors", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--spinning", action="store_true", help="also measure spinning waits (OMP_WAIT_POLICY=ACTIVE)")
    args = ap.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    settings = {"hubtune": base, **({"spinning": {**base, "OMP_WAIT_POLICY": "ACTIVE"}} if args.spinning else {})}
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    print(f"{cpus} usable CPUs, load average {os.getloadavg()[0]:.1f} at the start; {args.steps} steps of the demo "
          f"config per measurement, {args.competitors} competing processes when busy", flush=True)
    got: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        n = 0
        for r in range(args.rounds):
            for name, env in settings.items():
                for state, competitors in (("idle", 0), ("busy", args.competitors)):
                    n += 1
                    speed = measure(Path(tmp) / f"run{n}", args.steps, env, competitors)
                    got.setdefault((name, state), []).append(speed)
                    print(f"round {r + 1}  {name:<8}  {state}  {speed:8,.0f} tok/s  "
                          f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    med = {k: statistics.median(v) for k, v in got.items()}
    for name in settings:
        print(f"{name:<8}  idle {med[(name, 'idle')]:8,.0f} tok/s  busy {med[(name, 'busy')]:8,.0f} tok/s  "
              f"busy/idle {med[(name, 'busy')] / med[(name, 'idle')]:.2f}")
    spinning = (f" spinning_busy_over_idle={med[('spinning', 'busy')] / med[('spinning', 'idle')]:.2f}"
                if args.spinning else "")
    print(f"busy_cpu: idle_tok_s={med[('hubtune', 'idle')]:.0f} busy_tok_s={med[('hubtune', 'busy')]:.0f} "
          f"busy_over_idle={med[('hubtune', 'busy')] / med[('hubtune', 'idle')]:.2f}{spinning}")


if __name__ == "__main__":
    main()
