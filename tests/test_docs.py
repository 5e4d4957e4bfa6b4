"""The documentation site: it builds with no dead link between pages, every runnable code block on every
page is run by a test, and the README stays a front page."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import readme_blocks
from readme_blocks import README, ROOT, RUNNABLE

TESTS = Path(__file__).resolve().parent


class Links(HTMLParser):
    """The href/src targets and the ids of one HTML page."""

    def __init__(self):
        super().__init__()
        self.targets: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.targets.append(value)
            elif name == "id" and value:
                self.ids.add(value)


def parsed(page: Path) -> Links:
    links = Links()
    links.feed(page.read_text(errors="replace"))
    return links


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_site_builds_with_every_page_and_the_api_reference(site):
    built = {p.relative_to(site).as_posix() for p in site.rglob("index.html")}
    for page in readme_blocks.DOCS.glob("*.md"):
        assert ("index.html" if page.stem == "index" else f"{page.stem}/index.html") in built, page.name
    front = (site / "index.html").read_text()
    assert "Quickstart" in front and "make demo" in front  # the README is the front page
    reference = parsed(site / "reference" / "index.html").ids
    assert {"hubtune.config.RunConfig", "hubtune.train.train", "hubtune.runs.RunFolder"} <= reference


def test_no_dead_internal_link_in_the_site(site):
    pages = {p: parsed(p) for p in site.rglob("*.html")}
    dead = []
    for page, links in pages.items():
        for target in links.targets:
            url = urlsplit(target)
            if url.scheme or url.netloc or target.startswith(("mailto:", "data:")):
                continue
            base = site if url.path.startswith("/") else page.parent  # the 404 page links from the site's root
            path = (base / unquote(url.path).lstrip("/")).resolve() if url.path else page
            if path.is_dir():
                path = path / "index.html"
            if not path.exists():
                dead.append(f"{page.relative_to(site)}: {target}")
            elif url.fragment and path.suffix == ".html":
                ids = pages[path].ids if path in pages else parsed(path).ids
                if unquote(url.fragment) not in ids:
                    dead.append(f"{page.relative_to(site)}: {target} (no such anchor)")
    assert not dead, "\n".join(dead)


def test_readme_links_resolve_in_the_repository():
    for target in re.findall(r"\]\(([^)]+)\)", README.read_text()):
        if not urlsplit(target).scheme:
            assert (ROOT / urlsplit(target).path).exists(), target


def test_every_runnable_block_on_every_page_is_run_by_a_test():
    # A test runs a section's blocks by its title (readme_blocks.section_blocks); a block is covered when a
    # test file names the title of a section holding it and takes blocks of its language.
    sources = [p.read_text() for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name]
    unrun = []
    for page in readme_blocks.pages():
        text = page.read_text()
        found = readme_blocks.sections(page)
        for match in readme_blocks.BLOCK.finditer(text):
            lang = match.group(1)
            if lang not in RUNNABLE:
                continue
            line = text.count("\n", 0, match.start())
            titles = [s.title for s in found if line in s.lines]
            if not any((f'"{t}"' in src or f"'{t}'" in src) and f'"{lang}"' in src for t in titles for src in sources):
                unrun.append(f"{page.relative_to(ROOT)}:{line + 1} ({lang}, under {titles[-1] if titles else '-'})")
    assert not unrun, "blocks no test runs:\n" + "\n".join(unrun)


def test_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 120, f"README.md has {len(lines)} lines: move sections to a page under docs/"
    titles = [s.title for s in readme_blocks.sections(README)]
    assert titles[:2] == ["hubtune", "Quickstart"]
