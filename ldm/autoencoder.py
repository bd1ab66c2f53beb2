"""The KL autoencoder (LDM `autoencoder.py` layout). Written in the ldm issue."""
from dataclasses import dataclass


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of the SD KL-f8 autoencoder; the defaults are SD 1.x and 2.x."""
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple = (1, 2, 4, 4)          # 2**(len-1) = 8x downsampling
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    norm_groups: int = 32


class AutoencoderKL:  # placeholder until the ldm issue lands
    def __init__(self, config: AutoencoderConfig):
        raise NotImplementedError("ldm.AutoencoderKL is written in the ldm issue")
