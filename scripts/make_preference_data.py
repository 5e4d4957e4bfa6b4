"""Write the invoice preference pairs that ship with hubtune, derived from the invoice task files
(fixed seed, so reruns give identical files).

    python scripts/make_preference_data.py

hubtune/assets/data/invoices/preferences_{train,test}.jsonl   prompt / chosen / rejected (plain text)
hubtune/assets/data/invoices/short_{train,test}.jsonl         the same prompts with their answers (prompt /
                                                              completion): SFT, then GRPO against the answer

chosen is the correct extraction; rejected is the same extraction with the price cut from one line or
from every line: an answer that names the products but loses what was asked for. Only the shorter
invoices are used, so that the pairs train in seconds on a CPU.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INVOICES = ROOT / "hubtune" / "assets" / "data" / "invoices"
MAX_PROMPT_CHARS = 190


def without_prices(output: str, rng: random.Random) -> str:
    head, *items = output.split("\n")
    if len(items) > 1 and rng.random() < 0.5:
        i = rng.randrange(len(items))
        items[i] = items[i].split(": $")[0]
    else:
        items = [item.split(": $")[0] for item in items]
    return "\n".join([head, *items])


def pairs(rows: list[dict], rng: random.Random) -> list[dict]:
    out = []
    for row in rows:
        prompt = row["instruction"] + ("\n\n" + row["input"] if row.get("input") else "")
        if len(prompt) < MAX_PROMPT_CHARS:
            out.append({"prompt": prompt, "chosen": row["output"], "rejected": without_prices(row["output"], rng)})
    return out


def main() -> None:
    for split in ("train", "test"):
        rows = [json.loads(line) for line in (INVOICES / f"{split}.jsonl").read_text().splitlines()]
        written = pairs(rows, random.Random(f"preferences-{split}"))
        path = INVOICES / f"preferences_{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in written))
        print(f"{path.relative_to(ROOT)}: {len(written)} pairs")
        short = INVOICES / f"short_{split}.jsonl"
        short.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}, ensure_ascii=False)
                                 + "\n" for r in written))
        print(f"{short.relative_to(ROOT)}: {len(written)} prompts")


if __name__ == "__main__":
    main()
