"""Plain-text tables through one renderer, rich's: the licence verdict, the evaluation report and the
data report line up the same way in a terminal, a log file, the Space's Markdown and the README."""

from __future__ import annotations

import io
from collections.abc import Container, Iterable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

# No borders and no column lines: only a rule of dashes under the header.
RULE_UNDER_HEADER = box.Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]], right: Container[int] = ()) -> str:
    """Columns two spaces apart under a rule of dashes, no colour and no trailing spaces; the columns
    whose index is in `right` are right-aligned (numbers)."""
    table = Table(box=RULE_UNDER_HEADER, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0), header_style="")
    for i, name in enumerate(header):
        table.add_column(Text(name), justify="right" if i in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # text as given: no markup
    return render_text(table)


def render_text(renderable) -> str:
    """A rich renderable as plain text, as wide as it needs to be."""
    console = Console(file=io.StringIO(), width=10_000, color_system=None, highlight=False)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())


# One name for one figure: "peak memory", in parts named the same by the run record (summary.json's
# keys), the live view of a running job and the card.
MEMORY_PARTS = {"process_rss": "process RAM", "process RAM": "process RAM", "gpu_allocated": "GPU", "GPU": "GPU"}


def peak_memory_text(mem: dict[str, float] | None) -> str:
    """ "peak memory process RAM 812 MB, GPU 3,120 MB" (empty when nothing was measured)."""
    if not mem:
        return ""
    return "peak memory " + ", ".join(f"{MEMORY_PARTS.get(k, k)} {v:,.0f} MB" for k, v in mem.items())
