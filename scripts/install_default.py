"""Copy a trained pipeline folder into the package as the shipped default (emuvideo/weights/default).

Usage: python scripts/install_default.py runs/default/video_stage3/final [--vae runs/default/decoder_finetune/final/vae]
--vae swaps in a fine-tuned decoder (same encoder, so the latent space is unchanged).
Only the pipeline's own files travel (model_index.json, configs, *.safetensors); the copy is made beside
the target and renamed into place, so an interrupted install never leaves half a model.
"""

import argparse
import shutil
from pathlib import Path

from emuvideo.pipelines.loading import DEFAULT_MODEL_DIR


def main(source: str, vae: str | None = None) -> None:
    src = Path(source)
    if not (src / "model_index.json").is_file():
        raise SystemExit(f"{src} is not a pipeline folder (no model_index.json)")
    tmp = DEFAULT_MODEL_DIR.with_name(".default.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".done", "*.txt"))
    if vae is not None:
        shutil.rmtree(tmp / "vae")
        shutil.copytree(vae, tmp / "vae")
    old = DEFAULT_MODEL_DIR.with_name(".default.old")
    if DEFAULT_MODEL_DIR.exists():
        DEFAULT_MODEL_DIR.rename(old)
    tmp.rename(DEFAULT_MODEL_DIR)
    shutil.rmtree(old, ignore_errors=True)
    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file())
    print(f"installed {src} -> {DEFAULT_MODEL_DIR} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="install a trained pipeline as the shipped default")
    parser.add_argument("source")
    parser.add_argument("--vae", help="a vae/ folder to use instead of the pipeline's")
    args = parser.parse_args()
    main(args.source, args.vae)
