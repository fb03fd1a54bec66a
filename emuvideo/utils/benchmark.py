"""Benchmark helpers for scripts/: where a command's start-up goes, from `python -X importtime`
(scripts/import_time.py); a process's peak resident memory, the device's name and the shapes of a training step's
random inputs (bench_finetune.py, bench_train_speed.py)."""

from __future__ import annotations

import os
import re
import statistics
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


def parse_importtime(stderr: str) -> dict[str, dict[str, float]]:
    """{top-level package: {"self": s, "cumulative": s, "modules": n}} from `-X importtime` output (µs -> s).

    "cumulative" sums the package's entries from outside it: the lines whose importer is another package.
    """
    lines = [(int(m[1]), int(m[2]), len(m[3]) // 2, m[4]) for m in map(LINE.match, stderr.splitlines()) if m]
    packages: dict[str, dict[str, float]] = defaultdict(lambda: {"self": 0.0, "cumulative": 0.0, "modules": 0})
    importer: dict[int, str] = {}  # depth -> the module being imported at that depth
    # A module's line comes after those of what it imported (depth + 1): read backwards, parents come first.
    for self_us, cumulative_us, depth, name in reversed(lines):
        importer[depth] = name
        package = name.split(".")[0]
        row = packages[package]
        row["self"] += self_us / 1e6
        row["modules"] += 1
        parent = importer.get(depth - 1) if depth > 0 else None
        if parent is None or parent.split(".")[0] != package:
            row["cumulative"] += cumulative_us / 1e6
    return dict(packages)


def summarise(runs: list[tuple[float, dict]]) -> dict:
    """Medians over runs of (wall seconds, `parse_importtime` packages): the process's wall time, the imports'
    total (the packages' self times add up to it) and each package's row, largest self time first."""
    names = sorted({name for _, packages in runs for name in packages})
    rows = {}
    for name in names:
        rows[name] = {key: statistics.median(p.get(name, {}).get(key, 0.0) for _, p in runs)
                      for key in ("self", "cumulative", "modules")}
    total = statistics.median(sum(p["self"] for p in packages.values()) for _, packages in runs)
    return {"wall_s": statistics.median(w for w, _ in runs), "imports_s": total,
            "packages": dict(sorted(rows.items(), key=lambda kv: -kv[1]["self"]))}


def rss_mib(field: str = "VmRSS") -> float:
    """This process's `field` of /proc/self/status (VmRSS: now, VmHWM: the peak) in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_mib() -> float:
    return rss_mib("VmHWM")


def reset_peak_rss() -> bool:
    """Reset the peak resident set (VmHWM) to the current one; False where the kernel cannot (Linux < 4.0)."""
    try:  # writing 5 to clear_refs resets VmHWM
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def device_name(device: str, threads: int = 0) -> str:
    """`torch.cuda.get_device_name` for a CUDA device; the CPU's cores and torch threads otherwise."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({os.cpu_count()} cores, {threads or torch.get_num_threads()} torch threads)"
