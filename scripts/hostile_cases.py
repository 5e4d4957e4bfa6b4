"""Run the hostile-input and fault cases against the real `hubtune` command and print one line each:
`case | exit code | first line of stderr` (for a traceback: its last line; for a run that exits 0: what it
silently did, when that is the problem).

    python scripts/hostile_cases.py                       # the code in this checkout
    python scripts/hostile_cases.py --tree /tmp/other     # another checkout of hubtune (PYTHONPATH)
    python scripts/hostile_cases.py --only hub,scorer     # the cases whose name contains "hub" or "scorer"

Every case runs in a fresh subprocess with a time limit (a hang shows as "timeout"), against the loopback
Hub of tests/hub_server.py behind the fault proxy of tests/fault_proxy.py, in a scratch folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from data_rows import tiny_run_config  # noqa: E402
from fault_proxy import FaultProxy  # noqa: E402
from hub_server import LoopbackHub, readme  # noqa: E402

TOKEN = "hf_alice_cases_token_0123456789"
HUBTUNE = str(Path(sys.executable).parent / "hubtune")  # the installed command; PYTHONPATH picks the code
TINY = ROOT / "hubtune" / "assets" / "tiny-llama"
INVOICES = ROOT / "hubtune" / "assets" / "data" / "invoices" / "train.jsonl"


@dataclass
class Case:
    name: str
    args: list[str]
    faults: list[tuple] = field(default_factory=list)  # (route regex, kind) for the proxy
    observe: Callable[[subprocess.CompletedProcess], str] | None = None  # what a run that exits 0 silently did
    timeout: float = 120
    cwd: Path | None = None
    env: dict = field(default_factory=dict)


def first_line(stderr: str) -> str:
    """The error line (with the line after it when it ends in ':'), or a traceback's exception line."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") for ln in lines):
        last = [ln for ln in lines if not ln.startswith((" ", "\t"))]
        return "TRACEBACK " + last[-1][:200]
    at = next((i for i, ln in enumerate(lines) if ln.startswith("error:")), 0)
    msg = " ".join(ln.strip() for ln in lines[at:at + 2]) if lines and lines[at].endswith(":") else (
        lines[at] if lines else "")
    return msg[:240]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", default=str(ROOT), help="checkout of hubtune to run (put first on PYTHONPATH)")
    parser.add_argument("--only", default="", help="run only cases whose name contains one of these (a,b,...)")
    args = parser.parse_args()

    hub = LoopbackHub().start()
    hub.add_user("alice", TOKEN)
    proxy = FaultProxy(hub.url).start()
    work = Path(tempfile.mkdtemp(prefix="hubtune-cases-"))
    (work / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": args.tree, "HF_ENDPOINT": proxy.url, "HF_HOME": str(work / "hf"),
           "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": TOKEN, "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2",
           "HUBTUNE_HUB_RETRIES": "2", "HUBTUNE_HUB_BACKOFF": "0.2", "TMPDIR": str(work / "tmp"),
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.pop("HUBTUNE_DEBUG", None)
    cases = build(work, hub, args.tree)

    def run(case: Case) -> tuple[str, str]:
        proxy.clear()
        for route, kind in case.faults:
            proxy.fault(route, kind)
        cmd = [HUBTUNE, *case.args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=case.timeout, cwd=case.cwd or work,
                                  env={**env, **case.env})
        except subprocess.TimeoutExpired:
            return "timeout", f"no answer after {case.timeout:.0f} s (killed)"
        shown = first_line(done.stderr)
        if done.returncode == 0 and case.observe:
            shown = case.observe(done)
        return str(done.returncode), shown

    for case in cases:
        if args.only and not any(part in case.name for part in args.only.split(",")):
            continue
        if case.name == "two-trains-same-output-dir":
            code, shown = two_trains(work, env)
        else:
            start = time.time()
            code, shown = run(case)
            shown += f"  [{time.time() - start:.0f}s]"
        print(f"{case.name} | {code} | {shown}", flush=True)
    proxy.stop()
    hub.stop()


def rows(n: int = 24) -> list[str]:
    return INVOICES.read_text().splitlines()[:n]


def tiny_config(work: Path) -> Path:
    (work / "inv.jsonl").write_text("\n".join(rows()) + "\n")
    return tiny_run_config(work / "tiny.yaml", work / "inv.jsonl")


def model_folder(work: Path, name: str, drop: tuple[str, ...] = (), patch=None) -> str:
    out = work / name
    out.mkdir()
    for f in TINY.iterdir():
        if f.is_file() and f.name not in drop:
            (out / f.name).write_bytes(f.read_bytes())
    if patch:
        patch(out)
    return str(out)


def build(work: Path, hub: LoopbackHub, tree: str) -> list[Case]:
    cfg = str(tiny_config(work))
    out = lambda name: f"output.dir={work / 'runs' / name}"  # noqa: E731
    train = lambda name, *extra: ["train", cfg, out(name), *extra]  # noqa: E731

    # ---- data files --------------------------------------------------------------------------------
    good = [json.loads(r) for r in rows(20)]
    (work / "latin1.csv").write_bytes("instruction,output\n".encode() + "".join(
        f'"{r["instruction"]} café","{r["output"]} crème"\n' for r in good).encode("latin-1", "replace"))
    deep = '{"instruction": "x", "output": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (work / "deep.jsonl").write_text("\n".join([json.dumps(good[0]), deep, *map(json.dumps, good[1:])]) + "\n")
    import csv
    import io

    def write_csv(path: Path, items, encoding="utf-8") -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["instruction", "output"])
        w.writerows([[r["instruction"] + " " + r["input"], r["output"]] for r in items])
        path.write_text(buf.getvalue(), encoding=encoding)

    write_csv(work / "excel.csv", good, "utf-8-sig")
    write_csv(work / "comma.csv", good[:2])
    with (work / "comma.csv").open("a") as f:
        f.write("Say hello, politely,Hello there friend\n")  # a comma in an unquoted value: 3 cells
    with (work / "comma.csv").open("a") as f:
        csv.writer(f, lineterminator="\n").writerows([[r["instruction"] + " " + r["input"], r["output"]]
                                                      for r in good[2:]])
    zero = [{**r, "instruction": "What is the discount code?", "input": 0, "output": f"The code is zero {i}."}
            for i, r in enumerate(good[:3])]
    (work / "zero.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*good, *zero]))
    (work / "nan.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good) +
                                    '{"instruction": "Price of item 9?", "output": NaN}\n')
    (work / "src.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    (work / "mine.jsonl").write_text('{"note": "my own file, not hubtune\'s"}\n')
    (work / "outdir").mkdir()
    (work / "afile.txt").write_text("a file, not a folder\n")

    def prepared_has(path: str, needle: str):
        def look(done) -> str:
            text = Path(path).read_text()
            return f"exit 0; {Path(path).name} holds {needle!r}: {'yes' if needle in text else 'no'}"
        return look

    def replaced_source(done) -> str:
        first = (work / "src.jsonl").read_text().splitlines()[0]
        return f"exit 0; src.jsonl now starts {first[:60]!r}"

    def replaced_mine(done) -> str:
        first = (work / "mine.jsonl").read_text().splitlines()[0]
        return f"exit 0; mine.jsonl now starts {first[:60]!r}"

    def comma_counted(done) -> str:
        report = json.loads(done.stdout)
        return f"exit 0; read {report['total']} rows, too_short {report['too_short']}, no row called malformed"

    def zero_kept(done) -> str:
        text = (work / "zero-out.jsonl").read_text()
        return "exit 0; prompts hold the input 0: " + ("yes" if "discount code?\\n\\n0" in text else "no (dropped)")

    # ---- scorers in the current folder ---------------------------------------------------------------
    scorers = work / "scorers"
    scorers.mkdir()
    (scorers / "my_scores.py").write_text("def reward(rows):\n    return [float(len(r['completion'])) for r in rows]\n")
    (scorers / "bad_scores.py").write_text(
        "def boom(rows):\n    raise KeyError('score')\n\n"
        "def shape(rows):\n    return {'scores': [1.0] * len(rows)}\n\n"
        "def oom(rows):\n    import torch\n"
        "    raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')\n")
    on_path = {"PYTHONPATH": f"{tree}{os.pathsep}{scorers}"}
    scorer = lambda spec: ["data", "check", str(work / "src.jsonl"), "--set", f"scorer.callable={spec}",  # noqa: E731
                           "--set", "scorer.threshold=0"]

    # ---- model folders -----------------------------------------------------------------------------
    def corrupt(folder: Path) -> None:
        f = folder / "model.safetensors"
        f.write_bytes(f.read_bytes()[:1000])

    def remote(folder: Path) -> None:
        c = json.loads((folder / "config.json").read_text())
        c.update(model_type="acme_mystery", auto_map={"AutoConfig": "modeling_acme.AcmeConfig",
                                                        "AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM"})
        (folder / "config.json").write_text(json.dumps(c))
        (folder / "modeling_acme.py").write_text("import os  # runs on import\n")

    no_config = model_folder(work, "no-config", drop=("config.json",))
    corrupt_weights = model_folder(work, "corrupt", patch=corrupt)
    no_tokenizer = model_folder(work, "no-tokenizer", drop=("tokenizer.json", "tokenizer_config.json",
                                                            "special_tokens_map.json", "chat_template.jinja"))
    remote_code = model_folder(work, "remote-code", patch=remote)

    def adapter_targets(name: str):
        def look(done) -> str:
            f = work / "runs" / name / "adapter" / "adapter_config.json"
            targets = sorted(json.loads(f.read_text())["target_modules"]) if f.is_file() else "?"
            return f"exit 0; adapter_config.json target_modules: {targets}"
        return look

    # ---- the Hub: a base, a dataset, and a finished run to push ---------------------------------------
    tiny_files = {f.name: f.read_bytes() for f in TINY.iterdir() if f.is_file() and f.name != "README.md"}
    hub.seed("acme/base", {**tiny_files, "README.md": readme(license="apache-2.0")})
    hub.seed("acme/data", {"train.jsonl": "\n".join(rows()) + "\n", "README.md": readme(license="cc-by-4.0")},
             repo_type="dataset")
    hub_train = ["train", cfg, "data.sources=[acme/data]"]
    push_run = work / "runs" / "to-push"
    subprocess.run([HUBTUNE, "train", cfg, f"output.dir={push_run}"], check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": tree, "HF_HUB_OFFLINE": "1"}, cwd=work)
    push = lambda repo: ["push", str(push_run), "--repo", f"alice/{repo}",  # noqa: E731
                         "--acknowledge", str(work / "inv.jsonl")]

    def stale_push_folder():
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = work / "tmp" / f"hubtune-push-{dead.pid}@{socket.gethostname()}-x1"
        stale.mkdir(parents=True)
        (stale / "model.safetensors").write_bytes(b"\0" * 1024)
        return lambda done: ("exit 0; a dead push's staging folder left behind: "
                             f"{'yes' if stale.exists() else 'no (removed)'}")

    cases = [
        Case("two-trains-same-output-dir", []),
        Case("prepare-out-is-its-source",
             ["data", "prepare", str(work / "src.jsonl"), "--out", str(work / "src.jsonl")],
             observe=replaced_source),
        Case("prepare-out-is-a-file-hubtune-did-not-write",
             ["data", "prepare", str(work / "src.jsonl"), "--out", str(work / "mine.jsonl")], observe=replaced_mine),
        Case("prepare-out-is-a-folder", ["data", "prepare", str(work / "src.jsonl"), "--out", str(work / "outdir")]),
        Case("prepare-out-unwritable", ["data", "prepare", str(work / "src.jsonl"), "--out",
                                        str(work / "afile.txt" / "x.jsonl")]),
        Case("lora-target-one-misspelled", train("typo", "lora.target_modules=[q_proj,nonexist_proj]"),
             observe=adapter_targets("typo")),
        Case("lora-target-all-unknown", train("typo2", "lora.target_modules=[nonexist_proj]")),
        Case("alpaca-input-0", ["data", "prepare", str(work / "zero.jsonl"), "--out", str(work / "zero-out.jsonl")],
             observe=zero_kept),
        Case("nan-output", ["data", "prepare", str(work / "nan.jsonl"), "--out", str(work / "nan-out.jsonl")],
             observe=prepared_has(str(work / "nan-out.jsonl"), '"nan"')),
        Case("csv-unquoted-comma", ["data", "check", str(work / "comma.csv"), "--json"], observe=comma_counted),
        Case("empty-model-revision", ["train", cfg, out("rev"), "model.id=acme/base", "model.revision="],
             observe=lambda done: "exit 0; trained with an empty model.revision"),
        Case("killed-push-staging-left", push("stale-cleanup"), observe=stale_push_folder()),
        Case("not-utf8-csv", ["data", "check", str(work / "latin1.csv")]),
        Case("deep-json-line", ["data", "check", str(work / "deep.jsonl")]),
        Case("deep-json-line-skip-bad-rows", ["data", "check", str(work / "deep.jsonl"), "--skip-bad-rows", "--json"],
             observe=lambda done: f"exit 0; bad rows skipped: {json.loads(done.stdout)['bad_rows']}"),
        Case("excel-bom-csv", ["data", "check", str(work / "excel.csv"), "--json"],
             observe=lambda done: f"exit 0; format {json.loads(done.stdout)['sources'][0]['format']}"),
        Case("quantization-none", train("lora16", "model.quantization=none"), observe=lambda done: "exit 0; trained"),
        Case("seed-minus-1", train("seed1", "training.seed=-1")),
        Case("seed-1e23", train("seed2", "training.seed=1e23")),
        Case("override-not-yaml", train("yaml", "training.learning_rate=[1")),
        Case("max-steps-1e20", train("steps", "training.max_steps=1e20")),
        Case("seed-1e23-as-integer", train("seed3", f"training.seed={10**23}")),
        Case("max-steps-1e20-as-integer", train("steps2", f"training.max_steps={10**20}")),
        Case("micro-batch-1e6-as-integer", train("batch", f"training.micro_batch_size={10**6}"),
             observe=lambda done: "exit 0; trained"),
        Case("model-no-config-json", train("m1", f"model.id={no_config}")),
        Case("model-corrupt-safetensors", train("m2", f"model.id={corrupt_weights}")),
        Case("model-no-tokenizer", train("m3", f"model.id={no_tokenizer}")),
        Case("model-remote-code-not-trusted", train("m4", f"model.id={remote_code}")),
        Case("scorer-in-current-folder", scorer("my_scores:reward"), cwd=scorers,
             observe=lambda done: "exit 0; scored"),
        # On the import path, so that the code before the current folder was searched reaches the scorer too.
        Case("scorer-raises", scorer("bad_scores:boom"), env=on_path),
        Case("scorer-wrong-shape", scorer("bad_scores:shape"), env=on_path),
        Case("scorer-cuda-oom", scorer("bad_scores:oom"), env=on_path),
    ]
    for kind in (500, 503, "hang", "garbage"):
        cases += [
            Case(f"hub-{kind}-check", ["check", "acme/base"], faults=[(r"^/api/models/acme/base", kind)],
                 timeout=45, observe=lambda done: "exit 0"),
            Case(f"hub-{kind}-train", [*hub_train, out(f"hub-{kind}")], faults=[(r"^/api/datasets/acme/data", kind)],
                 timeout=60, observe=lambda done: "exit 0"),
            Case(f"hub-{kind}-push", push(f"faulty-{kind}"), faults=[(r"^/api/models/.*/commit/", kind)],
                 timeout=60, observe=lambda done: "exit 0"),
        ]
    return cases


def two_trains(work: Path, env: dict) -> tuple[str, str]:
    """Start a long training run, wait until it holds its run folder, start a second one into the same folder."""
    cfg = str(work / "tiny.yaml")
    folder = work / "runs" / "shared"
    cmd = [HUBTUNE, "train", cfg, f"output.dir={folder}"]
    first = subprocess.Popen([*cmd, "training.max_steps=100000"], cwd=work, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (folder / ".lock").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        second = subprocess.run([*cmd, "training.learning_rate=0.5"], capture_output=True, text=True, timeout=120,
                                cwd=work, env=env)
        overwritten = "learning_rate: 0.5" in (folder / "config.yaml").read_text()
        shown = (first_line(second.stderr)
                 + f"; the running run's config.yaml overwritten: {'yes' if overwritten else 'no'}")
        return str(second.returncode), shown
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.wait(60)
        except subprocess.TimeoutExpired:
            first.kill()


if __name__ == "__main__":
    main()
