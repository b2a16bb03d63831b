"""README.md reads correctly on a package index: its links are absolute.

A package index shows README.md as the project page, where a link such as
``docs/topology.md`` points nowhere; links go to the repository instead.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
REPOSITORY = "https://github.com/djscale/djscale/"


def _links(text: str) -> list[str]:
    inline = re.findall(r"\]\(([^)\s]+)\)", text)
    reference = re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", text, flags=re.MULTILINE)
    return inline + reference


def test_every_readme_link_is_absolute() -> None:
    relative = [link for link in _links(README.read_text(encoding="utf-8"))
                if not link.startswith(("https://", "http://", "mailto:"))]
    assert relative == [], f"use {REPOSITORY}blob/main/<path> instead"


def test_links_into_the_repository_name_files_that_exist() -> None:
    root = README.parent
    missing = []
    for link in _links(README.read_text(encoding="utf-8")):
        for prefix in (f"{REPOSITORY}blob/main/", f"{REPOSITORY}tree/main/"):
            if link.startswith(prefix):
                path = link[len(prefix):].split("#", 1)[0]
                if not (root / path).exists():
                    missing.append(link)
    assert missing == []
