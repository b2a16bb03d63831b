"""``djscale cluster scale app=N celery=M``: what it reads, and one-line errors otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from djscale.cli import main
from djscale.cluster.scale import ScaleRequest, parse_scale_args
from djscale.errors import ClusterError

DEMO = Path(__file__).resolve().parents[2] / "examples/demo/djscale.toml"


def test_app_and_celery_counts_are_read() -> None:
    assert parse_scale_args(["app=4", "celery=0"]) == ScaleRequest(app=4, celery=0)
    assert parse_scale_args(["celery=2"]) == ScaleRequest(celery=2)


@pytest.mark.parametrize(("args", "message"), [
    (["app=x"], "cannot read 'app=x'"),
    (["web=2"], "cannot read 'web=2'"),
    (["app=2", "app=3"], "app= is given twice"),
    ([], "nothing to scale"),
    (["app=0"], "keep at least one app server"),
])
def test_bad_counts_are_refused_with_one_line(args: list[str], message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        parse_scale_args(args)


def test_the_command_line_prints_the_error_without_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["cluster", "scale", "app=x", "--topology", str(DEMO),
                   "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("djscale: error: cannot read 'app=x'")
    assert "Traceback" not in err
