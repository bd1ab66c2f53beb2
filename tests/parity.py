"""Ours beside the reference implementations: our networks with deterministic random weights, diffusers' and
transformers' networks holding the same tensors, the official loop of Algorithm 1 on diffusers' scheduler,
and the figure every comparison bounds.

Three kinds of code import it, none with a path edit: the tests (as `parity`, through tests/helpers.py or
directly), the golden scripts (`cd tests && python -m golden.make_fixtures`, as `parity`) and the benchmarks
(`python -m benchmarks.versus_diffusers` from the repository root, as `tests.parity`). It imports only the
runtime packages at the top; diffusers and transformers (the reference extra) are imported inside the
functions that build their models, so that tests which need neither can import it.

The weights reach the reference through diffusers' own converters (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`) or, for the SD 1 text tower, as the published `text_model.*` tensors loaded
strictly into transformers' `CLIPTextModel`.
"""
import torch

from weights import fill_random_

UNET_PREFIX = "model.diffusion_model."       # the published single file's prefixes
VAE_PREFIX = "first_stage_model."
BOS, EOS = 49406, 49407                       # CLIP's <|startoftext|> and <|endoftext|>


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|a − e| / max|e|: the figure the parity tests bound."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def random_model(cls, config, seed: int):
    """cls(config) with `fill_random_` weights, built on the meta device to skip the default init."""
    with torch.device("meta"):
        model = cls(config)
    return fill_random_(model.to_empty(device="cpu"), seed).eval()


# --- the UNet -------------------------------------------------------------------------------------

def diffusers_unet_config(c) -> dict:
    """UNet2DConditionModel's arguments for an SD 1/2 UNetConfig."""
    block_out_channels = [c.model_channels * m for m in c.channel_mult]
    levels = range(len(c.channel_mult))
    return dict(
        sample_size=64, in_channels=c.in_channels, out_channels=c.out_channels,
        down_block_types=["CrossAttnDownBlock2D" if i in c.attention_levels else "DownBlock2D" for i in levels],
        up_block_types=["CrossAttnUpBlock2D" if i in c.attention_levels else "UpBlock2D" for i in reversed(levels)],
        block_out_channels=block_out_channels, layers_per_block=c.num_res_blocks,
        cross_attention_dim=c.context_dim,
        attention_head_dim=[c.heads_at(ch) for ch in block_out_channels],  # diffusers' name for the head *count*
        use_linear_projection=c.use_linear_proj, norm_num_groups=c.norm_groups,
        transformer_layers_per_block=c.transformer_depth, upcast_attention=c.upcast_attention)


def to_diffusers_unet(state_dict: dict, c) -> dict:
    """Our (published-layout) UNet state dict in diffusers' layout, by diffusers' converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    converted = convert_ldm_unet_checkpoint({UNET_PREFIX + k: v for k, v in state_dict.items()},
                                            diffusers_unet_config(c))
    assert len(converted) == len(state_dict), "diffusers' converter dropped or duplicated UNet keys"
    return converted


def reference_unet(ours):
    """diffusers' UNet2DConditionModel holding the weights of our UNetModel (shared storage), loaded strictly."""
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):
        reference = UNet2DConditionModel(**diffusers_unet_config(ours.config))
    reference.load_state_dict(to_diffusers_unet(ours.state_dict(), ours.config), strict=True, assign=True)
    return reference.eval()


# --- the autoencoder ------------------------------------------------------------------------------

def diffusers_vae_config(c) -> dict:
    """diffusers' AutoencoderKL arguments for an AutoencoderConfig."""
    assert c.embed_dim == c.z_channels, "diffusers' AutoencoderKL has embed_dim == z_channels"
    return dict(
        in_channels=c.in_channels, out_channels=c.out_channels,
        down_block_types=["DownEncoderBlock2D"] * len(c.ch_mult), up_block_types=["UpDecoderBlock2D"] * len(c.ch_mult),
        block_out_channels=[c.ch * m for m in c.ch_mult], layers_per_block=c.num_res_blocks,
        latent_channels=c.z_channels, norm_num_groups=c.norm_groups, sample_size=64)


def to_diffusers_vae(state_dict: dict, c) -> dict:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    converted = convert_ldm_vae_checkpoint({VAE_PREFIX + k: v for k, v in state_dict.items()}, diffusers_vae_config(c))
    assert len(converted) == len(state_dict), "diffusers' converter dropped or duplicated VAE keys"
    return converted


