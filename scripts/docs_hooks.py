"""MkDocs hook: the site's front page is the repository's README.md, with its `docs/` links made relative
to the site, so the README stays the one front page on GitHub, on PyPI and in the site."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    return README.read_text().replace("](docs/", "](")
