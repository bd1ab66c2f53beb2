"""OpenAI's ADM (Dhariwal & Nichol 2021): the pixel-space UNet that Blended Diffusion edits with."""
from .unet import ADMConfig, ADMUNet

ADM_256_UNCOND = ADMConfig()   # `256x256_diffusion_uncond.pt`, the model Blended Diffusion uses

__all__ = ["ADMConfig", "ADMUNet", "ADM_256_UNCOND"]
