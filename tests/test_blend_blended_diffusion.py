"""blend/blended_diffusion.py and blend/local_clip.py: Algorithms 2 and 1 of Blended Diffusion, as the official code.

The loop's contract is checked with a one-convolution stand-in for the network; the parity with the official loop
with a small ADM (adm.ADMUNet, deterministic random weights) and the tiny random CLIP judge
(weights.clip_ranker.load_clip("tiny"), which pools the views to its 32²), on 16² images.

The reference is a re-creation of the official loop, written below from Blended Diffusion's code
(omriav/blended-diffusion@86ed6ce) on guided-diffusion's SpacedDiffusion (the PyPI fork `guided-diffusion-sdk`,
which lacks `postprocess_fn` and whose `ddim_sample` returns the unguided x̂0: those parts are re-created from BD's
vendored copy). Its random draws are injected: torch.randn and torch.randn_like draw from a generator seeded as
ours, and the CLIP views take one fixed set of warps on both sides. Both sides then run the same torch operations,
so the claims are torch.equal (precision).
"""
import pytest
import torch
import torch.nn.functional as F

from adm import ADMConfig, ADMUNet
from blend.blended_diffusion import blended_diffusion
from blend.local_clip import local_clip_guided_diffusion
from samplers.gaussian_diffusion import GaussianDiffusion
from weights.random_init import fill_random_

SIZE, BATCH, VIEWS = 16, 2, 3
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def model():
    config = ADMConfig(image_size=SIZE, model_channels=32, channel_mult=(1, 1), num_res_blocks=1,
                       attention_resolutions=(8,), num_head_channels=16)
    with torch.no_grad():
        return fill_random_(ADMUNet(config), seed=3).eval().requires_grad_(False)


class ConvNet(torch.nn.Module):
    """A cheap stand-in for ADM: [ε | v] (B, 6, H, W) from one 3×3 convolution, scaled by cos(t/1000)."""

    def __init__(self):
        super().__init__()
        self.conv = fill_random_(torch.nn.Conv2d(3, 6, 3, padding=1), seed=4).requires_grad_(False)

    def forward(self, x, timesteps, y=None):
        return self.conv(x) * torch.cos(timesteps / 1000).view(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def judge():
    from weights.clip_ranker import load_clip
    return load_clip("tiny").requires_grad_(False)


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(11)
    source = torch.rand((1, 3, SIZE, SIZE), generator=generator) * 2 - 1             # (1, 3, H, W) in [−1, 1]
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 4:12, 3:10] = 1                                                         # (1, 1, H, W), 1 = edit
    return source, mask


class Stop(Exception):
    """Raised by a callback to end a loop after the step it records."""


def records_of(method, *args, stop_after=None, **options):
    """The loop's output and its StepRecords (stop_after: stop after that many steps, output None)."""
    records = []

    def keep(record):
        records.append(record)
        if stop_after is not None and len(records) == stop_after:
            raise Stop

    try:
        output = method(*args, callback=keep, **options)
    except Stop:
        output = None
    return output, records


# ----------------------------------------------------------------------------- the loop's contract
class DrawingGuidance:
    """A guidance that draws from the generator, as the CLIP warps do, and records what it drew and where."""

    def __init__(self, generator):
        self.generator, self.draws, self.indices = generator, [], []

    def guidance(self, x, index):
        self.draws.append(torch.randn(5, generator=self.generator))
        self.indices.append(index.clone())
        return torch.sin(x) * 0.1                                                   # any smooth gradient


