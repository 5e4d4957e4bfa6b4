"""The parity table of an export, as text for the terminal and as Markdown for the card, the README and the page."""

from __future__ import annotations

from hubtune.tables import text_table


def _interval(summary: dict) -> str:
    low_high = summary.get("ci95")
    return f"{summary['mean']:.3f} [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else f"{summary['mean']:.3f}"


def parity_rows(result: dict) -> list[list[str]]:
    """One row for the adapter in PyTorch and one per exported file."""
    parity = result["parity"]
    n = parity["n"]
    a = parity["adapter"]
    rows = [[f"adapter (PyTorch, {a['quantization']} base)", "", _interval(a["exact_match"]), _interval(a["token_f1"]),
             f"{round(a['stopped']['mean'] * n)}/{n}", "", "", "reference"]]
    for quant, row in parity["files"].items():
        size = result["files"][quant]["bytes"] / 2**20
        tokens = row.get("tokens_identical")
        rows.append([f"{quant} GGUF (llama.cpp)", f"{size:.1f} MiB", _interval(row["exact_match"]),
                     _interval(row["token_f1"]), f"{round(row['stopped']['mean'] * n)}/{n}",
                     f"{row['agreement']:.1%}", f"{tokens}/{n}" if tokens is not None else "",
                     row["verdict"] + (f" ({'; '.join(row['problems'])})" if row["problems"] else "")])
    return rows


HEADER = ["model", "size", "exact match [95% CI]", "token F1 [95% CI]", "stopped", "same answer as adapter",
          "same prompt tokens", "verdict"]


def format_parity(result: dict) -> str:
    parity = result["parity"]
    lines = [f"parity on {parity['n']} prompts of {parity['dataset']['name']} ({parity['split']}), "
             f"greedy, up to {parity['max_new_tokens']} new tokens",
             text_table(HEADER, parity_rows(result), right=(1, 4, 5, 6))]
    if "merge" in result:
        lines.append(f"largest logit difference, merged (float32) vs adapter over the same base, on "
                     f"{result['merge']['logit_prompts']} held-out prompts: {result['merge']['max_logit_difference']:.2e}")
    lines.append(f"tolerance: {parity['tolerance']}")
    return "\n".join(lines)


def parity_markdown(result: dict) -> str:
    rows = parity_rows(result)
    md = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    md += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(md)
