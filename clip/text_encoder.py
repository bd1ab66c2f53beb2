"""CLIP text towers: SD 1 (OpenAI ViT-L/14) and SD 2 (OpenCLIP ViT-H/14). Written in the clip issue."""
from dataclasses import dataclass


@dataclass(frozen=True)
class TextConfig:
    """A CLIP text transformer; the defaults are SD 1's (OpenAI ViT-L/14).

    `layout` names the published key layout: "sd1" (transformers' `text_model.*`,
    under `cond_stage_model.transformer.`) or "sd2" (open_clip's names, under
    `cond_stage_model.model.`). `skip_last_layers` = 1 gives SD 2's penultimate layer.
    """
    layout: str = "sd1"
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 768
    layers: int = 12
    heads: int = 12
    activation: str = "quick_gelu"       # "quick_gelu" (OpenAI) or "gelu" (OpenCLIP)
    skip_last_layers: int = 0            # SD 2 uses the output of layer 23 of 24, then ln_final


class TextEncoder:  # placeholder until the clip issue lands
    def __init__(self, config: TextConfig):
        raise NotImplementedError("clip.TextEncoder is written in the clip issue")
