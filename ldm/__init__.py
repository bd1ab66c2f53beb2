"""Networks of Stable Diffusion and of the paper's LDM: the UNet, the KL autoencoder and the LDM's BERT text
encoder, named like the published checkpoints."""
from .autoencoder import AutoencoderConfig, AutoencoderKL
from .bert import BERTConfig, BERTTextEncoder
from .distributions import DiagonalGaussian
from .unet import UNetConfig, UNetModel

__all__ = ["UNetConfig", "UNetModel", "AutoencoderConfig", "AutoencoderKL", "DiagonalGaussian", "BERTConfig",
           "BERTTextEncoder"]
