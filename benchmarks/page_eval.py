"""Evaluation in the page against the command line, on the same finished run and the same machine.

    python benchmarks/page_eval.py [--run RUN] [--limit 20] [--busy]

Without --run, a short demo run is trained first (20 steps). Then, each with the answer caches removed:
- cli: `hubtune eval RUN --limit N` as a subprocess, wall time;
- page: the page's Evaluate (the app served on 127.0.0.1, called through gradio_client as the browser
  does) until eval.json is written: the same `hubtune eval` subprocess, queued by the app's job runner;
- prompting, page and library: "Try prompting first" through the page, and the same function
  (hubtune.evaluation.baseline.score_prompting) in a fresh process of its own.
--busy runs the figures again with a training job beside them (the machine's CPUs shared).
The last line is:

    page_eval: cli=<s> page=<s> ratio=<page/cli> prompting_library=<s> prompting_page=<s> ratio=<...>
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTING = ("from hubtune.ui import handlers as h; from hubtune.evaluation.baseline import score_prompting; "
             "score_prompting(h.data_config(h.DEMO_MODEL, h.DEMO_DATA), limit={limit})")


def hubtune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hubtune.cli", *args], capture_output=True, text=True, check=True)


def fresh(run: Path) -> None:
    """No cached answers and no earlier result: each figure is a first evaluation."""
    shutil.rmtree(run / "eval_cache", ignore_errors=True)
    (run / "eval.json").unlink(missing_ok=True)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def page_eval(client, run: Path, limit: int) -> None:
    client.predict(str(run), limit, api_name="/evaluate")
    while not (run / "eval.json").is_file():
        time.sleep(0.2)


def measure(root: Path, run: Path, limit: int) -> dict:
    from gradio_client import Client

    from hubtune.ui import build_app

    fresh(run)
    cli = timed(lambda: hubtune("eval", str(run), "--limit", str(limit)))
    print(f"cli eval: {cli:.1f} s", flush=True)
    app = build_app(root)
    app.queue(default_concurrency_limit=4).launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(app.local_url, verbose=False)
        fresh(run)
        page = timed(lambda: page_eval(client, run, limit))
        print(f"page eval: {page:.1f} s", flush=True)
        library = timed(lambda: subprocess.run([sys.executable, "-c", PROMPTING.format(limit=limit)], check=True,
                                               capture_output=True))
        # The page's data is the session's (the demo until another is checked), as a fresh page has it.
        prompting = timed(lambda: client.predict("hubtune:tiny-llama", "auto", "", "personal", limit,
                                                 api_name="/try_prompting"))
    finally:
        app.runner.close()
        app.close()
    return {"cli": cli, "page": page, "prompting_library": library, "prompting_page": prompting}


def line(label: str, f: dict) -> str:
    return (f"{label}: cli={f['cli']:.1f} page={f['page']:.1f} ratio={f['page'] / f['cli']:.2f} "
            f"prompting_library={f['prompting_library']:.1f} prompting_page={f['prompting_page']:.1f} "
            f"ratio={f['prompting_page'] / f['prompting_library']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--busy", action="store_true", help="again, with a training job beside the figures")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hubtune-page-eval-"))
    run = args.run
    if run is None:
        run = root / "demo"
        hubtune("train", str(ROOT / "hubtune/assets/configs/demo.yaml"), "training.max_steps=20",
                f"output.dir={run}")
    else:
        run = Path(shutil.copytree(run, root / run.name, ignore=shutil.ignore_patterns(".lock")))
    figures = measure(root, run, args.limit)
    print(line("page_eval", figures), flush=True)
    if args.busy:
        beside = subprocess.Popen([sys.executable, "-m", "hubtune.cli", "train",
                                   str(ROOT / "hubtune/assets/configs/demo.yaml"), f"output.dir={root / 'beside'}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(20)  # past its start-up, into training
            print(line("page_eval_busy", measure(root, run, args.limit)), flush=True)
        finally:
            beside.terminate()
            beside.wait(timeout=120)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
