"""variant="official-ldm" (blend/official_ldm.py) against a re-creation of the official LDM editor's arithmetic.

`official_ldm_run` below re-types, operation for operation, what a seeded run of the official
`scripts/text_editing_LDM.py` computes once the source latent x0 is known (the official repository,
github.com/omriav/blended-latent-diffusion, `ldm/models/diffusion/ddpm.py` register_schedule and
q_sample, `ldm/models/diffusion/ddim.py` make_schedule, ddim_sampling and p_sample_ddim,
`ldm/modules/diffusionmodules/util.py` make_beta_schedule, make_ddim_timesteps and
make_ddim_sampling_parameters, `ldm/image_editor.py` read_mask's dilations): numpy float64 where the
original computes in numpy, torch float32 where it computes in torch, and torch's *global* generator,
seeded with torch.manual_seed, as the original draws. Ours runs from a torch.Generator with the same
seed. The claim is equality, bit for bit, in-process, and it holds by construction: blend/official_ldm.py takes
each square root in the library the original takes it in (numpy where the original calls np.sqrt, torch's sqrt
where it calls Tensor.sqrt), so the two agree whatever torch's CPU sqrt rounds to. The last test checks that
under golden.precision.OneUlpOff, which rounds torch's roots the other way for half of their results.
"""
from functools import partial

import numpy as np
import pytest
import torch
from golden.precision import OneUlpOff

from blend import blended_latent_diffusion, official_ldm
from blend.official_ldm import official_shrink_kernels
from ldm import UNetConfig, UNetModel
from samplers import DDIMSampler, NoiseSchedule
from weights.random_init import fill_random_

SEED, BATCH, STEPS, GUIDANCE = 1234, 2, 20, 5.0   # 20 steps: shrinking runs its masks for 6, 6, 6, 2 steps
CONTEXT = 32


