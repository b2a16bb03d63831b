"""docs/checks.md lists every system check id djscale can report (so the page cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK_ID = re.compile(r"""["'](djscale(?:_[a-z]+)?\.[WEC]\d{3})["']""")


def _ids_in_source() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "src" / "djscale").rglob("*.py"):
        found.update(CHECK_ID.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_check_id_in_the_source_is_documented_in_checks_md() -> None:
    ids = _ids_in_source()
    assert "djscale.W001" in ids and "djscale_sharding.E001" in ids  # the scan finds them
    page = (ROOT / "docs" / "checks.md").read_text(encoding="utf-8")
    missing = sorted(i for i in ids if f"`{i}`" not in page)
    assert not missing, f"docs/checks.md does not describe {', '.join(missing)}"


def test_checks_md_names_no_id_the_source_does_not_have() -> None:
    page = (ROOT / "docs" / "checks.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`(djscale(?:_[a-z]+)?\.[WEC]\d{3})`", page))
    stale = sorted(documented - _ids_in_source())
    assert not stale, f"docs/checks.md describes ids no code reports: {', '.join(stale)}"
