"""The card's `transformers serve` recipe, run: the server loads a run's adapter over its base on request and
answers as hubtune's own generation does."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(__import__("importlib").util.find_spec("fastapi") is None,
                    reason="`transformers serve` needs the transformers[serving] extra (pip install 'hubtune[dev]')")
def test_transformers_serve_answers_with_the_adapter(trained_run):
    from hubtune.evaluation.generate import generate_answers, load_tuned

    run, _ = trained_run
    prompt = [json.loads(line) for line in run.path.joinpath("data", "validation.jsonl").read_text().splitlines()][0]
    messages = prompt["prompt"]
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    port = _free_port()
    # As the card says: the server loads whatever `model` a request names, here the adapter folder.
    proc = subprocess.Popen([exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, "transformers serve exited"
                assert time.monotonic() < deadline, "transformers serve did not come up in 120 s"
                time.sleep(0.5)
        body = {"model": str(run.adapter), "messages": messages, "max_tokens": 24, "temperature": 0.0}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(request, timeout=240).read())
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    served = reply["choices"][0]["message"]["content"]
    # The same adapter over the same (unquantized) base, greedy, in hubtune.
    model, tokenizer = load_tuned(run.path, quantization="none")
    expected = generate_answers(model, tokenizer, [messages], max_new_tokens=24)[0]
    assert served.strip() == expected.strip()