@pytest.mark.parametrize("ddim", [False, True])
def test_draw_order_start_noise_then_step_noise_warps_background(inputs, ddim):
    """The contract: the start noise (B, 3, H, W); each DDPM step: its noise (before the guidance), the guidance's
    draws, the background noise (1, 3, H, W) shared by the batch. DDIM: the guidance's draws, then its noise."""
    source, mask = inputs
    model, diffusion, generator = ConvNet(), GaussianDiffusion.adm("100"), torch.Generator().manual_seed(5)
    guidance = DrawingGuidance(generator)
    _, records = records_of(blended_diffusion, model, diffusion, source, mask, guidance, num_samples=BATCH,
                            skip_timesteps=97, generator=generator, ddim=ddim)
    replay = torch.Generator().manual_seed(5)
    shape = (BATCH, 3, SIZE, SIZE)
    start = torch.randn(shape, generator=replay)
    assert torch.equal(records[0].z_t, diffusion.q_sample(source.expand(shape), 2, start))
    for step, record in enumerate(records):
        first = torch.randn(shape, generator=replay) if not ddim else None
        assert torch.equal(guidance.draws[step], torch.randn(5, generator=replay))
        assert torch.equal(guidance.indices[step], torch.full((BATCH,), record.t))
        noise = torch.randn(shape, generator=replay) if ddim else first
        background = torch.randn((1, 3, SIZE, SIZE), generator=replay)
        assert torch.equal(record.z_bg, diffusion.q_sample(source, record.t, background).expand(shape))
        if not ddim:  # the step's noise, drawn before the guidance: z_fg = μ + Σ·g + σ·noise
            out = diffusion.p_mean_variance(model(record.z_t, diffusion.model_timesteps(record.t)), record.z_t,
                                            record.t)
            mean = diffusion.condition_mean(out, torch.sin(record.z_t) * 0.1)
            assert torch.equal(record.z_fg, diffusion.ddpm_step(out, record.t, noise, mean=mean))
        assert torch.equal(record.z, record.z_fg * mask + record.z_bg * (1 - mask))   # line 7


def test_callback_every_step_with_its_indices_skip_25_of_100_runs_75(inputs):
    """skip_timesteps=25 of 100: 75 steps, at respaced indices 74 … 0, each recorded once, in order."""
    source, mask = inputs

    def zeros(x, timesteps):                                                        # ε = 0, v = 0
        return torch.zeros(x.shape[0], 6, *x.shape[2:])

    _, records = records_of(blended_diffusion, zeros, GaussianDiffusion.adm("100"), source, mask, None,
                            num_samples=1, skip_timesteps=25, generator=torch.Generator().manual_seed(0))
    assert [r.index for r in records] == list(range(75)) and {r.num_steps for r in records} == {75}
    assert [r.t for r in records] == list(range(74, -1, -1))
    assert [r.t_prev for r in records] == list(range(73, -2, -1))


def test_empty_mask_returns_the_source_and_every_step_is_the_noised_source(inputs):
    source, model = inputs[0], ConvNet()
    empty = torch.zeros(1, 1, SIZE, SIZE)
    output, records = records_of(blended_diffusion, model, GaussianDiffusion.adm("100"), source, empty,
                                 lambda x, t: torch.ones_like(x), num_samples=BATCH, skip_timesteps=96,
                                 generator=torch.Generator().manual_seed(1))
    assert torch.equal(output, source.expand(BATCH, -1, -1, -1))
    assert all(torch.equal(record.z, record.z_bg) for record in records)


def test_local_clip_has_no_blending_and_follows_blended_diffusion_until_its_first_blend(inputs):
    """Algorithm 1: nothing blended (z = z_fg, z_bg None), no background pasted at the end; with the same seed its
    first guided step is Blended Diffusion's, before the background comes in."""
    source, mask = inputs
    model, diffusion = ConvNet(), GaussianDiffusion.adm("100")

    def run(method):
        return records_of(method, model, diffusion, source, mask, lambda x, t: -x, num_samples=BATCH,
                          skip_timesteps=97, generator=torch.Generator().manual_seed(2))

    (local, local_records), (blended, blended_records) = run(local_clip_guided_diffusion), run(blended_diffusion)
    assert all(r.z_bg is None and r.z is r.z_fg for r in local_records)
    assert torch.equal(local, local_records[-1].x0_fg)
    assert not torch.equal(local * (1 - mask), source.expand_as(local) * (1 - mask))
    assert torch.equal(blended * (1 - mask), source.expand_as(blended) * (1 - mask))
    assert torch.equal(local_records[0].z_fg, blended_records[0].z_fg)
    assert not torch.equal(local_records[1].z_fg, blended_records[1].z_fg)


@pytest.mark.parametrize("skip", [-1, 100])
def test_skip_timesteps_outside_the_respaced_steps_is_refused(inputs, skip):
    source, mask = inputs
    with pytest.raises(ValueError, match=r"skip_timesteps must be in \[0, 100\)"):
        blended_diffusion(None, GaussianDiffusion.adm("100"), source, mask, None, skip_timesteps=skip)


# ----------------------------------------------------------------------------- the official loop, re-created
@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("guided_diffusion")
    from guided_diffusion.script_util import create_gaussian_diffusion
    return create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear", rescale_timesteps=True,
                                     timestep_respacing="100")


@pytest.fixture(scope="module")
def warps(judge):
    from blend.clip_guidance import draw_warps
    return draw_warps(BATCH * (VIEWS - 1), judge.image_size, torch.Generator().manual_seed(9))


