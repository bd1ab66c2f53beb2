"""blend/inpaint.py and the inpainting checkpoints (9-channel UNet): the loop against diffusers'
StableDiffusionInpaintPipeline run in this process, the UNet against diffusers' UNet2DConditionModel, the published
key layout against diffusers' converter on `meta`, the presets, loading and the refusals.

The networks are small random ones: the tiny preset's UNet with in_channels=9 (latent 4 | mask 1 | masked image 4).
"""
import types
from dataclasses import replace
from pathlib import Path

import fakes
import pytest
import torch
from golden.precision import UNIT_ROUNDOFF, float32_error, golden_bound
from helpers import in_float64, random_model, run_in_float64, schedule_in_float64
from parity import UNET_PREFIX, diffusers_ddim, diffusers_unet_config, reference_unet

import weights
from blend.inpaint import initial_sigma, inpaint, inpainting_mask, inpainting_unet_problem, masked_image
from ldm import UNetModel
from samplers import DDIMSampler, DPMSolverSampler, EulerSampler, NoiseSchedule
from weights import diffusers_keys, presets, single_file

TINY = presets.get("tiny")
TINY_INPAINTING = replace(TINY, name="tiny-inpainting", unet=replace(TINY.unet, in_channels=9))
STEPS, SIDE = 10, 8                      # DDIM steps; latent side (images of 64 px)


@pytest.fixture(scope="module")
def unet():
    return random_model(UNetModel, TINY_INPAINTING.unet, seed=3)


def inputs(seed: int = 0) -> dict:
    """z_init, a pixel mask (a rectangle whose edges fall inside the 8-pixel cells), its latent mask,
    a masked-image latent and the two contexts."""
    generator = torch.Generator().manual_seed(seed)
    pixel_mask = torch.zeros(1, 1, 8 * SIDE, 8 * SIDE)
    pixel_mask[..., 10:43, 19:61] = 1
    return {"z_init": torch.randn(1, 4, SIDE, SIDE, generator=generator), "pixel_mask": pixel_mask,
            "mask": inpainting_mask(pixel_mask, (SIDE, SIDE)),
            "masked_image_latent": torch.randn(1, 4, SIDE, SIDE, generator=generator),
            "cond": torch.randn(1, 5, 32, generator=generator), "uncond": torch.randn(1, 5, 32, generator=generator)}


def run_ours(unet, values, strength, *, seed=7, schedule=None, sampler=None, **options):
    sampler = sampler or DDIMSampler(schedule or NoiseSchedule.scaled_linear(), STEPS, offset=1)
    with torch.no_grad():
        return inpaint(unet, sampler, values["z_init"], values["mask"], values["masked_image_latent"], values["cond"],
                       values["uncond"], guidance_scale=7.5, strength=strength,
                       generator=torch.Generator().manual_seed(seed), **options)


# --- the loop against diffusers' StableDiffusionInpaintPipeline ----------------------------------------------------

class OursInDiffusersPlace(torch.nn.Module):
    """Our UNet where the pipeline calls `self.unet(x, t, encoder_hidden_states=…, return_dict=False)[0]`."""

    def __init__(self, ours):
        super().__init__()
        self.ours = ours
        self.config = types.SimpleNamespace(in_channels=ours.config.in_channels, time_cond_proj_dim=None,
                                            sample_size=64)

    dtype = property(lambda self: self.ours.out[2].weight.dtype)
    device = property(lambda self: self.ours.out[2].weight.device)

    def forward(self, x, t, encoder_hidden_states, **unused):
        return (self.ours(x, t, encoder_hidden_states),)


def run_pipeline(network, values, strength, *, seed=7, dtype=torch.float32):
    """StableDiffusionInpaintPipeline.__call__ on `network`, with the latents given where it takes them: z_init as
    the image (a 4-channel image is taken as its latent), masked_image_latents, the prompt embeddings, the pixel
    mask (the pipeline binarises it and downsamples it itself). Its VAE is never run (output_type="latent")."""
    import diffusers
    vae = diffusers.AutoencoderKL(block_out_channels=(32,) * 4, layers_per_block=1, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4)
    scheduler = diffusers_ddim(steps_offset=1, steps=STEPS, dtype=dtype)
    pipeline = diffusers.StableDiffusionInpaintPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=network,
                                                        scheduler=scheduler, safety_checker=None,
                                                        feature_extractor=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    values = {k: v.to(dtype) for k, v in values.items()}
    with torch.no_grad():
        return pipeline(prompt_embeds=values["cond"], negative_prompt_embeds=values["uncond"], image=values["z_init"],
                        mask_image=values["pixel_mask"], masked_image_latents=values["masked_image_latent"],
                        height=8 * SIDE, width=8 * SIDE, strength=strength, num_inference_steps=STEPS,
                        guidance_scale=7.5, generator=torch.Generator().manual_seed(seed), output_type="latent").images


