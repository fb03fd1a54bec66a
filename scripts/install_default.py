"""Copy a trained pipeline folder into the package as the shipped default (emuvideo/weights/default).

Usage: python scripts/install_default.py runs/default/video_stage3/final [--vae runs/default/decoder_finetune/final/vae]
--vae swaps in a fine-tuned decoder (same encoder, so the latent space is unchanged); --image-unet the text-to-image
U-Net of a run that continued it (same latent space).
--interpolation takes the interpolation model (interpolation_unet/ and its settings) from another model
folder, e.g. an interpolation run that started from an earlier video model.
Only the pipeline's own files travel (model_index.json, configs, *.safetensors); the copy is made beside
the target and renamed into place, so an interrupted install never leaves half a model.
"""

import argparse
import json
import shutil
from pathlib import Path

from emuvideo.pipelines.loading import DEFAULT_MODEL_DIR
from emuvideo.utils.files import atomic_dir


def main(source: str, vae: str | None = None, interpolation: str | None = None, image_unet: str | None = None) -> None:
    src = Path(source)
    if not (src / "model_index.json").is_file():
        raise SystemExit(f"{src} is not a pipeline folder (no model_index.json)")
    # built beside and renamed into place; a copy keeps the 0o600 of weights safetensors wrote: atomic_dir makes
    # them readable by all
    with atomic_dir(DEFAULT_MODEL_DIR) as tmp:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".done", "*.txt"), dirs_exist_ok=True)
        if vae is not None:
            shutil.rmtree(tmp / "vae")
            shutil.copytree(vae, tmp / "vae")
        if image_unet is not None:
            if not (Path(image_unet) / "config.json").is_file():
                raise SystemExit(f"{image_unet} is not a U-Net folder (no config.json)")
            shutil.rmtree(tmp / "image_unet")
            shutil.copytree(image_unet, tmp / "image_unet")
        if interpolation is not None:
            donor = Path(interpolation)
            donor_index = json.loads((donor / "model_index.json").read_text())
            if not (donor / "interpolation_unet").is_dir() or "interpolation" not in donor_index:
                raise SystemExit(f"{donor} has no interpolation_unet/")
            shutil.rmtree(tmp / "interpolation_unet", ignore_errors=True)
            shutil.copytree(donor / "interpolation_unet", tmp / "interpolation_unet")
            index = json.loads((tmp / "model_index.json").read_text())
            index["interpolation_unet"] = donor_index["interpolation_unet"]
            index["interpolation"] = donor_index["interpolation"]
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file())
    print(f"installed {src} -> {DEFAULT_MODEL_DIR} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="install a trained pipeline as the shipped default")
    parser.add_argument("source")
    parser.add_argument("--vae", help="a vae/ folder to use instead of the pipeline's")
    parser.add_argument("--interpolation", help="a model folder whose interpolation_unet/ to use")
    parser.add_argument("--image-unet", help="an image_unet/ folder to use instead of the pipeline's")
    args = parser.parse_args()
    main(args.source, args.vae, args.interpolation, args.image_unet)
