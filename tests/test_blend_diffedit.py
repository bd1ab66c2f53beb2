"""blend/diffedit.py: DiffEdit's mask, DDIM encoding and masked decoding against diffusers'
`StableDiffusionDiffEditPipeline`, its defining properties, and its mask on the exact toy model.

The reference tests build the pipeline from diffusers' UNet2DConditionModel and AutoencoderKL holding the tiny
preset's networks with our deterministic random weights (tests/parity.py), and call OUR functions on that same
diffusers UNet (`.sample` unwrapped): both sides run the same network on the same latents, so the comparison
isolates the algorithm, and it is bit for bit because each side runs the same torch operations in the same
order (q_sample = add_noise, DDIMSampler.step = DDIMScheduler.step, invert_step = DDIMInverseScheduler.step,
classifier_free_guidance = the pipeline's guidance line, one network call on the same batch).
"""
import pytest
import torch
from parity import random_model

import weights
from blend.diffedit import ddim_invert, diffedit, estimate_mask, noise_difference
from ldm import AutoencoderKL, UNetModel
from samplers import DDIMSampler, DPMSolverSampler, EulerSampler, NoiseSchedule, ddim_sample, guided_model_output
from weights import fill_random_, presets
from weights.toy import ToyDenoiser, ToyTokenizer

TINY = presets.get("tiny")
LATENT = (1, 4, 8, 8)          # a 64×64 image's latent in the tiny preset
STEPS = 10                     # DDIM steps of the encode/decode tests: ⌊10·0.8⌋ = 8 steps each way


