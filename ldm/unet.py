"""The Stable Diffusion UNet (LDM `openaimodel.py` layout). Written in the ldm issue."""
from dataclasses import dataclass


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of an SD UNet; the defaults are SD 1.x.

    Exactly one of `num_heads` (SD 1: 8 heads at every level) and `head_dim`
    (SD 2: 64 channels a head) is set.
    """
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple = (0, 1, 2)   # levels with a SpatialTransformer; the middle block always has one
    num_heads: int | None = 8
    head_dim: int | None = None
    context_dim: int = 768
    transformer_depth: int = 1
    use_linear_proj: bool = False         # SD 2: proj_in/proj_out are Linear, not 1x1 conv
    norm_groups: int = 32
    upcast_attention: bool = False        # SD 2.1 768 runs attention in fp32


class UNetModel:  # placeholder until the ldm issue lands
    def __init__(self, config: UNetConfig):
        raise NotImplementedError("ldm.UNetModel is written in the ldm issue")
