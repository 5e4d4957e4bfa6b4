"""The fenced code blocks of one documentation section, for the tests that run them as written.

A section is a heading and what follows it up to the next heading of the same or a higher level, on the
README or on any page under docs/; its title is unique across them, so a section can move between pages
without its test changing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", flags=re.S)
RUNNABLE = ("bash", "python", "yaml")  # the languages a test runs; text blocks show output


@dataclass(frozen=True)
class Section:
    page: Path
    title: str
    level: int
    text: str
    lines: range  # its lines on the page, counted from 0

    def blocks(self) -> list[tuple[str, str]]:
        return BLOCK.findall(self.text)


def pages() -> list[Path]:
    """The README and every Markdown page of the docs site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def sections(page: Path) -> list[Section]:
    """Every heading of `page` outside code blocks, with its text."""
    lines = page.read_text().splitlines(keepends=True)
    heads, fenced = [], False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#{1,6}) (.+)$", line.rstrip("\n"))):
            heads.append((i, len(m.group(1)), m.group(2).strip()))
    found = []
    for n, (i, level, title) in enumerate(heads):
        end = next((j for j, lv, _ in heads[n + 1:] if lv <= level), len(lines))
        found.append(Section(page, title, level, "".join(lines[i:end]), range(i, end)))
    return found


def section(title: str) -> Section:
    """The one section titled `title` on the README or a docs page."""
    found = [s for page in pages() for s in sections(page) if s.title == title]
    assert len(found) == 1, f"{len(found)} sections titled {title!r} in README.md and docs/"
    return found[0]


def section_blocks(title: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block of the section titled `title`, in order."""
    return section(title).blocks()
