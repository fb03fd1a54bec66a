"""Where an `emuvideo` command's start-up goes: `python -X importtime`, summed by top-level package.

Runs the command (`emuvideo.cli.main(ARGS)`) in fresh processes under `-X importtime` and, per top-level package
(`torch`, `diffusers`, `transformers`, `emuvideo`, ...), reports
- self: the time spent in the package's own modules (these add up to the whole import time), and
- cumulative: the time of the package's first import, with everything it pulled in first (torch inside
  diffusers' row when diffusers imported it),
as medians over the repeats, in a table and a JSON file. A last row, "floor", times `import torch, diffusers,
transformers` alone, the least any diffusers-based CLI pays.

Usage:
    python scripts/import_time.py                       # emuvideo --version
    python scripts/import_time.py -- --help
    python scripts/import_time.py --repeats 5 --out import_time.json -- generate --prompt "a red circle moving right" \\
        --output /tmp/x.mp4 --steps 1 --quiet
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from emuvideo.utils.benchmark import parse_importtime, summarise

FLOOR = "import torch, diffusers, transformers"


def run_once(code: str) -> tuple[float, dict]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")][-5:]
        raise SystemExit(f"the command failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return wall, parse_importtime(proc.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per row (default: 3)")
    parser.add_argument("--top", type=int, default=15, help="packages shown in the table (default: 15)")
    parser.add_argument("--out", help="write the summary to this JSON file")
    parser.add_argument("--no-floor", action="store_true", help="skip the torch + diffusers + transformers row")
    parser.add_argument("args", nargs="*", default=["--version"], help="the emuvideo command line (after --)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    command = f"import sys, emuvideo.cli as c; sys.exit(c.main({args.args!r}))"
    codes = {"emuvideo " + " ".join(args.args): command}
    if not args.no_floor:
        codes["floor: " + FLOOR] = FLOOR
    run_once(FLOOR if not args.no_floor else command)  # warm the file cache so no row pays a cold disk
    runs = {name: [] for name in codes}
    for _ in range(args.repeats):  # interleaved, so background load hits both rows alike
        for name, code in codes.items():
            runs[name].append(run_once(code))
    result = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "repeats": args.repeats,
              "rows": {name: summarise(r) for name, r in runs.items()}}

    for name, row in result["rows"].items():
        print(f"\n{name}: process {row['wall_s']:.2f} s, imports {row['imports_s']:.2f} s (medians of {args.repeats})")
        print("| package | self s | cumulative s | modules |")
        print("|---|---|---|---|")
        for package, r in list(row["packages"].items())[: args.top]:
            print(f"| {package} | {r['self']:.3f} | {r['cumulative']:.3f} | {r['modules']:.0f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\n{args.out}")


if __name__ == "__main__":
    main()
