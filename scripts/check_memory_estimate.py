"""On a GPU: the meta estimate of `emuvideo estimate-memory` against `torch.cuda.max_memory_allocated` of the
same two training steps run for real, for the rows of docs/memory.md.

    python scripts/check_memory_estimate.py --preset sd21 --frames 16 --sizes 256 512 --out memory_check.json

Each row builds the model twice (on meta, then on the GPU with random weights), prepares it with the same
config, and runs the same steps (`emuvideo.training.memory.measure_step`). Prints a table with the ratio.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

from memory_table import table_parser, table_rows  # scripts/memory_table.py: the same rows

GiB = 2**30


def main() -> int:
    parser = table_parser(__doc__.split("\n\n")[0], "memory_check.json")
    args = parser.parse_args()

    import torch

    from emuvideo.training.memory import measure_step

    if not torch.cuda.is_available():
        parser.error("this check needs a CUDA GPU (the estimate alone: scripts/memory_table.py)")
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| mode | grad ckpt | size | estimate (GiB) | max_memory_allocated (GiB) | estimate / measured |")
    print("|---|---|---|---:|---:|---:|")
    for name, _, size, ckpt, cfg in table_rows(args):
        shape = dict(preset=args.preset, frames=args.frames, size=size, batch=args.batch)
        estimate = measure_step(cfg, device="meta", **shape)
        try:
            real = measure_step(cfg, device="cuda", **shape).measured_bytes
        except torch.cuda.OutOfMemoryError:
            real = None
        gc.collect()
        torch.cuda.empty_cache()
        rows.append({"mode": name, "gradient_checkpointing": ckpt, "size": size,
                     "estimate_bytes": estimate.peak_bytes, "measured_bytes": real})
        measured = f"{real / GiB:.2f}" if real else "out of memory"
        ratio = f"{estimate.peak_bytes / real:.3f}" if real else "-"
        print(f"| {name} | {'yes' if ckpt else 'no'} | {args.frames}×{size}² | {estimate.peak_bytes / GiB:.2f} "
              f"| {measured} | {ratio} |", flush=True)
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
