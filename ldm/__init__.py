"""Networks of Stable Diffusion: the UNet and the KL autoencoder, named like the published checkpoints."""
from .unet import UNetConfig, UNetModel
from .autoencoder import AutoencoderConfig, AutoencoderKL
from .distributions import DiagonalGaussian

__all__ = ["UNetConfig", "UNetModel", "AutoencoderConfig", "AutoencoderKL", "DiagonalGaussian"]