def official_cond_fn(gd, model, judge, text_embed, init_image, mask, warps, *, lpips=None):
    """BD optimization/image_editor.py `cond_fn` (lines 165–210) with `clip_loss` (104–121), `ImageAugmentations`
    (augmentations.py, kornia's random warps replaced by the fixed `warps`) and losses.py's `d_clip_loss` and
    `range_loss`; clip_guidance_lambda 1000, range_lambda 50, lpips_sim_lambda 1000, l2_sim_lambda 10000."""
    from blend.clip_guidance import warp_views

    def clip_loss(x_in):
        masked_input = x_in * mask
        resized = F.adaptive_avg_pool2d(masked_input, (judge.image_size, judge.image_size))
        augmented_input = warp_views(resized, VIEWS, warps=warps).add(1).div(2)
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        image_embeds = judge.image_encoder((augmented_input - mean) / std).float()
        x, y = F.normalize(image_embeds, dim=-1), F.normalize(text_embed, dim=-1)
        dists = (x - y).norm(dim=-1).div(2).arcsin().pow(2).mul(2)
        loss = torch.tensor(0)
        for i in range(BATCH):
            loss = loss + dists[i::BATCH].mean()
        return loss

    def cond_fn(x, t, y=None):
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            t = (t * (gd.num_timesteps / 1000)).long()                              # unscale_timestep
            out = gd.p_mean_variance(model, x, t, clip_denoised=False, model_kwargs={"y": y})
            fac = gd.sqrt_one_minus_alphas_cumprod[t[0].item()]
            x_in = out["pred_xstart"] * fac + x * (1 - fac)
            loss = torch.tensor(0)
            loss = loss + clip_loss(x_in) * 1000
            pred = out["pred_xstart"]
            loss = loss + (pred - pred.clamp(-1, 1)).pow(2).mean([1, 2, 3]).sum() * 50
            if lpips is not None:
                masked_background = x_in * (1 - mask)
                loss = loss + lpips(masked_background, init_image).sum() * 1000
                loss = loss + F.mse_loss(masked_background, init_image) * 10000
            return -torch.autograd.grad(loss, x)[0]

    return cond_fn


def official_ddim_sample(gd, model, x, t, cond_fn):
    """BD guided_diffusion/gaussian_diffusion.py `ddim_sample` (lines 527–575), η = 0, clip_denoised=False: it returns
    the guided x̂0 (the PyPI fork returns the unguided one)."""
    from guided_diffusion.gaussian_diffusion import _extract_into_tensor
    out = gd.p_mean_variance(model, x, t, clip_denoised=False, model_kwargs={})
    out = gd.condition_score(cond_fn, out, x, t, model_kwargs={})
    eps = gd._predict_eps_from_xstart(x, t, out["pred_xstart"])
    alpha_bar = _extract_into_tensor(gd.alphas_cumprod, t, x.shape)
    alpha_bar_prev = _extract_into_tensor(gd.alphas_cumprod_prev, t, x.shape)
    sigma = 0.0 * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
    noise = torch.randn_like(x)
    mean_pred = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
    nonzero_mask = (t != 0).float().view(-1, *([1] * (len(x.shape) - 1)))
    return {"sample": mean_pred + nonzero_mask * sigma * noise, "pred_xstart": out["pred_xstart"]}


def official_loop(gd, model, init_image, mask, cond_fn, *, skip_timesteps, ddim, local):
    """BD gaussian_diffusion.py `p_sample_loop_progressive` (lines 451–524) / `ddim_sample_loop_progressive`
    (645–717) with image_editor.py's `postprocess_fn` (lines 212–221; None with --local_clip_guided_diffusion),
    as `edit_image_by_prompt` calls them (lines 226–246): clip_denoised=False, model_kwargs {}, yields each step."""
    def postprocess_fn(out, t):
        background_stage_t = gd.q_sample(init_image, t[0])
        background_stage_t = torch.tile(background_stage_t, dims=(BATCH, 1, 1, 1))
        out["sample"] = out["sample"] * mask + background_stage_t * (1 - mask)
        return out

    shape = (BATCH, 3, SIZE, SIZE)
    img = torch.randn(*shape)
    indices = list(range(gd.num_timesteps - skip_timesteps))[::-1]
    init_image_batch = torch.tile(init_image, dims=(BATCH, 1, 1, 1))
    if ddim:
        img = gd.q_sample(init_image_batch, torch.ones([BATCH], dtype=torch.long) * indices[0], img)
    else:
        img = gd.q_sample(x_start=init_image_batch, t=torch.tensor(indices[0], dtype=torch.long), noise=img)
    for i in indices:
        t = torch.tensor([i] * BATCH)
        with torch.no_grad():
            if ddim:
                out = official_ddim_sample(gd, model, img, t, cond_fn)
            else:
                out = gd.p_sample(model, img, t, clip_denoised=False, cond_fn=cond_fn, model_kwargs={})
            if not local:
                out = postprocess_fn(out, t)
            yield out
            img = out["sample"]