def official_ldm_run(unet, x0, masks, c, uc, *, ddim_steps, skip_steps, scale, eta=0.0, seed=SEED, posterior=None):
    """The official DDIM editing loop on latent x0 (1, C, h, w), masks (n, 1, h, w) as read_mask returns them.

    posterior=(mean, std, scale_factor): x0 is instead drawn as the official sampler does it, after the seed,
    get_first_stage_encoding(encoder_posterior) = scale_factor · (mean + std · randn(mean.shape)).
    """
    # ddpm.register_schedule with make_beta_schedule("linear", 1000, 0.00085, 0.012)
    betas = (torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2).numpy()
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    to_torch = partial(torch.tensor, dtype=torch.float32)
    model_alphas_cumprod = to_torch(alphas_cumprod)
    sqrt_alphas_cumprod = to_torch(np.sqrt(alphas_cumprod))
    sqrt_one_minus_alphas_cumprod = to_torch(np.sqrt(1.0 - alphas_cumprod))

    def q_sample(x_start, t):                                   # ddpm.q_sample with extract_into_tensor
        noise = torch.randn_like(x_start)
        shape = (t.shape[0],) + (1,) * (x_start.ndim - 1)
        return (sqrt_alphas_cumprod.gather(-1, t).reshape(shape) * x_start
                + sqrt_one_minus_alphas_cumprod.gather(-1, t).reshape(shape) * noise)

    # ddim.make_schedule: uniform timesteps and the sampling parameters, with the original's numpy/torch mix
    c_step = 1000 // ddim_steps
    ddim_timesteps = np.asarray(list(range(0, 1000, c_step))) + 1
    alphacums = model_alphas_cumprod.cpu()
    ddim_alphas = alphacums[ddim_timesteps]
    ddim_alphas_prev = np.asarray([alphacums[0]] + alphacums[ddim_timesteps[:-1]].tolist())
    ddim_sigmas = eta * np.sqrt((1 - ddim_alphas_prev) / (1 - ddim_alphas) * (1 - ddim_alphas / ddim_alphas_prev))
    ddim_sqrt_one_minus_alphas = np.sqrt(1.0 - ddim_alphas)

    torch.manual_seed(seed)
    if posterior is not None:
        mean, std, scale_factor = posterior
        x0 = scale_factor * (mean + std * torch.randn(mean.shape))
    b = c.shape[0]
    timesteps = ddim_timesteps[:-skip_steps] if skip_steps != 0 else ddim_timesteps
    time_range = np.flip(timesteps)
    total_steps = timesteps.shape[0]
    last_ts = torch.full((1,), time_range[0], dtype=torch.long)
    img = torch.cat([q_sample(x0, last_ts) for _ in range(b)])
    for i, step in enumerate(time_range):
        index = total_steps - i - 1
        ts = torch.full((b,), step, dtype=torch.long)
        masks_interval = len(time_range) // masks.shape[0] + 1
        curr_mask = masks[i // masks_interval].unsqueeze(0)
        img_orig = q_sample(x0, ts)
        img = img_orig * (1 - curr_mask) + curr_mask * img
        # p_sample_ddim
        e_t_uncond, e_t = unet(torch.cat([img] * 2), torch.cat([ts] * 2), torch.cat([uc, c])).chunk(2)
        e_t = e_t_uncond + scale * (e_t - e_t_uncond)
        a_t = torch.full((b, 1, 1, 1), ddim_alphas[index])
        a_prev = torch.full((b, 1, 1, 1), ddim_alphas_prev[index])
        sigma_t = torch.full((b, 1, 1, 1), ddim_sigmas[index])
        sqrt_one_minus_at = torch.full((b, 1, 1, 1), ddim_sqrt_one_minus_alphas[index])
        pred_x0 = (img - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        noise = sigma_t * torch.randn(img.shape) * 1.0
        img = a_prev.sqrt() * pred_x0 + dir_xt + noise
    return img


def official_masks(mask: torch.Tensor, dilation_iterations: int) -> torch.Tensor:
    """read_mask's list: the mask dilated by 3 + 2i for i = iterations−1 … 0 (scipy), then the mask itself."""
    from scipy.ndimage import binary_dilation

    plain = mask[0, 0].numpy()
    masks = [binary_dilation(plain, structure=np.ones((3 + 2 * i, 3 + 2 * i)))
             for i in reversed(range(dilation_iterations))]
    return torch.from_numpy(np.array(masks + [plain]).astype(np.float32)[:, np.newaxis, :])


@pytest.fixture(scope="module")
def setting():
    unet = fill_random_(UNetModel(UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                             attention_levels=(1,), num_heads=2, context_dim=CONTEXT)), 3).eval()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 12, 12, generator=generator)
    mask = torch.zeros(1, 1, 12, 12)
    mask[..., 5:7, 3:9] = 1                                     # a thin region: dilation matters
    cond, uncond = torch.randn(1, 8, CONTEXT, generator=generator), torch.randn(1, 8, CONTEXT, generator=generator)
    return unet, x0, mask, cond, uncond


def ours(setting, *, skip_steps=0, shrink=False, eta=0.0, callback=None):
    unet, x0, mask, cond, uncond = setting
    sampler = DDIMSampler(NoiseSchedule.compvis_linear(), STEPS, eta=eta, spacing="uniform", offset=1)
    start = skip_steps / STEPS
    assert int(STEPS * start) == skip_steps
    with torch.no_grad():
        return blended_latent_diffusion(unet, sampler, x0.expand(BATCH, -1, -1, -1), mask, cond, uncond,
                                        guidance_scale=GUIDANCE, start=start, variant="official-ldm",
                                        generator=torch.Generator().manual_seed(SEED), shrink=shrink,
                                        callback=callback)


