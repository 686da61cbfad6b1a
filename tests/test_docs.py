"""The README is a front door and docs/ holds the reference: every relative link in them (and
every #anchor they name) leads somewhere, and the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MOST_LINES = 450

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (.+)$")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = _HEADING.match(line)
        if match and not fenced:
            found.add(slug(match.group(1)))
    return found


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [a or b for a, b in _LINK.findall(text)]


def broken(page: Path) -> list[str]:
    problems = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{page.name}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{page.name}: {target} (no such heading)")
    return problems


def test_every_relative_link_and_anchor_in_the_readme_and_docs_leads_somewhere():
    assert [problem for page in PAGES for problem in broken(page)] == []


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MOST_LINES
    for must in ("make run", "make test", "curl ", "client.embeddings.create", "batches.create"):
        assert must in text, must
    assert "docs/screenshots/" in text
    linked = {Path(target.partition("#")[0]).name for target in links(ROOT / "README.md")}
    pages = {page.name for page in PAGES[1:]}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def test_the_checks_see_a_broken_link_and_a_missing_anchor(tmp_path):
    (tmp_path / "b.md").write_text("# Title\n\n## Some section\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#some-section) [bad](b.md#nope) [gone](c.md) ![x](img.png)\n")
    assert broken(page) == [
        "a.md: b.md#nope (no such heading)",
        "a.md: c.md (no such file)",
        "a.md: img.png (no such file)",
    ]
