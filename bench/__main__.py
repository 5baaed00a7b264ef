"""Run every benchmark and print one summary table of their headline figures.

    python -m bench [--full] [--only NAME ...]

Each benchmark runs as its own process (``python -m bench.bench_x``), which
starts its own embedded broker and database unless ``KAFKA_BOOTSTRAP_SERVERS``
and ``DATABASE_URL`` are set, prints its detailed lines and writes its headline
figures for the table. The default scale keeps the whole run within about ten
minutes on a 2-core machine; ``--full`` uses each benchmark's own, larger
defaults (20 million fixes for the SQL functions). The machine's load average at
the start of each benchmark is printed with its figures, since every figure
here depends on what else the machine is doing.

Exits with status 1 when a benchmark failed to run; a figure below its target
is a finding, reported in the table, not a failure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.figures import Figure, read_figures

# Each benchmark's module and its arguments at the default (modest) scale; an
# empty list means the module's own defaults are modest already.
BENCHMARKS: dict[str, list[str]] = {
    "codec": ["--seconds", "0.5"],
    "processor": ["--records", "100000", "--rounds", "3"],
    "sink": ["200000"],
    "derived": ["--fixes", "20000"],
    "webhook": ["--pushes", "200"],
    "functions": ["--vehicles", "50", "--days", "2", "--runs", "10"],
}
# Only these differ at full scale from the modules' own defaults.
FULL: dict[str, list[str]] = {
    "processor": ["--records", "300000", "--rounds", "3"],
    "sink": ["1000000"],
}


def run_one(name: str, full: bool, scratch: Path) -> tuple[list[Figure], float, str]:
    """Run one benchmark; return its figures, its seconds and the load it met."""
    figures_path = scratch / f"{name}.json"
    arguments = FULL.get(name, []) if full else BENCHMARKS[name]
    command = [sys.executable, "-m", f"bench.bench_{name}", *arguments]
    load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    print(f"\n=== {name}: {' '.join(command[1:])}  (load {load})", flush=True)
    started = time.monotonic()
    result = subprocess.run([*command, "--figures", str(figures_path)], check=False)
    seconds = time.monotonic() - started
    if result.returncode != 0 or not figures_path.exists():
        raise RuntimeError(f"{name} exited with status {result.returncode}")
    return read_figures(figures_path), seconds, load


def cell(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}{unit}"
    return f"{value:.2f}{unit}"


def print_table(rows: list[tuple[Figure, str]], failed: dict[str, str]) -> None:
    """Print one line per figure: ours, baseline, ratio, target and verdict."""
    header = (
        f"{'benchmark':<46}{'ours':>12}{'baseline':>12}{'ratio':>7}  "
        f"{'target':<18}{'met':<8}load at start"
    )
    print("\n" + header)
    print("-" * len(header))
    for figure, load in rows:
        verdict = {True: "met", False: "NOT MET", None: "-"}[figure.met]
        print(
            f"{figure.benchmark:<46}{cell(figure.ours):>12}"
            f"{cell(figure.baseline):>12}{cell(figure.ratio):>7}  "
            f"{figure.target:<18}{verdict:<8}{load}"
        )
    for name, reason in failed.items():
        print(f"{name:<46}{'FAILED':>12}  {reason}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--full", action="store_true", help="run at the real scale")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these"
    )
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    rows: list[tuple[Figure, str]] = []
    failed: dict[str, str] = {}
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-figures-") as scratch:
        for name in names:
            try:
                figures, seconds, load = run_one(name, args.full, Path(scratch))
            except RuntimeError as exc:
                failed[name] = str(exc)
                continue
            print(f"=== {name} took {seconds:.0f} s", flush=True)
            rows.extend((figure, load) for figure in figures)
    print_table(rows, failed)
    print(
        f"\n{'full' if args.full else 'default'} scale, "
        f"{time.monotonic() - began:.0f} s in all, {os.cpu_count()} cores"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
