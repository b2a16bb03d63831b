"""`djscale chaos freeze SERVICE [--seconds N]`: the command line, without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from djscale.cli import _parser, main


def test_freeze_takes_the_service_and_the_seconds() -> None:
    args = _parser().parse_args(["chaos", "freeze", "pg-default-replica1", "--seconds", "30",
                                 "--fault-after", "8"])
    assert (args.scenario, args.target) == ("freeze", "pg-default-replica1")
    assert (args.fault_seconds, args.fault_after) == (30.0, 8.0)


def test_other_scenarios_need_no_target() -> None:
    args = _parser().parse_args(["chaos", "kill-replica"])
    assert args.target == ""
    assert args.fault_seconds == 3.0


def test_freeze_without_a_running_cluster_is_one_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    topology = tmp_path / "djscale.toml"
    topology.write_text('[project]\nname = "x"\n', encoding="utf-8")
    code = main(["chaos", "freeze", "pg-default", "-t", str(topology),
                 "--state-dir", str(tmp_path / "state")])
    err = capsys.readouterr().err
    assert code != 0
    assert "cluster up" in err and "Traceback" not in err