@pytest.mark.precision
@pytest.mark.reference
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_inpaint_reproduces_diffusers_inpaint_pipeline_loop_bit_for_bit(unet, strength):
    """The pipeline's loop for a 9-channel UNet (pure noise · init_noise_sigma at strength 1, else add_noise at
    timesteps[S − ⌊S·s⌋]; cat[latents, mask, masked_image_latents] for both CFG halves; DDIMScheduler.step; no blend)
    run on our UNet. Bit for bit by construction: the same torch operations in the same order (DDIMSampler.step and
    q_sample are DDIMScheduler.step and add_noise, test_samplers_ddim and test_samplers_schedule; both downsample
    the mask with F.interpolate's default nearest)."""
    pytest.importorskip("diffusers")
    values = inputs()
    expected = run_pipeline(OursInDiffusersPlace(unet), values, strength)
    assert torch.equal(run_ours(unet, values, strength), expected)
    assert not torch.equal(run_ours(unet, values, strength, seed=8), expected)     # the generator's draw is used


@pytest.mark.reference
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_inpaint_matches_diffusers_pipeline_with_its_own_unet_within_float32_bound(unet, strength):
    """The pipeline with diffusers' UNet2DConditionModel(in_channels=9) holding our weights, against our loop on our
    UNet. The two UNets compute in another order, so the bound is derived, as for a stored golden
    (tests/golden/precision.py): |o − g| ≤ |o − f| + |f − g| with f the exact result, each term measured here as the
    distance of a float32 loop to the same loop in float64 (same float32 noise): 2·(e_ours + e_ref) + u·max|g|."""
    pytest.importorskip("diffusers")
    values = inputs()
    reference = run_pipeline(reference_unet(unet), values, strength)
    reference64 = run_in_float64(lambda: run_pipeline(reference_unet(in_float64(unet)), values, strength,
                                                      dtype=torch.float64))
    ours = run_ours(unet, values, strength)
    values64 = {k: v.double() for k, v in values.items()}
    ours64 = run_in_float64(lambda: run_ours(in_float64(unet), values64, strength,
                                             schedule=schedule_in_float64(NoiseSchedule.scaled_linear())))
    bound = golden_bound(reference, float32_error(reference, reference64), float32_error(ours, ours64))
    difference = (ours.double() - reference.double()).abs().max().item()
    print(f"inpaint loop, strength {strength}: max|ours − diffusers| = {difference:.3g}, bound {bound:.3g}")
    assert difference <= bound


@pytest.mark.reference
def test_nine_channel_unet_matches_diffusers_unet2dconditionmodel_within_float32_bound(unet):
    """Our 9-channel UNet and diffusers' UNet2DConditionModel(in_channels=9) on the same weights (converted by
    diffusers' convert_ldm_unet_checkpoint) and the same input [z_t | mask | masked-image latent]: within
    2·(e_ours + e_ref) + u·max|ref|, each e measured against the same network in float64."""
    pytest.importorskip("diffusers")
    generator = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 9, SIDE, SIDE, generator=generator), torch.randn(2, 5, 32, generator=generator)
    timesteps = torch.tensor([981, 1])
    reference = reference_unet(unet)
    assert reference.conv_in.weight.shape == (32, 9, 3, 3)
    with torch.no_grad():
        expected = reference(x, timesteps, encoder_hidden_states=context).sample
        expected64 = reference_unet(in_float64(unet))(x.double(), timesteps, encoder_hidden_states=context.double())
        output, output64 = unet(x, timesteps, context), in_float64(unet)(x.double(), timesteps, context.double())
    bound = golden_bound(expected, float32_error(expected, expected64.sample), float32_error(output, output64))
    difference = (output.double() - expected.double()).abs().max().item()
    print(f"9-channel UNet: max|ours − diffusers| = {difference:.3g}, bound {bound:.3g}")
    assert output.shape == (2, 4, SIDE, SIDE) and difference <= bound


# --- the loop's own properties -------------------------------------------------------------------------------------

def test_masked_image_sets_the_pixels_to_fill_in_to_zero_as_diffusers_and_stability_do():
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    pixel_mask = torch.tensor([[0.0, 0.49, 0.5, 1.0]]).expand(4, 4).reshape(1, 1, 4, 4)
    kept = (pixel_mask < 0.5).expand_as(x)
    result = masked_image(x, pixel_mask)
    assert torch.equal(result[kept], x[kept]) and torch.equal(result[~kept], torch.zeros_like(result[~kept]))


