"""`emuvideo.evaluation.autoencoder`: the reconstruction ceiling tells a working autoencoder from a broken one."""

import torch
from diffusers import AutoencoderKL

from emuvideo.evaluation.autoencoder import autoencoder_report
from emuvideo.pipelines.loading import DEFAULT_MODEL_DIR


def test_report_passes_the_shipped_autoencoder_and_fails_one_that_decodes_nothing():
    vae = AutoencoderKL.from_pretrained(DEFAULT_MODEL_DIR / "vae").eval()
    good = autoencoder_report(vae, num_frames=16, num_clips=4)
    assert good["psnr_mean"] > 35 and good["strict"]["all"]["k"] == 4 and good["true_clips_strict_all"] == 1.0
    with torch.no_grad():  # the decoder's last layer zeroed: every frame decodes to flat grey
        vae.decoder.conv_out.weight.zero_()
        vae.decoder.conv_out.bias.zero_()
    bad = autoencoder_report(vae, num_frames=16, num_clips=4)
    assert bad["psnr_mean"] < 15 and bad["strict"]["all"]["k"] == 0 and bad["strict"]["all"]["n"] == 4
