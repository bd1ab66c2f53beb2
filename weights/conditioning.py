"""What a loaded model is conditioned on.

`prompt_conditioning(components, prompt, size_hw)` returns (cond, uncond): what the network takes after
(z, t) for the prompt and for the unconditional half of classifier-free guidance, for every model that
`weights.load` gives:

    SD 1/2, the LDM, the toy   cond = text_encoder(tokenizer(prompt)), uncond = the same of ""
    SDXL                       (context, y), see `sdxl_conditioning`
"""
import torch

from ldm.unet import vector_conditioning


def prompt_conditioning(components, prompt: str, size_hw: tuple, device) -> tuple:
    """(cond, uncond) for `prompt` at the working size (H, W). A tokenizer that refuses the prompt (the toy's,
    for a prompt that names none of its classes) raises its ValueError."""
    if getattr(components, "text_encoder_2", None) is not None:
        return sdxl_conditioning(components, prompt, size_hw, device)
    return tuple(components.text_encoder(components.tokenizer([text]).to(device)) for text in (prompt, ""))


def sdxl_conditioning(components, prompt: str, size_hw: tuple, device) -> tuple:
    """SDXL's (context, y) for the prompt and for the unconditional half (sgm's conditioner, diffusers' pipeline):

        context = cat[ViT-L/14(ids), bigG(ids_2)]            (1, 77, 768 + 1280), both penultimate, no final norm
        y       = [pooled bigG text | emb(H, W, 0, 0, H, W)] original = target = the working size, crop (0, 0)
        uncond  = zeros for context and pooled (an empty negative prompt, `force_zeros_for_empty_prompt`),
                  with the same time ids
    """
    ids, ids_2 = components.tokenizer([prompt]).to(device), components.tokenizer_2([prompt]).to(device)
    context = torch.cat([components.text_encoder(ids), components.text_encoder_2(ids_2)], dim=-1)
    pooled = components.text_encoder_2.pooled_embedding(ids_2)
    height, width = size_hw
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device)
    y = vector_conditioning(pooled, time_ids, components.spec.time_embedding_dim).to(context.dtype)
    y_uncond = vector_conditioning(torch.zeros_like(pooled), time_ids, components.spec.time_embedding_dim)
    return (context, y), (torch.zeros_like(context), y_uncond.to(context.dtype))