def embeddings(seed: int, count: int) -> list[torch.Tensor]:
    """`count` random text contexts (1, 7, 32), the tiny UNet's context width."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 7, TINY.unet.context_dim, generator=generator) for _ in range(count)]


@pytest.fixture(scope="module")
def reference():
    """(pipeline, unet): diffusers' DiffEdit pipeline on the tiny networks, and its UNet as our Denoiser."""
    pytest.importorskip("diffusers")
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline
    from parity import reference_unet, reference_vae
    unet = reference_unet(random_model(UNetModel, TINY.unet, 0))
    vae = reference_vae(random_model(AutoencoderKL, TINY.vae, 1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)          # SD's scheduler config
    pipeline = StableDiffusionDiffEditPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, inverse_scheduler=DDIMInverseScheduler.from_config(scheduler.config),  # as its docs
        requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, lambda z, t, context: unet(z, t, encoder_hidden_states=context).sample


def sampler(steps: int = 50, eta: float = 0.0) -> DDIMSampler:
    return DDIMSampler(NoiseSchedule.scaled_linear(), steps, eta=eta)


def generate_mask(pipeline, z_init, query, source, negative, *, swapped: bool, **options):
    """pipeline.generate_mask on prompt embeddings. diffusers 0.42 unpacks encode_prompt's (prompt, negative)
    as (negative, prompt) (pipeline lines 980 and 995), so its batch is [src, src_neg, tgt, tgt_neg] and its
    guidance ε_c + w·(ε_u − ε_c). swapped=True hands it each pair swapped, which that unpacking undoes: the
    pipeline then runs the batch [src_neg, src, tgt_neg, tgt] and the guidance ε_u + w·(ε_c − ε_u) it means to."""
    pairs = dict(target_prompt_embeds=query, target_negative_prompt_embeds=negative, source_prompt_embeds=source,
                 source_negative_prompt_embeds=negative)
    if swapped:
        pairs = dict(target_prompt_embeds=negative, target_negative_prompt_embeds=query,
                     source_prompt_embeds=negative, source_negative_prompt_embeds=source)
    return torch.from_numpy(pipeline.generate_mask(image=z_init, output_type="np", **pairs, **options)).float()


@pytest.mark.precision
@pytest.mark.reference
def test_estimate_mask_reproduces_diffusers_generate_mask_bit_for_bit(reference):
    """The source given as a latent (generate_mask takes a 4-channel image as the latents, copied n times), its
    defaults (n = 10, strength 0.5 at 50 steps, guidance 7.5) but clamp_ratio 2 (threshold at the mean, so that
    the random network's mask is neither empty nor full), the embeddings handed over so that it runs the batch
    it means to (`generate_mask` above): the same noise draw, the same batch, guidance, mean, clamp and
    threshold. Bit for bit, the guidance map and so the mask."""
    pipeline, unet = reference
    z_init = torch.randn(LATENT, generator=torch.Generator().manual_seed(3))
    query, source, negative = embeddings(0, 3)
    expected = generate_mask(pipeline, z_init, query, source, negative, swapped=True, mask_thresholding_ratio=2.0,
                             generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        mask = estimate_mask(unet, sampler(), z_init, query, source, uncond=negative, clamp_ratio=2.0,
                             generator=torch.Generator().manual_seed(7))
    assert mask.shape == (1, 1, 8, 8) and 0 < mask.mean() < 1
    assert torch.equal(mask[0], expected)


@pytest.mark.reference
def test_estimate_mask_equals_generate_mask_called_as_documented(reference):
    """Called as documented, generate_mask guides away from the prompts (`generate_mask` above): its map is
    |1 − w|·D instead of our w·D, D = mean|ε_Q − ε_R|, and the threshold, a multiple of the map's mean, does not
    see the scale. So the masks are equal wherever rounding (float32, relative ~1e-6 on D) cannot carry a pixel
    across the threshold: asserted, by the margin of our map to it, before comparing."""
    pipeline, unet = reference
    z_init = torch.randn(LATENT, generator=torch.Generator().manual_seed(3))
    query, source, negative = embeddings(0, 3)
    expected = generate_mask(pipeline, z_init, query, source, negative, swapped=False, mask_thresholding_ratio=2.0,
                             generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        difference = noise_difference(unet, sampler(), z_init, query, source, uncond=negative,
                                      generator=torch.Generator().manual_seed(7))
    assert relative_margin(difference, 1.0) > 1e-4
    assert torch.equal((difference > difference.mean()).float(), expected)


def relative_margin(difference: torch.Tensor, multiple: float) -> float:
    """How far the map's nearest pixel is from the threshold multiple·mean, relative to the mean."""
    return ((difference - multiple * difference.mean()).abs().min() / difference.mean()).item()


@pytest.mark.precision
@pytest.mark.reference
def test_estimate_mask_on_posterior_draws_reproduces_generate_mask_from_pixels(reference):
    """From pixels, generate_mask encodes n copies with one `latent_dist.sample(generator)`, then draws the
    noise from the same generator. Our caller's part: the same n draws (the same VAE, the same operations),
    then estimate_mask with the generator where the draws left it. Bit for bit."""
    pipeline, unet = reference
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))      # [0, 1]
    query, source, negative = embeddings(1, 3)
    options = dict(target_prompt_embeds=query, target_negative_prompt_embeds=negative, source_prompt_embeds=source,
                   source_negative_prompt_embeds=negative, mask_thresholding_ratio=2.0, num_maps_per_mask=4)
    expected = pipeline.generate_mask(image=pixels, generator=torch.Generator().manual_seed(5), output_type="np",
                                      **options)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        copies = pipeline.image_processor.preprocess(pixels).repeat_interleave(4, dim=0)       # 2x − 1, n copies
        draws = pipeline.vae.config.scaling_factor * pipeline.vae.encode(copies).latent_dist.sample(generator)
        mask = estimate_mask(unet, sampler(), draws, query, source, uncond=negative, num_maps=4, clamp_ratio=2.0,
                             generator=generator)
    assert 0 < mask.mean() < 1 and torch.equal(mask[0], torch.from_numpy(expected).float())


@pytest.mark.precision
@pytest.mark.reference
@pytest.mark.parametrize("guidance_scale", [1.0, 7.5], ids=["paper-empty-text", "diffusers-caption-cfg"])
def test_ddim_invert_reproduces_diffusers_invert_bit_for_bit(reference, guidance_scale):
    """The paper's encoding (one text, no guidance: the empty text's context) and diffusers' default (the
    source caption with guidance 7.5): the same timesteps [1, 101, …, 701] at 10 steps and r = 0.8, the network
    at the destination t, ᾱ_0 before the first step. Returned most noisy first, as `.invert(...).latents`."""
    pipeline, unet = reference
    z_init = torch.randn(LATENT, generator=torch.Generator().manual_seed(8))
    caption, empty = embeddings(2, 2)
    guided = guidance_scale != 1.0
    expected = pipeline.invert(image=z_init, prompt_embeds=caption if guided else empty,
                               negative_prompt_embeds=empty if guided else None, num_inference_steps=STEPS,
                               inpaint_strength=0.8, guidance_scale=guidance_scale).latents      # (1, 8, 4, 8, 8)
    with torch.no_grad():
        encoded = ddim_invert(unet, sampler(STEPS), z_init, caption if guided else empty, encode_ratio=0.8,
                              guidance_scale=guidance_scale, uncond=empty if guided else None)
    assert len(encoded) == 8 and torch.equal(torch.stack(encoded, 1), expected)


@pytest.mark.precision
@pytest.mark.reference
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_diffedit_decoding_reproduces_diffusers_call_loop_bit_for_bit(reference, eta):
    """__call__'s loop on given encoded latents: start from the most noisy, guided DDIM step, blend with the
    encoded latent of the same index. With η = 1 each step draws its noise from the generator, in the same
    order on both sides. Bit for bit."""
    pipeline, unet = reference
    generator = torch.Generator().manual_seed(9)
    encoded = [torch.randn(LATENT, generator=generator) for _ in range(8)]
    mask = (torch.rand(1, 1, 8, 8, generator=generator) > 0.5).float()
    prompt, empty = embeddings(3, 2)
    expected = pipeline(mask_image=mask.clone(), image_latents=torch.stack(encoded, 1), prompt_embeds=prompt,
                        negative_prompt_embeds=empty, num_inference_steps=STEPS, inpaint_strength=0.8,
                        guidance_scale=7.5, eta=eta, generator=torch.Generator().manual_seed(1),
                        output_type="latent").images
    with torch.no_grad():
        z_0 = diffedit(unet, sampler(STEPS, eta), encoded[0], mask, prompt, empty, guidance_scale=7.5,
                       inverted=encoded, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z_0, expected)


# --- properties, on our tiny UNet ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    """(unet, z_init, cond, uncond): the tiny preset's UNet with seed-0 random weights, a latent, two contexts."""
    unet = fill_random_(UNetModel(TINY.unet), seed=0).eval()
    return (unet, torch.randn(LATENT, generator=torch.Generator().manual_seed(2)), *embeddings(4, 2))


def run_diffedit(tiny, mask_value: float | None = None, **options):
    unet, z_init, cond, uncond = tiny
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    if mask_value is not None:
        mask.fill_(mask_value)
    with torch.no_grad():
        return diffedit(unet, sampler(STEPS), z_init, mask, cond, uncond, guidance_scale=5.0, **options)


@pytest.mark.precision
def test_diffedit_empty_mask_returns_last_encoded_latent_and_full_mask_plain_ddim(tiny):
    """M = 0 keeps the encoding trajectory: z_0 is the latent encoded to t = 1 (diffusers' last blend), not
    z_init. M = 1 is guided DDIM from x_r, the paper's "Encode-Decode" ablation (DiffEdit without a mask)."""
    unet, z_init, cond, uncond = tiny
    with torch.no_grad():
        encoded = ddim_invert(unet, sampler(STEPS), z_init, uncond)
        plain = ddim_sample(lambda z, t: guided_model_output(unet, z, t, cond, uncond, 5.0), sampler(STEPS),
                            encoded[0], sampler(STEPS).timesteps[2:])
    assert torch.equal(run_diffedit(tiny, 0.0), encoded[-1]) and not torch.equal(encoded[-1], z_init)
    assert torch.equal(run_diffedit(tiny, 1.0), plain)


def test_diffedit_encodes_with_the_empty_text_unless_given_latents(tiny):
    unet, z_init, cond, uncond = tiny
    with torch.no_grad():
        with_empty_text = ddim_invert(unet, sampler(STEPS), z_init, uncond)
        with_caption = ddim_invert(unet, sampler(STEPS), z_init, cond)
    assert torch.equal(run_diffedit(tiny), run_diffedit(tiny, inverted=with_empty_text))
    assert not torch.equal(run_diffedit(tiny), run_diffedit(tiny, inverted=with_caption))


def test_diffedit_callback_records_every_step_and_changes_nothing(tiny):
    records = []
    recorded = run_diffedit(tiny, callback=records.append)
    assert torch.equal(recorded, run_diffedit(tiny))
    assert [r.index for r in records] == list(range(8)) and [r.t for r in records] == list(range(701, 0, -100))
    for before, after in zip(records, records[1:], strict=False):
        assert torch.equal(after.z_t, before.z) and after.t == before.t_prev
    assert all(torch.equal(r.z, r.z_fg * r.mask + r.z_bg * (1 - r.mask)) for r in records)
    assert torch.equal(records[-1].z, recorded)


def test_estimate_mask_without_guidance_is_the_guided_mask(tiny):
    """With a shared uncond, ε̃_Q − ε̃_R = w·(ε_Q − ε_R), so the guided map is w times the unguided one and the
    threshold, a multiple of the mean, gives the same mask. Derived bound: each ε̃ rounds at u·(1 + 2w)·|ε|
    (u = 2⁻²⁴), about 1e-6 relative here; rtol 1e-4 bounds the maps, and the mask is equal where the margin
    to the threshold exceeds that (asserted). This is the case diffusers cannot run (its unguided path fails)."""
    unet, z_init, cond, uncond = tiny
    maps = {}
    with torch.no_grad():
        for w in (1.0, 7.5):
            maps[w] = noise_difference(unet, sampler(), z_init, cond, uncond, uncond=uncond, guidance_scale=w,
                                       num_maps=4, generator=torch.Generator().manual_seed(1))
        masks = [estimate_mask(unet, sampler(), z_init, cond, uncond, uncond=uncond, guidance_scale=w, num_maps=4,
                               clamp_ratio=2.0, generator=torch.Generator().manual_seed(1)) for w in (1.0, 7.5)]
    torch.testing.assert_close(maps[7.5], 7.5 * maps[1.0], rtol=1e-4, atol=0)
    assert relative_margin(maps[1.0], 1.0) > 1e-3 and 0 < masks[0].mean() < 1     # threshold at the mean
    assert torch.equal(masks[0], masks[1])


def test_estimate_mask_reads_only_the_timesteps_and_schedule_of_any_sampler(tiny):
    """--mask-from serves every method: with the same leading timesteps, DDIM, DPM-Solver++ and Euler give
    t = 481 and the same q_sample, so the same mask, bit for bit."""
    unet, z_init, cond, uncond = tiny
    schedule = NoiseSchedule.scaled_linear()
    with torch.no_grad():
        masks = [estimate_mask(unet, kind(schedule, 50), z_init, cond, uncond, guidance_scale=1.0, num_maps=2,
                               clamp_ratio=2.0, generator=torch.Generator().manual_seed(0))
                 for kind in (DDIMSampler, DPMSolverSampler, EulerSampler)]
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])


