"""Fixtures shared by the integration tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built once per session (its sdist lies beside it).

    ``python -m build`` makes the sdist first and the wheel from the unpacked sdist, as a
    package index user gets them: a file the sdist forgets is missing from the wheel too.
    """
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"building the wheel failed:\n{result.stdout[-3000:]}" \
                                   f"\n{result.stderr[-3000:]}"
    wheels = sorted(out.glob("djscale-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}: {wheels}"
    return wheels[0]