def reference_vae(ours):
    """diffusers' AutoencoderKL holding the weights of our AutoencoderKL (shared storage), loaded strictly."""
    from diffusers import AutoencoderKL
    with torch.device("meta"):
        reference = AutoencoderKL(**diffusers_vae_config(ours.config))
    reference.load_state_dict(to_diffusers_vae(ours.state_dict(), ours.config), strict=True, assign=True)
    return reference.eval()


# --- the SD 1 text tower --------------------------------------------------------------------------

def clip_text_config(config, layers: int, projection_dim: int | None = None, attn_implementation: str = "eager"):
    """transformers' CLIPTextConfig for our TextConfig, with `layers` blocks."""
    from transformers import CLIPTextConfig
    return CLIPTextConfig(
        vocab_size=config.vocab_size, hidden_size=config.width, intermediate_size=4 * config.width,
        num_hidden_layers=layers, num_attention_heads=config.heads, max_position_embeddings=config.context_length,
        hidden_act=config.activation, layer_norm_eps=config.layer_norm_eps, attention_dropout=0.0,
        projection_dim=projection_dim or config.width, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1,
        attn_implementation=attn_implementation)


def strict_load(module, state_dict):
    module.load_state_dict(state_dict, strict=True)
    return module.eval()


def strip_text_model_prefix(state_dict):
    """Published `text_model.*` keys -> transformers 5's CLIPTextModel keys (it has no inner text_model)."""
    assert all(k.startswith("text_model.") for k in state_dict), "expected only text_model.* keys"
    return {k[len("text_model."):]: v for k, v in state_dict.items()}


def reference_sd1_text_encoder(ours, attn_implementation: str = "eager"):
    """transformers' CLIPTextModel holding the weights of our SD 1 tower (the `text_model.*` keys)."""
    from transformers import CLIPTextModel
    towers = {k: v for k, v in ours.state_dict().items() if k.startswith("text_model.")}
    config = clip_text_config(ours.config, ours.config.layers, attn_implementation=attn_implementation)
    return strict_load(CLIPTextModel(config), strip_text_model_prefix(towers))


# --- the official loop of Algorithm 1 -------------------------------------------------------------

def diffusers_ddim(steps_offset: int, steps: int, dtype=torch.float32):
    """SD's DDIMScheduler. In a float64 run its ᾱ table is cast to float64 too, so that the square roots
    of a step are taken in float64 and the run measures their float32 rounding (tests/golden/make_fixtures.py)."""
    from diffusers import DDIMScheduler
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=steps_offset)
    scheduler.set_timesteps(steps)
    if dtype == torch.float64:
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(dtype)
        scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.to(dtype)
    return scheduler


def guided_noise(unet, latents, t, cond, uncond, guidance_scale: float):
    """The official script's guidance: one call on [uncond; cond], ε_u + w·(ε_c − ε_u)."""
    batch = latents.shape[0]
    context = torch.cat([uncond.expand(batch, -1, -1), cond.expand(batch, -1, -1)])
    noise_pred = unet(torch.cat([latents] * 2), t, context)
    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
    return noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)


def run_official_loop(unet, z_init, mask, cond, uncond, generator, *, guidance_scale: float, start: float,
                      steps: int = 50):
    """The loop of scripts/text_editing_SD2.py (omriav/blended-latent-diffusion) on `unet` (ours, or
    diffusers' with `.sample` unwrapped), every schedule step done by diffusers' DDIMScheduler: no
    steps_offset (timesteps [980, 960, …, 0] at 50 steps), a pure-noise start at timesteps[int(steps·start)],
    the background noised to the current t after each step. The script draws that noise with torch.randn_like
    (the global generator); here every draw comes from `generator`, shaped like z_init.

    Returns (z_0, the timesteps run).
    """
    scheduler = diffusers_ddim(steps_offset=0, steps=steps, dtype=z_init.dtype)  # the script sets no steps_offset

    def draw_noise():
        return torch.randn(z_init.shape, generator=generator, device=z_init.device, dtype=z_init.dtype)

    latents = draw_noise()
    timesteps = scheduler.timesteps[int(len(scheduler.timesteps) * start):]
    for t in timesteps:
        noise_pred = guided_noise(unet, scheduler.scale_model_input(latents, t), t, cond, uncond, guidance_scale)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
        noise = draw_noise()
        noise_source_latents = scheduler.add_noise(z_init, noise, t)
        latents = latents * mask + noise_source_latents * (1 - mask)
    return latents, timesteps