def test_diffedit_functions_refuse_bad_arguments(tiny):
    unet, z_init, cond, uncond = tiny
    with pytest.raises(ValueError, match="strength"):
        estimate_mask(unet, sampler(), z_init, cond, uncond, guidance_scale=1.0, strength=0.0)
    with pytest.raises(ValueError, match="num_maps = 10 rows"):
        estimate_mask(unet, sampler(), z_init.expand(3, -1, -1, -1), cond, uncond, guidance_scale=1.0)
    with pytest.raises(ValueError, match="needs uncond"):
        estimate_mask(unet, sampler(), z_init, cond, uncond)
    with pytest.raises(TypeError, match="DDIMSampler"):
        ddim_invert(unet, EulerSampler(NoiseSchedule.scaled_linear(), 10), z_init, uncond)
    with pytest.raises(ValueError, match="encode_ratio"):
        ddim_invert(unet, sampler(STEPS), z_init, uncond, encode_ratio=0.05)
    with pytest.raises(ValueError, match="must hold 8 latents"):
        run_diffedit(tiny, inverted=[z_init] * 3)
    with pytest.raises(ValueError, match="at latent resolution"):
        diffedit(unet, sampler(STEPS), z_init, torch.ones(1, 1, 64, 64), cond, uncond, guidance_scale=5.0)


