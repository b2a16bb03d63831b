"""Where a local cluster keeps PostgreSQL's data when the postgres user cannot reach its
state folder: a folder in /tmp named after the state folder's path, linked from it."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from djscale.cluster import postgres as pg


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setattr(pg, "pg_user", lambda: "postgres")
    state = tmp_path / "private" / ".djscale"
    state.mkdir(parents=True)
    (tmp_path / "private").chmod(0o700)  # the postgres user cannot pass: data in /tmp
    yield state
    home = (state / "postgres").resolve()
    for folder in Path("/tmp").glob(f"{home.name}*"):
        shutil.rmtree(folder)


def test_the_data_lives_in_tmp_linked_from_the_state_folder(state_dir: Path) -> None:
    home = pg.pg_home(state_dir)
    assert home.parent == Path("/tmp") and home.name.startswith("djscale-pg-")
    assert (state_dir / "postgres").resolve() == home
    assert pg.pg_home(state_dir) == home  # found again through the link


def test_data_left_by_a_deleted_state_folder_is_set_aside_not_adopted(
        state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    # An earlier cluster at this path: its state folder deleted, its data left in /tmp.
    old = pg.pg_home(state_dir)
    (old / "default").mkdir()
    (old / "default" / "PG_VERSION").write_text("15\n")
    shutil.rmtree(state_dir)
    state_dir.mkdir()
    with caplog.at_level(logging.WARNING, logger="djscale.cluster"):
        home = pg.pg_home(state_dir)
    assert home == old and list(home.iterdir()) == []  # a new cluster starts empty
    (aside,) = [p for p in Path("/tmp").glob(f"{old.name}-orphan-*")]
    assert (aside / "default" / "PG_VERSION").read_text() == "15\n"  # kept
    assert f"moved to {aside}" in caplog.text
