"""``make bench``: run every ``benchmarks/bench_*.py`` in one run and write the results.

Writes ``docs/benchmarks.md`` (a table of ratios, the command, machine facts) and
``benchmarks/results.json``. ``python -m benchmarks [--quick] [--write] [topic ...]``:

- ``make bench`` (no topic) replaces everything;
- named topics replace only their own rows, keep the others, the plots and the command
  of the full run, and add a line saying which rows a later partial run updated;
- ``--quick`` (a smoke test) prints its results and records nothing unless ``--write``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Context, Result
from djscale.testing import ClusterFactory, stop_all


def _machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.platform()}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM")


def _fmt(x: float) -> str:
    if x != x:  # nan
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def write_report(results: list[Result], failures: list[str], command: str,
                 plots: list[str], updates: list[str], run_at: str) -> None:
    lines = [
        "# Benchmarks",
        "",
        "Every figure is a ratio of two measurements taken side by side in the same run on",
        "the same machine; absolute numbers are shown for orientation only. Regenerate with:",
        "",
        f"    {command}",
        "",
        f"Run: {run_at} on {_machine()}.",
        *[f"Updated later: {u}." for u in updates],
        "",
        "| topic | measurement | value | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {r.topic} | {r.name} | {_fmt(r.value)} {r.unit} | {r.baseline_name}: "
            f"{_fmt(r.baseline)} {r.unit} | {_fmt(r.ratio)}x | {r.target} | {met} |"
        )
    notes = [f"- **{r.topic} / {r.name}**: {r.notes}" for r in results if r.notes]
    if notes:
        lines += ["", "## Notes", "", *notes]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
    if failures:
        lines += ["", "## Benchmarks that failed in this run", "", *[f"- {f}" for f in failures]]
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs/benchmarks.md").write_text("\n".join(lines) + "\n")
    (ROOT / "benchmarks/results.json").write_text(json.dumps(
        {"command": command, "run": run_at, "updates": updates, "plots": plots,
         "machine": _machine(), "results": [r.as_dict() for r in results],
         "failures": failures}, indent=2))


def _previous() -> dict[str, Any]:
    try:
        data = json.loads((ROOT / "benchmarks/results.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _kept(previous: dict[str, Any], modules: set[str], *, inside: bool = False
          ) -> list[Result]:
    """Results of earlier runs for modules not in ``modules`` (``inside``: in them)."""
    fields = set(Result.__dataclass_fields__)
    return [Result(**{k: v for k, v in row.items() if k in fields})
            for row in previous.get("results", [])
            if (row.get("module") in modules) == inside]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("topics", nargs="*", help="only these bench_<topic> modules")
    parser.add_argument("--quick", action="store_true",
                        help="shorter runs (smoke test); records nothing without --write")
    parser.add_argument("--write", action="store_true",
                        help="record a --quick run in docs/benchmarks.md and results.json")
    args = parser.parse_args(argv)
    modules = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    if args.topics:
        modules = [m for m in modules if m.removeprefix("bench_") in args.topics]
    ctx = Context(factory=ClusterFactory(), quick=args.quick,
                  record=not args.quick or args.write)
    results: list[Result] = []
    failures: list[str] = []
    failed: set[str] = set()
    try:
        for name in modules:
            print(f"== {name}", flush=True)
            try:
                module = importlib.import_module(f"benchmarks.{name}")
                got = module.run(ctx)
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                traceback.print_exc()
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                failed.add(name)
                continue
            for r in got:
                r.module = name
                print(f"   {r.name}: {_fmt(r.value)} {r.unit} vs {r.baseline_name} "
                      f"{_fmt(r.baseline)} {r.unit} = {_fmt(r.ratio)}x {r.target}", flush=True)
            results.extend(got)
    finally:
        stop_all()  # first: it stops this process's cache listeners and replica probes too
        ctx.factory.close()
        if failures:
            print(f"logs of this run are kept in {ctx.scratch}", file=sys.stderr)
        else:
            shutil.rmtree(ctx.scratch, ignore_errors=True)
    if args.quick and not args.write:
        print("quick run: nothing recorded (add --write to record it)")
        return 1 if failures else 0
    now = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}"
    this = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    plots = [p.relative_to(ROOT / "docs").as_posix() for p in ctx.plots]
    previous = _previous()
    # A module that failed keeps the rows of its last successful run (the failure is
    # listed in the report): a broken bench must not erase the measurements.
    for row in _kept(previous, failed, inside=True):
        if "earlier run" not in row.notes:
            row.notes = "; ".join(filter(None, [row.notes, "from an earlier run (this "
                                                "run's bench failed, see below)"]))
        results.append(row)
    if args.topics:
        # A partial run replaces only its own topics' rows; the others, the full run's
        # command and its plots are kept, and the update is said.
        results = _kept(previous, set(modules)) + results
        kept_plots = [p for p in previous.get("plots", []) if p not in plots]
        measured = [m for m in modules if m not in failed]
        write_report(results, failures, previous.get("command", "make bench"),
                     kept_plots + plots,
                     [*previous.get("updates", []),
                      *([f"{', '.join(measured)} rows by `{this}` at {now}"] if measured
                        else [])],
                     previous.get("run", now))
    else:
        write_report(results, failures, "make bench" if not args.quick else this, plots, [],
                     now)
    print("wrote docs/benchmarks.md and benchmarks/results.json")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
