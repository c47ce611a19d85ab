"""Run every benchmarks/bench_*.py in turn and print the JSON line of each figure it reports.

    python benchmarks/run_all.py [-k NAME]    (or `make bench`)

Each benchmark prints one JSON object per figure on stdout (name, value, unit, target, ok);
progress and per-round detail go to stderr. Exits non-zero when a benchmark fails to run;
a figure that misses its target is reported ("ok": false) but does not fail the run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-k", dest="pattern", default="", help="only benchmarks whose file name contains this")
    parser.add_argument("--quiet", action="store_true", help="hide the benchmarks' stderr")
    args = parser.parse_args()
    failed = []
    missed = []
    for bench in sorted(HERE.glob("bench_*.py")):
        if args.pattern not in bench.name:
            continue
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(bench)],
            check=False,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if args.quiet else None,
            text=True,
        )
        for line in proc.stdout.splitlines():
            try:
                figure = json.loads(line)
            except ValueError:
                continue
            if isinstance(figure, dict) and "name" in figure:
                figure.setdefault("bench", bench.stem)
                print(json.dumps(figure), flush=True)
                if figure.get("ok") is False:
                    missed.append(figure["name"])
        if proc.returncode != 0:
            failed.append(bench.name)
        print(f"# {bench.name}: exit {proc.returncode} in {time.monotonic() - started:.1f}s", file=sys.stderr)
    if missed:
        print(f"# missed target: {', '.join(missed)}", file=sys.stderr)
    if failed:
        print(f"# failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
