"""On a GPU: the meta estimate of `emuvideo estimate-memory` against `torch.cuda.max_memory_allocated` of the
same two training steps run for real, for the rows of docs/memory.md.

    python scripts/check_memory_estimate.py --preset sd21 --frames 16 --sizes 256 512 --out memory_check.json

Each row builds the model twice (on meta, then on the GPU with random weights), prepares it with the same
config, and runs the same steps (`emuvideo.training.memory.measure_step`). Prints a table with the ratio.

Without a GPU, `--card-rule MEASUREMENTS.json` fits the whole-card rule to measured runs and prints predicted
against measured card for each (`emuvideo.training.memory.card_rule_table`; docs/memory.md's table):

    python scripts/check_memory_estimate.py --card-rule docs/perf/h200_memory.json --out docs/perf/card_rule_h200.json
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

from memory_table import table_parser, table_rows  # scripts/memory_table.py: the same rows

GiB = 2**30


def card_rule(measurements_path: str, out: str) -> int:
    import torch

    from emuvideo.training.memory import card_rule_table

    torch.set_num_threads(1)  # meta ops compute nothing
    measurements = json.loads(Path(measurements_path).read_text())
    (fragmentation, cache, context), rows = card_rule_table(measurements)
    print(f"{measurements['device']}, torch {measurements['torch']}: reserved = peak x {1 + fragmentation:.3f} + "
          f"{cache:.3f} x NF4-replaced weight bytes; card = reserved + {context / GiB:.2f} GiB (fitted on these "
          f"{len(rows)} runs, in-sample)")
    print("| mode | estimate | allocated | reserved: measured | reserved: rule | card: measured | card: rule "
          "| card error |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        measured = f"{r['measured_card_bytes'] / GiB:.2f}" + ("" if r["card_read"] else " (derived)")
        print(f"| {r['mode']} | {r['peak_bytes'] / GiB:.2f} | {r['allocated_bytes'] / GiB:.2f} "
              f"| {r['reserved_bytes'] / GiB:.2f} | {r['predicted_reserved_bytes'] / GiB:.2f} | {measured} "
              f"| {r['predicted_card_bytes'] / GiB:.2f} | {r['card_error']:+.1%} |")
    fit = {"fragmentation": fragmentation, "quantized_cache": cache, "cuda_context_bytes": context}
    Path(out).write_text(json.dumps({"measurements": measurements_path, "device": measurements["device"],
                                     "torch": torch.__version__, "fit": fit, "rows": rows}, indent=1) + "\n")
    return 0


def main() -> int:
    parser = table_parser(__doc__.split("\n\n")[0], "memory_check.json")
    parser.add_argument("--card-rule", metavar="MEASUREMENTS.json",
                        help="no GPU: fit the whole-card rule to these measured runs and print the table")
    args = parser.parse_args()
    if args.card_rule:
        return card_rule(args.card_rule, args.out)

    import torch

    from emuvideo.training.memory import measure_step, measurement_row

    if not torch.cuda.is_available():
        parser.error("this check needs a CUDA GPU (the estimate alone: scripts/memory_table.py)")
    rows = []
    alloc_conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")  # e.g. expandable_segments:True
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, PYTORCH_CUDA_ALLOC_CONF={alloc_conf}")
    print("| mode | grad ckpt | size | estimate (GiB) | max_memory_allocated (GiB) | estimate / measured "
          "| reserved (GiB) | card: rule | card: measured | card error |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, sets, size, ckpt, cfg in table_rows(args):
        shape = dict(preset=args.preset, frames=args.frames, size=size, batch=args.batch)
        estimate = measure_step(cfg, device="meta", **shape)
        try:
            real = measure_step(cfg, device="cuda", **shape)
        except torch.cuda.OutOfMemoryError:
            real = None
        gc.collect()
        torch.cuda.empty_cache()  # the next row starts from an empty cache (the card then holds the context alone)
        # the format of docs/perf/h200_memory.json: `--card-rule` fits the rule to this file as it is
        rows.append(measurement_row(name, sets, size, estimate, real))
        if real:
            print(f"| {name} | {'yes' if ckpt else 'no'} | {args.frames}×{size}² | {estimate.peak_bytes / GiB:.2f} "
                  f"| {real.measured_bytes / GiB:.2f} | {estimate.peak_bytes / real.measured_bytes:.3f} "
                  f"| {real.measured_reserved_bytes / GiB:.2f} | {estimate.card_bytes / GiB:.2f} "
                  f"| {real.measured_card_bytes / GiB:.2f} | {estimate.card_bytes / real.measured_card_bytes - 1:+.1%} |",
                  flush=True)
        else:
            print(f"| {name} | {'yes' if ckpt else 'no'} | {args.frames}×{size}² | {estimate.peak_bytes / GiB:.2f} "
                  f"| out of memory | - | - | {estimate.card_bytes / GiB:.2f} | - | - |", flush=True)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "alloc_conf": alloc_conf,
              "source": "scripts/check_memory_estimate.py; card = torch.cuda.mem_get_info's used memory after the steps",
              "shape": {"preset": args.preset, "frames": args.frames, "size": args.sizes[0], "batch": args.batch},
              "sets": [], "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
