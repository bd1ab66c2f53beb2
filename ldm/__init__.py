"""Networks of Stable Diffusion and of the paper's LDM: the UNet, the KL autoencoder and the LDM's BERT text
encoder, named like the published checkpoints."""
from .unet import UNetConfig, UNetModel
from .autoencoder import AutoencoderConfig, AutoencoderKL
from .distributions import DiagonalGaussian
from .bert import BERTConfig, BERTTextEncoder

__all__ = ["UNetConfig", "UNetModel", "AutoencoderConfig", "AutoencoderKL", "DiagonalGaussian", "BERTConfig",
           "BERTTextEncoder"]
