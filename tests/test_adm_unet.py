"""The ADM UNet (adm/unet.py) against guided-diffusion's `UNetModel`: the published key layout and size, the forward
pass and its gradient in x bit for bit on small configs, and the legacy q/k/v head split that the weights need."""
import math

import pytest
import torch
from parity import random_model

from adm import ADM_256_UNCOND, ADMConfig, ADMUNet
from adm.unet import GroupNormFloat32, legacy_qkv_attention

# Blended Diffusion's `optimization/image_editor.py` overrides of GD's model_and_diffusion_defaults(), for the
# 256 model; use_fp16=False (the fp16 torso is a speed choice, not part of the architecture).
BD_OVERRIDES = dict(attention_resolutions="32, 16, 8", class_cond=False, diffusion_steps=1000, rescale_timesteps=True,
                    timestep_respacing="100", image_size=256, learn_sigma=True, noise_schedule="linear",
                    num_channels=256, num_head_channels=64, num_res_blocks=2, resblock_updown=True, use_fp16=False,
                    use_scale_shift_norm=True)

# Small configs covering every branch: scale-shift norm and ResBlock up/down-sampling (as ADM), and the plain
# additive embedding with conv resampling, a fixed head count and a class embedding (GD's other options).
SMALL_ADM = ADMConfig(image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(8,),
                      num_head_channels=16, num_res_blocks=2)
SMALL_PLAIN = ADMConfig(image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(16, 8),
                        num_head_channels=None, num_heads=2, num_res_blocks=1, use_scale_shift_norm=False,
                        resblock_updown=False, num_classes=1000)


def guided_diffusion_unet(config: ADMConfig):
    """GD's `script_util.create_model` for the same architecture (its string arguments)."""
    from guided_diffusion.script_util import NUM_CLASSES, create_model
    assert config.num_classes in (None, NUM_CLASSES) and config.out_channels == 6 and config.in_channels == 3
    return create_model(
        image_size=config.image_size, num_channels=config.model_channels, num_res_blocks=config.num_res_blocks,
        channel_mult=",".join(str(m) for m in config.channel_mult), learn_sigma=True,
        class_cond=config.num_classes is not None,
        attention_resolutions=",".join(str(r) for r in config.attention_resolutions), num_heads=config.num_heads,
        num_head_channels=config.num_head_channels or -1, use_scale_shift_norm=config.use_scale_shift_norm,
        dropout=config.dropout, resblock_updown=config.resblock_updown, use_fp16=False)


def shapes(model: torch.nn.Module) -> dict:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def test_adm_256_uncond_on_meta_has_566_tensors_and_552814086_parameters():
    """The count derived from GD's code in the facts file (§3 Size), and the head counts of §3's layout."""
    with torch.device("meta"):
        model = ADMUNet(ADM_256_UNCOND)
    state = model.state_dict()
    assert len(state) == 566
    assert sum(tensor.numel() for tensor in state.values()) == 552_814_086
    assert model.input_blocks[10][1].num_heads == 8 and model.input_blocks[13][1].num_heads == 16
    assert model.middle_block[1].num_heads == 16 and shapes(model)["out.2.weight"] == (6, 256, 3, 3)


@pytest.mark.reference
def test_adm_256_uncond_on_meta_has_the_published_keys_shapes_and_552814086_parameters():
    """Every key and shape equal to guided-diffusion's model as Blended Diffusion creates it, both on meta."""
    script_util = pytest.importorskip("guided_diffusion.script_util")
    arguments = script_util.model_and_diffusion_defaults()
    arguments.update(BD_OVERRIDES)
    with torch.device("meta"):
        ours = ADMUNet(ADM_256_UNCOND)
        reference, _ = script_util.create_model_and_diffusion(**arguments)
    assert shapes(ours) == shapes(reference)
    assert list(ours.state_dict()) == list(reference.state_dict())          # the same order, too
    assert sum(p.numel() for p in ours.parameters()) == 552_814_086


@pytest.mark.reference
def test_adm_512_class_conditional_on_meta_has_the_published_keys_and_558997638_parameters():
    """The 512 model (class-conditional, channel_mult (0.5, 1, 1, 2, 2, 4, 4)) that Blended Diffusion offers too."""
    script_util = pytest.importorskip("guided_diffusion.script_util")
    arguments = {**script_util.model_and_diffusion_defaults(), **BD_OVERRIDES, "image_size": 512, "class_cond": True}
    config = ADMConfig(image_size=512, channel_mult=(0.5, 1, 1, 2, 2, 4, 4), num_classes=1000)
    with torch.device("meta"):
        ours = ADMUNet(config)
        reference, _ = script_util.create_model_and_diffusion(**arguments)
    assert shapes(ours) == shapes(reference)
    assert sum(p.numel() for p in ours.parameters()) == 558_997_638