# --- the mask on the exact toy model ------------------------------------------------------------------------------

SIZE = 64   # at 64×64 every posterior at the mask's t = 481 is one-hot (below); at 32×32 it is not always

def toy_mask(denoiser, tokenizer, z_init, query: str, reference: str) -> torch.Tensor:
    contexts = [tokenizer([prompt]).float()[:, None, :] for prompt in (query, reference)]   # ToyTextEncoder's
    with torch.no_grad():
        return estimate_mask(denoiser, sampler(), z_init, *contexts, guidance_scale=1.0,
                             generator=torch.Generator().manual_seed(0))


def test_toy_mask_is_where_the_query_and_reference_photographs_differ():
    """The exact toy predicts ε̂(z_t, c) = (z_t − √ᾱ·E_c[x_0|z_t])/√(1−ᾱ) (weights/toy.py), so for one z_t

        ε̂_Q − ε̂_R = −√ᾱ/√(1−ᾱ) · (E_Q[x_0|z_t] − E_R[x_0|z_t]):

    z_t and its noise cancel. Source: a coffee photograph; at t = 481 and 64×64 the posterior over the coffee
    class is one-hot on the source and the one over the cat class is one-hot on the cat photograph nearest it
    (checked below, for every copy). So D = c·|x_cat − x_coffee| averaged over channels, the same for all ten
    noises, and DiffEdit's mask is exactly [D > 1.5·mean D]: the pixels where the cat the model would paint
    differs most from the coffee. float32 rounding moves D by about 1e-6 of its mean; the pixel nearest the
    threshold is 1.6e-4 of the mean away (asserted > 1e-5), so none can cross it: the masks are equal."""
    toy = weights.load("toy")
    names, labels = toy.tokenizer.class_names, toy.unet.labels
    data = toy.unet.data_at((SIZE, SIZE)).reshape(-1, 3, SIZE, SIZE)
    coffee = int((labels == names.index("coffee")).nonzero()[0])
    cats = (labels == names.index("cat")).nonzero()[:, 0]
    nearest_cat = int(cats[((data[cats] - data[coffee]) ** 2).flatten(1).sum(1).argmin()])
    z_init = data[coffee:coffee + 1]
    noise = torch.randn((10, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0))   # estimate_mask's draw
    z_t = sampler().schedule.q_sample(z_init.expand(10, -1, -1, -1), 481, noise)
    for prompt, photograph in (("cat", nearest_cat), ("coffee", coffee)):
        context = toy.tokenizer([prompt]).float()[:, None, :].expand(10, -1, -1)
        posterior_mean = toy.unet.posterior_mean(z_t, torch.full((10,), 481), context)
        assert torch.equal(posterior_mean, data[photograph].expand(10, -1, -1, -1))   # one-hot, every copy

    mask = toy_mask(toy.unet, toy.tokenizer, z_init, "a cat", "coffee")
    difference = (data[nearest_cat] - data[coffee]).abs().mean(0)                        # D / c, (h, w)
    assert relative_margin(difference, 1.5) > 1e-5
    assert torch.equal(mask[0, 0], (difference > 1.5 * difference.mean()).float())
    assert 0.1 < mask.mean() < 0.4                                # a region, not the whole photograph
    inside = mask[0, 0].bool()
    assert difference[inside].mean() > 2 * difference[~inside].mean()


