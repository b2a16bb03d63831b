"""README's 5-minute tour, run as written by a new user.

The commands and files are read from README.md (the fenced blocks between the
``<!-- tour:begin`` and ``<!-- tour:end -->`` markers), not copied here: ``sh`` blocks run
line by line in one shell, a block whose info string says ``file=PATH`` is written to PATH
and ``append=PATH`` is appended to it. The only change made to a command is where
``pip install djscale`` finds the package: the wheel built from this checkout, installed
into a fresh virtualenv without extras (the tour adds the ``cluster`` extra for ``cluster
up`` itself).

Checked: every command exits 0; ``manage.py check --deploy`` reports only the warnings the
tour lists; a GET through the load balancer is answered from a replica; after ``djscale
cluster down`` no process of the cluster is left.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

_FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<lang>\w+)(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=indent)```",
    re.M | re.S)
_CHECK_ID = re.compile(r"\b(?:security|djscale|fields|models|urls|admin|auth)\.[WE]\d{3}\b")


@dataclass(frozen=True)
class Block:
    """One fenced block of the tour."""

    lang: str
    info: str
    body: str


def _unindent(body: str, indent: str) -> str:
    return "".join(line[len(indent):] if line.startswith(indent) else line.lstrip(" ")
                   for line in body.splitlines(keepends=True))


def tour() -> tuple[str, list[Block]]:
    """The tour's text and its fenced blocks, in order (indentation removed)."""
    text = README.read_text(encoding="utf-8")
    begin, end = text.index("<!-- tour:begin"), text.index("<!-- tour:end -->")
    section = text[begin:end]
    blocks = [Block(m["lang"], m["info"].strip(), _unindent(m["body"], m["indent"]))
              for m in _FENCE.finditer(section)]
    return section, blocks


def _wheel_requirement(line: str, wheel: Path) -> str:
    """``pip install djscale[extra]`` -> the same install from the built wheel."""
    words = shlex.split(line)
    out = []
    for word in words:
        found = re.fullmatch(r"djscale(\[[\w,]+\])?", word)
        out.append(f"djscale{found[1] or ''} @ {wheel.as_uri()}" if found else word)
    return shlex.join(out)


def script(blocks: list[Block], wheel: Path) -> tuple[str, list[str]]:
    """A bash script running the tour; each step prints a marker first. Returns the steps."""
    lines = ["set -euo pipefail"]
    steps: list[str] = []
    for block in blocks:
        attrs = dict(re.findall(r"(file|append)=(\S+)", block.info))
        if attrs:
            (mode, path), = attrs.items()
            steps.append(f"{mode} {path}")
            lines.append(f"printf '\\n::step {len(steps) - 1}::\\n'")
            lines.append(f"cat {'>' if mode == 'file' else '>>'} {shlex.quote(path)} "
                         "<<'DJSCALE_TOUR_EOF'\n" + ("\n" if mode == "append" else "")
                         + block.body.rstrip("\n") + "\nDJSCALE_TOUR_EOF")
        elif block.lang in ("sh", "bash", "console"):
            for command in block.body.splitlines():
                command = command.split("  #")[0].strip()
                if not command or command.startswith("#"):
                    continue
                if re.match(r"^pip install\b", command):
                    command = _wheel_requirement(command, wheel)
                steps.append(command)
                lines.append(f"printf '\\n::step {len(steps) - 1}::\\n'")
                lines.append(command)
    return "\n".join(lines) + "\n", steps


def _outputs(output: str, count: int) -> list[str]:
    parts = re.split(r"^::step (\d+)::$", output, flags=re.M)
    found = [""] * count
    for index, text in zip(parts[1::2], parts[2::2], strict=True):
        found[int(index)] = text
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built as a release would be."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (found,) = out.glob("djscale-*.whl")
    return found


def _clean_env() -> dict[str, str]:
    """A new user's environment: no dev virtualenv, no djscale or Django variables."""
    dev_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != dev_bin]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJSCALE_", "DJANGO_", "VIRTUAL_ENV", "PYTHON", "PIP_"))}
    env["PATH"] = os.pathsep.join(path)
    return env


def _processes_of(folder: Path) -> list[str]:
    """Processes whose command line or environment mentions ``folder`` (the tour's)."""
    needle = str(folder).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if needle in cmdline or needle in environ:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command}")
    return found


def test_readme_tour_runs_as_written(tmp_path: Path, wheel: Path) -> None:
    text, blocks = tour()
    documented = set(_CHECK_ID.findall(text))
    body, steps = script(blocks, wheel)
    assert any(s.startswith("djscale cluster up") for s in steps), steps
    assert steps[-1].startswith("djscale cluster down"), steps
    (tmp_path / "tour.sh").write_text(body)

    env = _clean_env()
    project = tmp_path / "mysite"
    try:
        proc = subprocess.run(["bash", str(tmp_path / "tour.sh")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=1500, check=False)
        outputs = _outputs(proc.stdout, len(steps))
        assert proc.returncode == 0, (
            f"the tour stopped (exit {proc.returncode}) at step "
            f"{max((i for i, o in enumerate(outputs) if o), default=0)}: "
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

        state = json.loads((project / ".djscale" / "cluster.json").read_text())
        services = state["services"]
        assert {"pg-default", "pg-default-replica1", "pg-default-replica2", "redis", "app-1",
                "app-2", "lb"} <= set(services)

        check = next(o for s, o in zip(steps, outputs, strict=True)
                     if s.startswith("python manage.py check"))
        reported = set(_CHECK_ID.findall(check))
        assert reported <= documented, f"undocumented: {reported - documented}\n{check}"
        assert "ERRORS:" not in check

        answers = [json.loads(o) for s, o in zip(steps, outputs, strict=True)
                   if s.startswith("curl") and s.endswith("/whoami")]
        assert answers and all(a["replica"] and a["read_db"].startswith("default_replica")
                               for a in answers), answers

        assert _processes_of(tmp_path) == [], "processes left after djscale cluster down"
    finally:
        djscale = project / ".." / ".venv" / "bin" / "djscale"
        if djscale.exists() and (project / "djscale.toml").exists():
            subprocess.run([str(djscale), "cluster", "down", "--purge"], cwd=project, env=env,
                           capture_output=True, timeout=300, check=False)