def official_result(pred_xstart, init_image, mask):
    """image_editor.py lines 270–279: the last x̂0, the source's background pasted (enforce_background)."""
    return torch.stack([init_image[0] * (1 - mask[0]) + pred * mask[0] for pred in pred_xstart])


def injected_randn(monkeypatch, seed):
    """torch.randn / torch.randn_like drawing from a generator seeded `seed`, as our loop draws from its generator."""
    generator, randn = torch.Generator().manual_seed(seed), torch.randn

    def fake_randn(*size, device=None, dtype=None, **_):
        size = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
        return randn(size, generator=generator, device=device, dtype=dtype or torch.float32)

    monkeypatch.setattr(torch, "randn", fake_randn)
    monkeypatch.setattr(torch, "randn_like", lambda x, **_: randn(x.shape, generator=generator, dtype=x.dtype))


def ours_and_official(model, judge, inputs, reference, warps, monkeypatch, *, method, skip, ddim=False,
                      stop_after=None, lpips=None):
    from blend.clip_guidance import CLIPGuidance
    source, mask = inputs
    diffusion = GaussianDiffusion.adm("100")
    text = judge.text_embeddings(["a photo of a cat"])
    guidance = CLIPGuidance(model, diffusion, judge, text, mask, source=source, num_views=VIEWS, warps=warps,
                            lpips=lpips)
    output, records = records_of(method, model, diffusion, source, mask, guidance, num_samples=BATCH,
                                 skip_timesteps=skip, generator=torch.Generator().manual_seed(4), ddim=ddim,
                                 stop_after=stop_after)
    cond_fn = official_cond_fn(reference, model, judge, text, source, mask, warps, lpips=lpips)
    with monkeypatch.context() as patch:
        injected_randn(patch, 4)
        loop = official_loop(reference, model, source, mask, cond_fn, skip_timesteps=skip, ddim=ddim,
                             local=method is local_clip_guided_diffusion)
        steps = [next(loop) for _ in records]
    return output, records, steps


@pytest.mark.precision
@pytest.mark.reference
def test_one_guided_step_equals_the_official_p_sample_and_postprocess(model, judge, inputs, reference, warps,
                                                                      monkeypatch):
    """The first step of the default run (respaced index 74): the official `p_sample` with `cond_fn`, then the
    background of `postprocess_fn`; the sample and x̂0 equal."""
    _, records, steps = ours_and_official(model, judge, inputs, reference, warps, monkeypatch,
                                          method=blended_diffusion, skip=25, stop_after=1)
    assert records[0].t == 74
    assert torch.equal(records[0].z, steps[0]["sample"]) and torch.equal(records[0].x0_fg, steps[0]["pred_xstart"])


@pytest.mark.precision
@pytest.mark.reference
@pytest.mark.parametrize("method, ddim", [(blended_diffusion, False), (blended_diffusion, True),
                                          (local_clip_guided_diffusion, False)],
                         ids=["blended-ddpm", "blended-ddim", "local-clip-ddpm"])
def test_loop_over_three_steps_equals_the_official_loop(model, judge, inputs, reference, warps, monkeypatch,
                                                       method, ddim):
    """Indices 2, 1, 0 (skip 97 of 100): every step's sample and x̂0, and the output (blended: the last x̂0 with the
    source's background; local: the last x̂0) equal the official loop's."""
    source, mask = inputs
    output, records, steps = ours_and_official(model, judge, inputs, reference, warps, monkeypatch, method=method,
                                               skip=97, ddim=ddim)
    assert [r.t for r in records] == [2, 1, 0]
    for record, step in zip(records, steps, strict=True):
        assert torch.equal(record.z, step["sample"]) and torch.equal(record.x0_fg, step["pred_xstart"])
    expected = steps[-1]["pred_xstart"]
    if method is blended_diffusion:
        expected = official_result(expected, source, mask)
    assert torch.equal(output, expected)