def official(setting, *, skip_steps=0, dilation_iterations=0, eta=0.0, **explicit):
    """The re-created official run on `setting`, or on the pieces given in `explicit` (unet, masks, c, uc, ...)."""
    if setting is None:
        with torch.random.fork_rng():
            return official_ldm_run(explicit.pop("unet"), None, explicit.pop("masks"), explicit.pop("c"),
                                    explicit.pop("uc"), ddim_steps=explicit.pop("steps"), skip_steps=skip_steps,
                                    **explicit)
    unet, x0, mask, cond, uncond = setting
    masks = official_masks(mask, dilation_iterations) if dilation_iterations else mask[0][None]
    with torch.no_grad(), torch.random.fork_rng():
        return official_ldm_run(unet, x0, masks, cond.expand(BATCH, -1, -1), uncond.expand(BATCH, -1, -1),
                                ddim_steps=STEPS, skip_steps=skip_steps, scale=GUIDANCE, eta=eta)


def _report(name, actual, expected):
    error = (actual - expected).abs().max().item()
    print(f"official-ldm vs the re-created official loop, {name}: max |difference| {error:.3g}")
    return error


@pytest.mark.precision
def test_official_ldm_loop_equals_the_official_code_bit_for_bit_without_shrinking(setting):
    actual, expected = ours(setting), official(setting)
    assert _report("no shrinking", actual, expected) == 0 and torch.equal(actual, expected)


@pytest.mark.precision
@pytest.mark.reference
def test_official_ldm_loop_equals_the_official_code_bit_for_bit_with_the_3_dilations(setting):
    actual, expected = ours(setting, shrink=True), official(setting, dilation_iterations=3)
    assert _report("3 dilations", actual, expected) == 0 and torch.equal(actual, expected)
    assert not torch.equal(actual, ours(setting))               # the shrinking changes the result


@pytest.mark.precision
def test_official_ldm_loop_equals_the_official_code_bit_for_bit_with_skipped_steps(setting):
    actual, expected = ours(setting, skip_steps=7), official(setting, skip_steps=7)
    assert _report("7 of 20 steps skipped", actual, expected) == 0 and torch.equal(actual, expected)


@pytest.mark.precision
def test_official_ldm_loop_equals_the_official_code_bit_for_bit_at_eta_1(setting):
    actual, expected = ours(setting, skip_steps=10, eta=1.0), official(setting, skip_steps=10, eta=1.0)
    assert _report("eta 1, 10 of 20 skipped", actual, expected) == 0 and torch.equal(actual, expected)


@pytest.mark.precision
def test_official_ldm_loop_stays_bit_for_bit_when_torchs_roots_round_the_other_way(setting, monkeypatch):
    """Under OneUlpOff (torch's sqrt, exp and pow one ulp off for half of their results, as torch's float32 sqrt is
    for a fifth of them on an AMD EPYC) ours and the official code still agree; a loop that took the official
    code's numpy root √(1 − ᾱ_t) with torch instead agrees on a CPU whose torch rounds as numpy does, and here
    does not: the test can fail on every CPU."""
    with OneUlpOff():
        actual, expected = ours(setting, skip_steps=10), official(setting, skip_steps=10)
        assert _report("torch's roots one ulp off", actual, expected) == 0 and torch.equal(actual, expected)
        monkeypatch.setattr(official_ldm, "compvis_sqrt_one_minus_alpha_bar", lambda a: (1.0 - a.float()).sqrt())
        assert not torch.equal(ours(setting, skip_steps=10), expected)


def test_official_shrink_kernels_are_13_13_13_11_for_50_steps():
    kernels = official_shrink_kernels(50)
    assert [kernels.count(k) for k in (7, 5, 3, 1)] == [13, 13, 13, 11] and kernels == sorted(kernels, reverse=True)
    assert official_shrink_kernels(38)[-1] == 1 and len(official_shrink_kernels(38)) == 38