def test_toy_mask_covers_the_object_two_scenes_swap():
    """A toy whose classes differ in one region: four 64×64 scenes, two backgrounds (grass, brick photographs)
    each with a cat or a coffee photograph pasted in the same 24×24 square; each scene is labelled by its
    object. With the source the grass scene with the coffee, E_coffee is the source and E_cat the grass scene
    with the cat (one-hot, as above), so D is 0 outside the square, exactly, and the mask lies inside it and
    covers most of it: the object the query replaces, as DiffEdit's mask is meant to find."""
    toy = weights.load("toy")
    names, labels = toy.tokenizer.class_names, toy.unet.labels
    data = toy.unet.data_at((SIZE, SIZE)).reshape(-1, 3, SIZE, SIZE)
    photo = {name: data[int((labels == names.index(name)).nonzero()[0])] for name in ("grass", "brick", "cat",
                                                                                     "coffee")}
    square = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    square[20:44, 28:52] = True
    objects = {name: torch.nn.functional.interpolate(photo[name][None], size=(24, 24), mode="bilinear",
                                                     antialias=True, align_corners=False)[0] for name in ("cat",
                                                                                                          "coffee")}
    scenes, scene_labels = [], []
    for background in ("grass", "brick"):
        for label, name in enumerate(("cat", "coffee")):
            scene = photo[background].clone()
            scene[:, 20:44, 28:52] = objects[name]
            scenes.append(scene)
            scene_labels.append(label)
    denoiser = ToyDenoiser(torch.stack(scenes), torch.tensor(scene_labels), NoiseSchedule.scaled_linear())
    source = scenes[1][None]                                                       # grass with the coffee
    mask = toy_mask(denoiser, ToyTokenizer(["cat", "coffee"]), source, "a cat", "coffee")[0, 0].bool()
    assert not mask[~square].any()
    assert mask[square].float().mean() > 0.8
