"""docs/topology-reference.md is generated from the topology parser and must not drift."""

from __future__ import annotations

from pathlib import Path

from djscale.topology_reference import MEANINGS, keys, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "topology-reference.md"


def test_every_key_the_parser_accepts_has_a_meaning() -> None:
    assert [doc.key for doc in keys() if not doc.meaning] == []


def test_every_meaning_names_a_key_the_parser_accepts() -> None:
    known = {doc.key for doc in keys()}
    assert [key for key in MEANINGS if key not in known] == []


def test_the_committed_reference_is_the_generated_one() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/topology-reference.md is out of date: run "
        "`python -m djscale.topology_reference > docs/topology-reference.md`")


def test_the_reference_documents_the_keys_users_are_told_about() -> None:
    text = render()
    for key in ("redis.port", "postgres.password_env", "postgres.sslmode", "redis.tls",
                "redis.addresses", "postgres.options", "extends"):
        assert f"`{key}`" in text, key