@pytest.mark.reference
@pytest.mark.precision
@pytest.mark.parametrize("config", [SMALL_ADM, SMALL_PLAIN], ids=["adm", "plain-class-conditional"])
def test_adm_unet_forward_and_input_gradient_equal_guided_diffusion_bit_for_bit(config):
    """Our weights loaded strictly into GD's UNetModel; the same x, timesteps (and labels): torch.equal outputs,
    and torch.equal ∇_x of a random linear functional of the output (what Blended Diffusion differentiates).

    Bit for bit because both sides run the same torch operations in the same order, forward and backward:
    conv2d/conv1d, group_norm on float32, silu, linear, the two einsums and the float32 softmax of the legacy
    attention, avg_pool2d / nearest interpolate, cat; the timestep embedding with the same exp, cos and sin.
    """
    pytest.importorskip("guided_diffusion")
    ours = random_model(ADMUNet, config, seed=3)
    reference = guided_diffusion_unet(config).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=generator)
    timesteps = torch.tensor([999.0, 37.0])                   # Blended Diffusion passes float timesteps
    labels = torch.tensor([3, 998]) if config.num_classes else None
    cotangent = torch.randn(2, 6, 16, 16, generator=generator)

    outputs, gradients = [], []
    for model in (ours, reference):
        x_in = x.clone().requires_grad_(True)
        output = model(x_in, timesteps, labels)
        gradients.append(torch.autograd.grad((output * cotangent).sum(), x_in)[0])
        outputs.append(output.detach())
    assert outputs[0].shape == (2, 6, 16, 16) and outputs[0].abs().max() > 0.1
    assert torch.equal(outputs[0], outputs[1])
    assert gradients[0].abs().max() > 0 and torch.equal(gradients[0], gradients[1])


def per_head_attention(qkv: torch.Tensor, num_heads: int, order: str) -> torch.Tensor:
    """softmax(qᵀk/√ch) attention per head in float64, reading the heads either the legacy way (per head [q|k|v])
    or the new way (GD `QKVAttention`: [all q | all k | all v], heads inside each)."""
    qkv = qkv.double()
    batch, width, length = qkv.shape
    ch = width // (3 * num_heads)
    heads = []
    for head in range(num_heads):
        if order == "legacy":
            q, k, v = qkv[:, head * 3 * ch:(head + 1) * 3 * ch].split(ch, dim=1)
        else:
            q, k, v = (part[:, head * ch:(head + 1) * ch] for part in qkv.chunk(3, dim=1))
        weight = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(ch), dim=-1)   # (B, T, T)
        heads.append(v @ weight.transpose(1, 2))                                  # (B, ch, T)
    return torch.cat(heads, dim=1)


def test_legacy_head_split_reads_q_k_v_head_by_head_and_the_new_order_gives_another_answer():
    """Ours equals the per-head formula with the legacy layout, and is far from the new-order reading of the
    same channels, so the layout choice changes the published model's output.

    Bound for ours (float32) against the float64 formula (u = 2⁻²⁴): every logit is a sum of ch = 8 products of
    scaled |q|, |k| ≤ 4, so Σ|q_c k_c| ≤ 128 and its float32 rounding (two scalings and a length-8 sum) is at most
    δ = (ch + 2)·u·128 ≈ 8e-5. Logits off by ≤ δ move each softmax weight by a factor within e^(±2δ), so the
    weighted sum of values |v| ≤ 4 (weights summing to 1) moves by ≤ 2δ·4 ≈ 6e-4, plus the float32 softmax's and
    the sum's own rounding, a few (T + 1)·u·4 with T = 6: below 1e-3 in all (measured: 2e-7). The two layouts
    differ by order one (measured: 3).
    """
    torch.manual_seed(0)
    num_heads, ch = 3, 8
    qkv = torch.randn(2, 3 * num_heads * ch, 6).clamp(-4, 4)
    ours = legacy_qkv_attention(qkv, num_heads)
    assert ours.shape == (2, num_heads * ch, 6)
    assert (ours.double() - per_head_attention(qkv, num_heads, "legacy")).abs().max() < 1e-3
    assert (ours.double() - per_head_attention(qkv, num_heads, "new")).abs().max() > 0.1
    one_head = qkv[:, :3 * ch]                             # with one head the two layouts coincide
    assert (legacy_qkv_attention(one_head, 1).double() - per_head_attention(one_head, 1, "new")).abs().max() < 1e-3


@pytest.mark.reference
@pytest.mark.precision
def test_legacy_head_split_equals_guided_diffusions_legacy_and_not_its_new_order():
    unet = pytest.importorskip("guided_diffusion.unet")
    torch.manual_seed(0)
    qkv = torch.randn(2, 3 * 4 * 16, 10)
    assert torch.equal(legacy_qkv_attention(qkv, 4), unet.QKVAttentionLegacy(4)(qkv))
    assert (legacy_qkv_attention(qkv, 4) - unet.QKVAttention(4)(qkv)).abs().max() > 0.1


@pytest.mark.precision
@pytest.mark.parametrize("parameter_dtype", [torch.float32, torch.bfloat16])
def test_group_norm_of_a_bfloat16_input_is_computed_in_float32_and_cast_back(parameter_dtype):
    """GD's fp16 model keeps its norms' parameters in float32; a model cast as a whole holds them in bfloat16."""
    norm = GroupNormFloat32(32, 64)
    with torch.no_grad():
        norm.weight.normal_(1, 0.1), norm.bias.normal_(0, 0.1)
    norm = norm.to(parameter_dtype)
    x = torch.randn(2, 64, 4, 4).to(torch.bfloat16)
    expected = torch.nn.functional.group_norm(x.float(), 32, norm.weight.float(), norm.bias.float(), 1e-5)
    output = norm(x)
    assert output.dtype == torch.bfloat16 and torch.equal(output, expected.to(torch.bfloat16))


def test_adm_unet_one_timestep_equals_a_batch_of_that_timestep_and_checks_its_inputs():
    model = random_model(ADMUNet, SMALL_ADM, seed=0)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, 500), model(x, torch.tensor([500, 500])))
        assert torch.equal(model(x, 12.5), model(x, torch.tensor([12.5, 12.5])))
        with pytest.raises(ValueError, match="multiples of 2"):
            model(torch.randn(1, 3, 15, 16), 10)
        with pytest.raises(ValueError, match="unconditional"):
            model(x, 10, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="must divide image_size"):
        ADMConfig(image_size=256, attention_resolutions=(24,))
