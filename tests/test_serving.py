"""The card's `transformers serve` recipe, run as a reader of the card would: the adapter pushed to the loopback
Hub, the card's own code loading it and merging it into its base, then the card's `transformers serve` command
on loopback, answering a chat request as the merged model does in transformers."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.slow  # trains (the shared run), pushes, merges and starts a server


def code_block(text: str, after: str, language: str) -> str:
    """The first ```language block that follows the heading `after` in a card."""
    rest = text[text.index(after):]
    return re.search(rf"```{language}\n(.*?)```", rest, re.S).group(1)


def serve_as_the_card_says(card: str, cwd: Path, question: str) -> tuple[list[str], dict, str]:
    """Start the card's `transformers serve` command on a free loopback port, send the card's request with
    `question` in it (greedy, 48 tokens); returns (the card's command, the request body, the answer)."""
    commands = code_block(card, "### Serving with `transformers serve`", "bash")
    command = shlex.split(commands.splitlines()[0])
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if exe is None:
        pytest.skip("`transformers serve` needs the transformers[serving] extra (pip install 'hubtune[dev]')")
    port = free_port()
    serve = [exe, *command[1:], "--host", "127.0.0.1", "--device", "cpu"]
    serve[serve.index("--port") + 1] = str(port)
    body = json.loads(re.search(r"-d '(.*)'", commands).group(1))
    body["messages"] = [{"role": "user", "content": question}]
    body.update(temperature=0, max_tokens=48)
    log_file = cwd / "serve.log"
    with open(log_file, "w") as log:
        server = subprocess.Popen(serve, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})  # the loopback Hub's HF_ENDPOINT too
        try:
            deadline = time.time() + 240
            while True:
                assert server.poll() is None, log_file.read_text()[-3000:]
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                    break
                except OSError:
                    assert time.time() < deadline, "transformers serve did not come up in 240 s"
                    time.sleep(1)
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                             json.dumps(body).encode(), {"Content-Type": "application/json"})
            try:
                reply = json.loads(urllib.request.urlopen(request, timeout=240).read())
            except urllib.error.HTTPError as err:
                raise AssertionError(f"HTTP {err.code}: {log_file.read_text()[-3000:]}") from None
        finally:
            server.terminate()
            server.wait(timeout=60)
    return command, body, reply["choices"][0]["message"]["content"]


def test_the_cards_transformers_serve_recipes_serve_the_adapter_merged(trained_run, hub, hub_token, tmp_path,
                                                                        monkeypatch):
    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hubtune

    shutil.copytree(trained_run[0].path, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    run = hubtune.RunFolder(tmp_path / "run")
    data = [s.path for s in run.config.data.sources]
    hubtune.push(run.path, "alice/tiny-served", acknowledge=data)
    card = ModelCard.load("alice/tiny-served").text
    row = json.loads(Path(hubtune.config.resolve_builtin("hubtune:data/invoices/test.jsonl")).read_text()
                     .splitlines()[0])
    question = f"{row['instruction']}\n\n{row['input']}"

    # The adapter's card, as a reader runs it: its code loads the adapter from the Hub over its base and
    # merges it into a folder, which its command serves.
    usage = code_block(card, "## How to use", "python")
    merge = code_block(card, "### Serving with `transformers serve`", "python")
    monkeypatch.chdir(tmp_path)
    exec(compile(usage + "\n" + merge, "card", "exec"), {})
    assert (tmp_path / "merged" / "config.json").is_file() and not (tmp_path / "merged" / "adapter_config.json").exists()
    command, body, answer = serve_as_the_card_says(card, tmp_path, question)
    assert command[:3] == ["transformers", "serve", "merged"] and body["model"] == "merged"

    # The same prompt through the merged folder in transformers, greedily.
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    inputs = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, return_dict=True,
                                           return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    expected = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert expected.strip() and answer == expected

    # The merged model's card (`push --merged`): its command serves the repo from the (loopback) Hub.
    hubtune.push(run.path, "alice/tiny-served-merged", merged=True, acknowledge=data)
    merged_card = ModelCard.load("alice/tiny-served-merged").text
    (tmp_path / "elsewhere").mkdir()
    command, body, answer = serve_as_the_card_says(merged_card, tmp_path / "elsewhere", question)
    assert command[:3] == ["transformers", "serve", "alice/tiny-served-merged"]
    assert body["model"] == "alice/tiny-served-merged" and answer == expected
