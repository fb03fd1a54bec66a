#!/usr/bin/env bash
# Reproduce the shipped default model from nothing: render the shapes world -> autoencoder ->
# text-to-image U-Net -> video stages 1-3 -> decoder-only autoencoder fine-tune -> keyframes fine-tune (first,
# first + last, keyframes) -> the frame-interpolation model, then install the result into emuvideo/weights/default.
# Every stage is resumable: rerunning this script continues each stage from its latest checkpoint.
# Usage: bash scripts/train_default.sh            (CPU or GPU; accelerate picks the device)
# The stage YAMLs are sized for one GPU (image batch 512, video batch 256; about 30 min of H100 time for
# stages 01-04). On a CPU, run a stage with smaller batches, e.g.
#   emuvideo train --config configs/stages/03_video_stage2.yaml --set batch_size=16 --resume latest
set -euo pipefail
cd "$(dirname "$0")/.."
for stage in 00_autoencoder 01_image 02_video_stage1 03_video_stage2 04_video_stage3 05_decoder_finetune 06_keyframes 07_interpolation; do
  echo "== stage $stage ($(date +%T))"
  if [ -f "runs/default/${stage#*_}/final/.done" ]; then echo "   done already"; continue; fi
  emuvideo train --config "configs/stages/$stage.yaml" --resume latest
  touch "runs/default/${stage#*_}/final/.done"
done
python scripts/install_default.py runs/default/interpolation/final --vae runs/default/decoder_finetune/final/vae
echo "== finished ($(date +%T))"
