"""Write the datasets that ship with hubtune (fixed seeds, so reruns give identical files).

    python scripts/make_demo_data.py

hubtune/assets/data/invoices/{train,test}.jsonl   the invoice extraction task (Alpaca rows)
hubtune/assets/data/general/train.jsonl           general instructions, for mixing against forgetting
evals/regression/general_mc.jsonl                 multiple-choice facts the base already knows
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import general  # noqa: E402
import invoices  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN, N_TEST = 1200, 200


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{path.relative_to(ROOT)}: {len(rows)} rows")


def main() -> None:
    # Distinct seeds for train and test; test rows identical to a train row are dropped.
    train = [invoices.task_example(random.Random(f"train-{i}")) for i in range(N_TRAIN)]
    seen = {(r["input"], r["output"]) for r in train}
    test, i = [], 0
    while len(test) < N_TEST:
        row = invoices.task_example(random.Random(f"test-{i}"))
        i += 1
        if (row["input"], row["output"]) not in seen:
            test.append(row)
    data = ROOT / "hubtune" / "assets" / "data"
    write_jsonl(data / "invoices" / "train.jsonl", train)
    write_jsonl(data / "invoices" / "test.jsonl", test)
    write_jsonl(data / "general" / "train.jsonl", general.general_instructions(random.Random(7)))
    write_jsonl(ROOT / "evals" / "regression" / "general_mc.jsonl", general.regression_questions())


if __name__ == "__main__":
    main()
