#!/usr/bin/env bash
# Reproduce the shipped default model from nothing: render the shapes world -> autoencoder ->
# text-to-image U-Net -> video stages 1-3 -> decoder-only autoencoder fine-tune -> keyframes fine-tune (first,
# first + last, keyframes) -> the frame-interpolation model -> (second model, issue 17) the decoder fine-tune
# continued and the image U-Net continued on rich captions, then install the result into emuvideo/weights/default.
# Every stage is resumable: rerunning this script continues each stage from its latest checkpoint.
# Usage: bash scripts/train_default.sh            (CPU or GPU; accelerate picks the device)
# The stage YAMLs are the shipped model's recipe: stages 01-04 sized for one GPU (image batch 512, video batch 256;
# about 30 min of H100 time), the rest for a 2-core CPU. Without a GPU, stages 00-04 run with the smaller budget
# below (batch, wall minutes: about 3.5 hours in all, with 05-09 about 2 hours more); expect a weaker model than the
# shipped one, whose stages 01-04 had the GPU's budget.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A CPU_BUDGET=([00_autoencoder]="16 25" [01_image]="32 40" [02_video_stage1]="8 15" [03_video_stage2]="8 120"
  [04_video_stage3]="8 10")
if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then gpu=1; else gpu=0; fi
for stage in 00_autoencoder 01_image 02_video_stage1 03_video_stage2 04_video_stage3 05_decoder_finetune 06_keyframes 07_interpolation 08_decoder_finetune_long 09_image_captions; do
  echo "== stage $stage ($(date +%T))"
  if [ -f "runs/default/${stage#*_}/final/.done" ]; then echo "   done already"; continue; fi
  budget=()
  if [ "$gpu" = 0 ] && [ -n "${CPU_BUDGET[$stage]:-}" ]; then
    read -r batch minutes <<<"${CPU_BUDGET[$stage]}"
    budget=(--set "batch_size=$batch" --set "max_minutes=$minutes")
  fi
  emuvideo train --config "configs/stages/$stage.yaml" --resume latest "${budget[@]}"
  touch "runs/default/${stage#*_}/final/.done"
done
python scripts/install_default.py runs/default/interpolation/final --vae runs/default/decoder_finetune_long/final/vae \
  --image-unet runs/default/image_captions/final/image_unet
echo "== finished ($(date +%T))"