def test_official_ldm_loop_blends_before_each_step_and_not_after_the_last(setting):
    records = []
    z = ours(setting, skip_steps=10, callback=records.append)
    assert len(records) == 10 and [r.t for r in records] == list(range(451, 0, -50))
    assert torch.equal(records[-1].z, z) and torch.equal(records[-1].z_fg, z)
    _, x0, mask, _, _ = setting
    assert not torch.equal(z * (1 - mask), x0.expand_as(z) * (1 - mask))  # the background of z_0 is denoised


def small_ldm_components(folder):
    """The LDM preset's kinds of networks, small, with random weights, and a WordPiece vocabulary in `folder`."""
    from dataclasses import replace

    from fakes import random_weights

    import weights
    from ldm import AutoencoderConfig, BERTConfig
    from weights import presets

    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "stone"]) + "\n")
    spec = replace(presets.get("ldm-txt2img-f8-large"),
                   unet=UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                                   num_heads=2, context_dim=CONTEXT),
                   vae=AutoencoderConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1),
                   text=BERTConfig(vocab_size=7, layers=1, width=CONTEXT, mlp_width=64), image_size=64)
    networks = []
    for part, build in (("unet", spec.build_unet), ("vae", spec.build_vae), ("text_encoder", spec.build_text_encoder)):
        network = build().eval()
        network.load_state_dict(random_weights(spec, part))
        networks.append(network)
    return weights.Components(*networks, spec.build_tokenizer(folder / "vocab.txt"), spec)


@pytest.mark.precision
def test_edit_with_the_ldm_and_official_ldm_runs_the_official_pipeline_from_a_posterior_sample(tmp_path):
    """edit(): z_init drawn from the posterior with the seed's first draw, CompVis's uniform timesteps, guidance 5."""
    from PIL import Image

    from blend import edit
    from blend.images import image_to_tensor

    components = small_ldm_components(tmp_path)
    spec, networks = components.spec, [components.unet, components.vae, components.text_encoder]
    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 24:40] = 255
    records = []
    edit(image, Image.fromarray(mask), "a stone", model=components, steps=10, start=0.2, num_samples=2, seed=SEED,
         variant="official-ldm", device="cpu", callback=records.append)
    assert [r.t for r in records] == list(range(701, 0, -100))

    unet, vae, text_encoder, tokenizer, _ = networks + [components.tokenizer, spec]
    with torch.no_grad():
        posterior = vae.encode(image_to_tensor(image))
        c, uc = (text_encoder(tokenizer([p])).expand(2, -1, -1) for p in ("a stone", ""))
        latent_mask = torch.from_numpy(mask[4::8, 4::8] / 255).float()[None, None]
        expected = official(None, unet=unet, masks=latent_mask[0][None], c=c, uc=uc, steps=10, skip_steps=2,
                            scale=5.0, posterior=(posterior.mean, posterior.std, spec.scale_factor))
    difference = _report("edit() end to end (posterior sample, 10 steps)", records[-1].z, expected)
    assert difference == 0 and torch.equal(records[-1].z, expected)


def test_ldm_steps_are_checked_against_compvis_uniform_timesteps_before_loading():
    from blend.options import option_problem

    assert option_problem(steps=500, model="ldm-txt2img-f8-large") is None
    problem = option_problem(steps=501, model="ldm-txt2img-f8-large")
    assert problem and "1 … 500" in problem
    assert option_problem(steps=999, model="sd-1.5") is None


def test_edit_with_the_ldm_runs_the_paper_variant_on_compvis_uniform_timesteps(tmp_path):
    from PIL import Image

    from blend import edit

    records = []
    image = Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8))
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[8:40, 8:40] = 255
    results = edit(image, Image.fromarray(mask), "a stone", model=small_ldm_components(tmp_path), steps=8,
                   num_samples=1, variant="paper", device="cpu", callback=records.append)
    assert [r.t for r in records] == [626, 501, 376, 251, 126, 1]   # 8 uniform steps (876 … 1), 2 skipped
    assert records[-1].t_prev < 0 and len(results) == 1 and results[0].size == (64, 64)
