"""The memory table of docs/memory.md: `emuvideo estimate-memory` for every training mode, ± checkpointing.

    python scripts/memory_table.py --preset sd21 --frames 16 --sizes 256 512 --out memory_table.json

Each row is exactly what `emuvideo estimate-memory` prints for the command in its last column (the same
library call: `emuvideo.training.memory.measure_step`), all in one process; rows run one after the other.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

GiB = 2**30
# name -> --set overrides on the finetune defaults (LoRA rank 16 on the temporal layers, AdamW), bf16 weights
MODES = {
    "full (every layer)": ["mode=full", "freeze_spatial=false"],
    "temporal-only": ["mode=full"],
    "temporal-only, NF4 spatial": ["mode=full", "spatial_quantization=nf4"],
    "temporal-only, NF4 spatial, 8-bit AdamW": ["mode=full", "spatial_quantization=nf4", "optim.optimizer=adamw8bit"],
    "LoRA (temporal, rank 16)": ["mode=lora"],
    "QLoRA (NF4 base, paged 8-bit AdamW)": ["mode=lora", "lora.quantize_base=true", "optim.optimizer=paged_adamw8bit"],
}


def table_parser(description: str, out: str) -> argparse.ArgumentParser:
    """The options of the table's rows (shared with scripts/check_memory_estimate.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", default="sd21")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", default=out)
    return parser


def table_rows(args):
    """(mode name, --set pairs, size, checkpointing, TrainConfig) for every row, in the table's order."""
    from emuvideo.config import parse_overrides
    from emuvideo.training.finetune import finetune_config

    for size in args.sizes:
        for name, sets in MODES.items():
            for ckpt in (False, True):
                pairs = [*sets, "weight_dtype=bf16", f"gradient_checkpointing={str(ckpt).lower()}"]
                yield name, pairs, size, ckpt, finetune_config(None, parse_overrides(pairs))


def main() -> int:
    args = table_parser(__doc__.split("\n\n")[0], "memory_table.json").parse_args()

    import torch

    from emuvideo.training.memory import measure_step

    torch.set_num_threads(1)  # meta ops compute nothing; one thread leaves the other core alone
    rows = []
    print("| mode | grad ckpt | size | trainable params | weights | trainable + grads + optimizer | activations "
          "+ temporaries | peak (GiB) | whole card (GiB) | command |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for name, pairs, size, ckpt, cfg in table_rows(args):
        started = time.perf_counter()
        e = measure_step(cfg, preset=args.preset, frames=args.frames, size=size, batch=args.batch, name=name)
        b = e.breakdown
        state = b.get("trainable", 0) + b.get("gradients", 0) + b.get("optimizer", 0)
        act = b.get("activations", 0) + b.get("kernel workspace", 0)
        command = (f"emuvideo estimate-memory --preset {args.preset} --frames {args.frames} --size {size} "
                   f"--batch {args.batch} " + " ".join(f"--set {p}" for p in pairs))
        row = {**e.to_dict(), "mode": name, "gradient_checkpointing": ckpt, "command": command,
               "wall_s": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(f"| {name} | {'yes' if ckpt else 'no'} | {args.frames}×{size}² | {e.trainable_params:,} "
              f"| {b.get('weights', 0) / GiB:.2f} | {state / GiB:.2f} | {act / GiB:.2f} "
              f"| **{e.peak_bytes / GiB:.2f}** | {e.card_bytes / GiB:.2f} | `{command}` |", flush=True)
    Path(args.out).write_text(json.dumps({"preset": args.preset, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
