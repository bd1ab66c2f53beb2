"""SDXL's UNet is `ldm.UNetModel` configured with sgm's flags: the published layout at full size (on the
meta device: nothing is allocated) and parity with diffusers' SDXL UNet (`addition_embed_type="text_time"`)
on a small SDXL-shaped config built from the preset with `dataclasses.replace`."""
from dataclasses import replace

import pytest
import torch
from helpers import SDXL, SMALL_SDXL, converted, diffusers_sdxl_config, max_relative_error, random_small_sdxl

from ldm import UNetConfig, UNetModel
from ldm.unet import timestep_embedding, vector_conditioning


@pytest.mark.reference
def test_unet_sdxl_full_size_on_meta_has_the_published_keys_and_shapes():
    """Every key of our full-size SDXL UNet, renamed by diffusers' converter, is a key of diffusers' SDXL
    UNet with the same shape, and no diffusers key is left over; 2,567,463,684 parameters."""
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):
        ours = UNetModel(SDXL.unet).state_dict()
        reference = UNet2DConditionModel(**diffusers_sdxl_config(SDXL.unet)).state_dict()
    renamed = converted(ours, SDXL.unet)
    assert len(renamed) == len(ours), "diffusers' converter dropped or merged some of our keys"
    assert sorted(set(reference) - set(renamed)) == [] and sorted(set(renamed) - set(reference)) == []
    assert {k: (tuple(v.shape), tuple(reference[k].shape)) for k, v in renamed.items()
            if v.shape != reference[k].shape} == {}
    assert sum(v.numel() for v in ours.values()) == 2_567_463_684
    # sgm's names, which the converter reads: label_emb, no upsampler at level 0, 10 blocks in the middle.
    assert {"label_emb.0.0.weight", "label_emb.0.2.weight", "output_blocks.2.2.conv.weight",
            "output_blocks.5.2.conv.weight", "middle_block.1.transformer_blocks.9.attn2.to_k.weight"} <= set(ours)
    assert not any(k.startswith("output_blocks.8.2") or k.startswith("input_blocks.1.1") for k in ours)


def test_unet_sdxl_config_reads_sgm_depths():
    assert [SDXL.unet.depth_at(level) for level in range(3)] == [0, 2, 10] and SDXL.unet.middle_depth == 10
    assert UNetConfig().middle_depth == 1 and UNetConfig(transformer_depth=2).depth_at(3) == 2
    with torch.device("meta"):
        deeper_middle = UNetModel(replace(SMALL_SDXL, transformer_depth_middle=3))
    assert len(deeper_middle.middle_block[1].transformer_blocks) == 3
    with pytest.raises(ValueError, match="one int per level"):
        replace(SDXL.unet, transformer_depth=(0, 2))
    with pytest.raises(ValueError, match="level 1 has attention but transformer depth 0"):
        replace(SDXL.unet, transformer_depth=(0, 0, 10))


def test_vector_conditioning_is_pooled_text_then_six_cos_sin_embeddings():
    pooled = torch.randn(2, 32)
    time_ids = torch.tensor([[1024, 1024, 0, 0, 1024, 1024], [512, 768, 16, 8, 512, 768]])
    y = vector_conditioning(pooled, time_ids)
    assert y.shape == (2, 32 + 6 * 256)
    assert torch.equal(y[:, :32], pooled)
    for i in range(6):
        assert torch.equal(y[:, 32 + 256 * i: 32 + 256 * (i + 1)], timestep_embedding(time_ids[:, i], 256))


@pytest.mark.reference
def test_unet_parity_sdxl_small_fp32():
    """Ours against diffusers' UNet2DConditionModel(addition_embed_type="text_time") holding the same weights
    (converted by diffusers), with pooled text and time ids: 1e-5 relative."""
    from diffusers import UNet2DConditionModel
    ours = random_small_sdxl(seed=3)
    with torch.device("meta"):
        reference = UNet2DConditionModel(**diffusers_sdxl_config(SMALL_SDXL))
    reference.load_state_dict(converted(ours.state_dict(), SMALL_SDXL), strict=True, assign=True)
    reference.eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 16, 24, generator=generator)
    context = torch.randn(3, 7, 48, generator=generator)
    pooled = torch.randn(3, 32, generator=generator)
    time_ids = torch.tensor([[1024., 1024., 0., 0., 1024., 1024.], [768., 512., 0., 0., 768., 512.],
                             [1024., 1536., 64., 32., 896., 1152.]])
    timesteps = torch.tensor([999, 421, 1])
    with torch.no_grad():
        expected = reference(x, timesteps, encoder_hidden_states=context,
                             added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        output = ours(x, timesteps, context, vector_conditioning(pooled, time_ids))
        without_y = ours(x, timesteps, context, vector_conditioning(torch.zeros_like(pooled), time_ids))
    error = max_relative_error(output, expected)
    print(f"SDXL-shaped small UNet vs diffusers: max relative error {error:.2e}")
    assert error <= 1e-5
    assert max_relative_error(without_y, expected) > 1e-3      # the test sees y


def test_unet_sdxl_refuses_a_missing_or_misshapen_y():
    model = random_small_sdxl()
    x, context = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 48)
    with pytest.raises(ValueError, match=r"takes y of shape \(B, 1568\)"):
        model(x, 10, context)
    with pytest.raises(ValueError, match=r"expected y of shape \(1, 1568\), got \(1, 1500\)"):
        model(x, 10, context, torch.randn(1, 1500))
    with torch.device("meta"):
        sd = UNetModel(UNetConfig())
    with pytest.raises(ValueError, match="no vector conditioning"):
        sd(torch.randn(1, 4, 8, 8, device="meta"), 10, torch.randn(1, 3, 768, device="meta"), torch.randn(1, 4))