def test_inpainting_mask_takes_pixel_8i_8j_of_each_cell_not_its_centre():
    """F.interpolate's default "nearest" picks source index ⌊i·H/h⌋ (diffusers' prepare_mask_latents, Stability's
    script); Algorithm 1's resize_mask ("nearest-exact") would pick the cell centre 8i + 4."""
    pixel_mask = torch.zeros(1, 1, 16, 16)
    pixel_mask[..., 8, 0] = 1.0            # cell (1, 0)'s first pixel
    pixel_mask[..., 4, 12] = 0.7           # cell (0, 1)'s centre, above the threshold
    assert inpainting_mask(pixel_mask, (2, 2)).flatten().tolist() == [0.0, 0.0, 1.0, 0.0]


def test_inpaint_refuses_a_text_to_image_unet_naming_the_channels_and_the_inpainting_presets():
    four = random_model(UNetModel, TINY.unet, seed=0)
    with pytest.raises(ValueError, match=r"needs an inpainting UNet, which takes 9 input channels.*takes 4 "
                                         r"\(a text-to-image model\).*sd-1\.5-inpainting or sd-2-inpainting"):
        run_ours(four, inputs(), 1.0)
    assert inpainting_unet_problem(9) is None and "takes 5" in inpainting_unet_problem(5)


def test_inpaint_rejects_strengths_that_run_no_step(unet):
    for strength in (0.0, 1.5, 0.05):
        with pytest.raises(ValueError, match="strength"):
            run_ours(unet, inputs(), strength)


def test_inpaint_callback_records_every_step_with_nothing_blended(unet):
    records = []
    values = inputs()
    result = run_ours(unet, values, 0.6, callback=records.append)
    assert [r.index for r in records] == list(range(6)) and {r.num_steps for r in records} == {6}
    assert [r.t for r in records] == [int(t) for t in DDIMSampler(NoiseSchedule.scaled_linear(), STEPS).timesteps[4:]]
    assert all(r.z is r.z_fg and r.z_bg is r.z_fg for r in records) and torch.equal(records[-1].z, result)
    assert all(torch.equal(b.z_t, a.z) for a, b in zip(records[:-1], records[1:], strict=True))
    assert torch.equal(result, run_ours(unet, values, 0.6))                       # the callback changes nothing


@pytest.mark.reference
def test_initial_sigma_is_diffusers_init_noise_sigma_and_every_sampler_runs(unet):
    """Pure noise is scaled by the sampler's initial σ: 1 in the DDPM form (DDIM, DPM-Solver++), √(σ_max² + 1) in
    Euler's x form, diffusers' EulerDiscreteScheduler.init_noise_sigma for leading timesteps."""
    from diffusers import EulerDiscreteScheduler
    schedule = NoiseSchedule.scaled_linear()
    euler = EulerSampler(schedule, STEPS)
    reference = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    reference.set_timesteps(STEPS)
    assert float(initial_sigma(euler, int(euler.timesteps[0]))) == pytest.approx(float(reference.init_noise_sigma),
                                                                                 rel=4 * UNIT_ROUNDOFF)
    assert initial_sigma(DDIMSampler(schedule, STEPS), 981) == 1.0
    for sampler in (euler, DPMSolverSampler(schedule, STEPS)):
        for strength in (1.0, 0.6):
            assert torch.isfinite(run_ours(unet, inputs(), strength, sampler=sampler)).all()


# --- the checkpoints: presets, key layout, loading -----------------------------------------------------------------

@pytest.mark.parametrize("name, context_dim, text_layout", [("sd-1.5-inpainting", 768, "sd1"),
                                                            ("sd-2-inpainting", 1024, "sd2")])
def test_inpainting_presets_have_a_nine_channel_unet_and_the_published_conventions(name, context_dim, text_layout):
    spec = presets.get(name)
    base = presets.get({"sd1": "sd-1.5", "sd2": "sd-2.1-base"}[text_layout])
    assert spec.unet == replace(base.unet, in_channels=9) and spec.unet.context_dim == context_dim
    assert (spec.text, spec.vae, spec.prediction_type, spec.image_size, spec.scale_factor) == \
        (base.text, base.vae, "epsilon", 512, 0.18215)
    with torch.device("meta"):
        built = spec.build_unet()
    assert built.state_dict()["input_blocks.0.0.weight"].shape == (320, 9, 3, 3)
    assert built.state_dict()["out.2.weight"].shape == (4, 320, 3, 3)


def test_inpainting_presets_name_their_live_sources_in_order():
    sources = {name: [(s.repo, s.single_file) for s in presets.get(name).sources]
               for name in ("sd-1.5-inpainting", "sd-2-inpainting")}
    assert sources == {
        "sd-1.5-inpainting": [("stable-diffusion-v1-5/stable-diffusion-inpainting", "sd-v1-5-inpainting.ckpt")],
        "sd-2-inpainting": [("sd2-community/stable-diffusion-2-inpainting", "512-inpainting-ema.safetensors"),
                            ("stabilityai/stable-diffusion-2-inpainting", "512-inpainting-ema.safetensors")]}
    assert presets.get("sd-1.5-inpainting").float16_only and not presets.get("sd-2-inpainting").float16_only


@pytest.mark.reference
@pytest.mark.parametrize("name, model_type", [("sd-1.5-inpainting", "inpainting"),
                                              ("sd-2-inpainting", "inpainting_v2")])
def test_inpainting_checkpoint_key_layout_matches_diffusers_converter_on_meta(name, model_type):
    """Our full-size UNet's keys and shapes, on `meta`, under the single file's prefix: diffusers' single-file loader
    recognises the inpainting model from them (infer_diffusers_model_type), its converter maps them one to one onto
    UNet2DConditionModel(in_channels=9)'s keys and shapes, and our table (weights.diffusers_keys) maps those back."""
    pytest.importorskip("diffusers")
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, infer_diffusers_model_type
    config = presets.get(name).unet
    with torch.device("meta"):
        ours = {k: v for k, v in UNetModel(config).state_dict().items()}
        reference = UNet2DConditionModel(**diffusers_unet_config(config)).state_dict()
    checkpoint = {UNET_PREFIX + k: v for k, v in ours.items()}
    assert infer_diffusers_model_type(checkpoint) == model_type
    converted = convert_ldm_unet_checkpoint(checkpoint, diffusers_unet_config(config))
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert reference["conv_in.weight"].shape == (320, 9, 3, 3)
    back = diffusers_keys.unet_from_diffusers(dict(reference), config)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def _probe_tensors(spec) -> dict:
    tensors = {k: torch.empty(v, device="meta") for k, v in single_file.probe_shapes(spec).items()}
    key = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    tensors[key] = torch.empty((320, spec.unet.context_dim), device="meta")
    return tensors


@pytest.mark.parametrize("name, family", [("sd-1.5", "sd1"), ("sd-1.5-inpainting", "sd1"),
                                          ("sd-2-inpainting", "sd2")])
def test_single_file_detection_tells_the_nine_channel_file_from_the_four_channel_one(name, family):
    """By the shape of model.diffusion_model.input_blocks.0.0.weight: (320, 9, 3, 3) is the inpainting preset."""
    tensors = _probe_tensors(presets.get(name))
    assert single_file.detect_family(tensors, "f") == family
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    assert single_file.choose_preset(family, Path("model.safetensors"), shapes, None, presets) == name


def test_single_file_of_a_depth_model_is_refused_with_the_supported_channel_counts():
    tensors = _probe_tensors(presets.get("sd-2-inpainting"))
    tensors[single_file.PROBES["unet"]] = torch.empty((320, 5, 3, 3), device="meta")
    with pytest.raises(weights.UnsupportedModelError, match="takes 5 input channels.*4 .*and 9 .inpainting"):
        single_file.detect_family(tensors, "f")


def test_diffusers_folder_with_a_nine_channel_unet_loads_its_weights(tmp_path):
    folder = fakes.write_diffusers_folder(tmp_path / "model", TINY_INPAINTING)
    loaded = weights.load(folder, fast=False)
    assert loaded.unet.config.in_channels == 9
    expected = fakes.random_weights(TINY_INPAINTING, "unet")
    assert all(torch.equal(v, expected[k]) for k, v in loaded.unet.state_dict().items())


def test_float16_only_preset_loads_its_float16_files_widened_for_a_float32_load(offline_cache):
    """SD 1.5-inpainting's repository holds the folders' safetensors in float16 only (float32 only as pickles): a
    float32 load fetches the .fp16 files and widens them. (The preset takes its sizes from the folder's configs.)"""
    files = fakes.diffusers_files(TINY_INPAINTING, torch.float16, variant=".fp16")
    fakes.write_hub_cache(offline_cache, "stable-diffusion-v1-5/stable-diffusion-inpainting", files)
    loaded = weights.load("sd-1.5-inpainting", fast=False)
    assert loaded.spec.name == "sd-1.5-inpainting" and loaded.unet.config.in_channels == 9
    expected = fakes.random_weights(TINY_INPAINTING, "unet", torch.float16)
    assert all(v.dtype == torch.float32 and torch.equal(v, expected[k].float())
               for k, v in loaded.unet.state_dict().items())
