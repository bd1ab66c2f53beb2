"""Blended Diffusion (Avrahami, Lischinski & Fried, CVPR 2022), its Algorithm 2, as the official script runs it.

The method Blended Latent Diffusion improves on: the same blend, in pixel space, on OpenAI's unconditional
ADM (Dhariwal & Nichol 2021), steered towards the prompt by CLIP's gradient at every step. Algorithm 2 in
the paper's notation (paraphrased, lines numbered here):

    1  x_k ~ N(√ᾱ_k·x_0, (1 − ᾱ_k)·I)                    the noised source
    2  for all t from k to 1 do
    3      μ, Σ ← μ_θ(x_t), Σ_θ(x_t);  x̂_0 ← x̂_0(x_t)
    4      L ← D_CLIP(x̂_0, d, m)
    5      x_fg ~ N(μ + Σ·g, Σ),  g = −∇L                  a CLIP-guided DDPM step
    6      x_bg ~ N(√ᾱ_t·x_0, (1 − ᾱ_t)·I)                 the noised source, at the current t
    7      x_{t−1} = x_fg ⊙ m + x_bg ⊙ (1 − m)
    8  end for;  then the background is replaced by the source

As the official code runs it (`optimization/image_editor.py`, its vendored `gaussian_diffusion.py`:
`p_sample_loop_progressive` with `skip_timesteps`, `init_image` and `postprocess_fn`):
  - the diffusion is respaced (S = 100 steps) and k = S − 1 − skip_timesteps, a respaced index (74 by
    default: 75 steps run, indices 74 … 0); line 1 draws one (B, 3, H, W) noise;
  - line 3 is forward #1 of the network, without gradients; the DDPM noise of line 5 is drawn next,
    before the guidance; g comes from `guidance(x_t, t)` (blend.clip_guidance: forward #2 with gradients,
    CLIP on x̂_0·√(1−ᾱ_t) + x_t·(1 − √(1−ᾱ_t)), the code's input rather than the paper's x̂_0, and a
    gradient with respect to x_t); the mean moves by Σ·g (GD `condition_mean`);
  - line 6 noises the source to the current index t, so the background sits one level noisier than
    the x_{t−1} it joins (reproduced here, as blend/algorithm.py's official variant does for BLD), with one
    (1, 3, H, W) draw tiled to the batch: every sample gets the same background noise;
  - what comes out is not x_0 but the last step's x̂_0 with the source's background: x̂_0 ⊙ m + x ⊙ (1 − m).
ddim=True runs GD's `ddim_sample` instead (η = 0): ε moves by −√(1−ᾱ_t)·g (`condition_score`), and its
x̂_0 is the guided one (the vendored `ddim_sample` returns that); the blend and the output are the same.

Draw order, part of the contract (every draw from `generator`): the start noise (B, 3, H, W); then in each
step the DDPM noise (B, 3, H, W), the guidance's warps, the background noise (1, 3, H, W). With ddim=True
the step's noise comes after the guidance, and is multiplied by σ = 0, as in GD.
"""
import torch

from .interfaces import StepCallback, StepRecord


def blended_diffusion(model, diffusion, source: torch.Tensor, mask: torch.Tensor, guidance, *, num_samples: int = 4,
                      skip_timesteps: int = 25, generator: torch.Generator | None = None, ddim: bool = False,
                      callback: StepCallback | None = None) -> torch.Tensor:
    """Algorithm 2: edit `source` (1, 3, H, W) in [−1, 1] inside `mask` (1, 1, H, W) of 0/1 (1 = edit).

    model(x, timesteps) -> (B, 6, H, W): ε and the variance interpolation v (ADM); diffusion: a
    samplers.GaussianDiffusion (its indices are respaced ones, 0 … S − 1); guidance(x_t, index) -> g, the
    guiding gradient (B, 3, H, W), e.g. `CLIPGuidance(...).guidance` (an object with a `.guidance` method
    is taken as that method), or None for no guidance. Returns x̂_0 with the source's background,
    (num_samples, 3, H, W). callback(StepRecord) after every step: t, t_prev are respaced indices
    (t_prev = t − 1; −1 after the last step), z_fg the guided step's sample, x0_fg its x̂_0, z_bg the
    noised source at t, z the blend.
    """
    x0 = last_x0(guided_steps(model, diffusion, source, mask, guidance, num_samples=num_samples,
                              skip_timesteps=skip_timesteps, generator=generator, ddim=ddim, blend=True), callback)
    return x0 * mask + source * (1 - mask)           # line 8: the last x̂_0 with the source's background


def last_x0(records, callback: StepCallback | None) -> torch.Tensor:
    """Run the steps of `records` (guided_steps), handing each to `callback`; the last step's x̂_0."""
    x0 = None
    for record in records:
        x0 = record.x0_fg
        if callback is not None:
            callback(record)
    return x0


def guided_steps(model, diffusion, source, mask, guidance, *, num_samples, skip_timesteps, generator, ddim, blend):
    """The loop of GD's `p_sample_loop_progressive` / `ddim_sample_loop_progressive` from the noised source, one
    StepRecord a step; blend=True adds BD's `postprocess_fn` (lines 6–7), blend=False is Local CLIP-guided
    diffusion (blend.local_clip)."""
    num_steps = diffusion.num_steps
    if not 0 <= skip_timesteps < num_steps:
        raise ValueError(f"skip_timesteps must be in [0, {num_steps}) for a {num_steps}-step diffusion, "
                         f"got {skip_timesteps}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    guidance = getattr(guidance, "guidance", guidance)

    def guide(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:            # g = −∇L, with gradients on (GD cond_fn)
        with torch.enable_grad():
            return guidance(x, t)

    source, mask = source.float(), mask.to(source.device, torch.float32)
    batch = (num_samples, *source.shape[1:])                                    # (B, 3, H, W)

    def draw(shape) -> torch.Tensor:                                           # ε ~ N(0, I), the caller's generator
        return torch.randn(shape, generator=generator, device=source.device, dtype=torch.float32)

    def at(index: int, rows: int = num_samples) -> torch.Tensor:              # (rows,) respaced indices, as GD's t
        return torch.full((rows,), index, dtype=torch.long, device=source.device)

    first = num_steps - 1 - skip_timesteps
    x = diffusion.q_sample(source.expand(batch), at(first), draw(batch))     # line 1: x_k
    for step, index in enumerate(range(first, -1, -1)):                      # line 2
        t = at(index)
        with torch.no_grad():                                                # line 3: forward #1
            out = diffusion.p_mean_variance(model(x, diffusion.model_timesteps(t)).float(), x, t)
        if ddim:                                                             # GD ddim_sample, η = 0
            if guidance is not None:
                out = diffusion.condition_score(out, x, t, guide(x, t))      # ε − √(1−ᾱ_t)·g
            x_fg = diffusion.ddim_step(out, x, t, draw(batch), eta=0.0)      # noise after the guidance, σ = 0
        else:                                                                # GD p_sample
            noise = draw(batch)                                              # drawn before the guidance
            mean = None if guidance is None else diffusion.condition_mean(out, guide(x, t))  # line 5: μ + Σ·g
            x_fg = diffusion.ddpm_step(out, t, noise, mean=mean)
        x_bg, x_next = None, x_fg
        if blend:
            x_bg = diffusion.q_sample(source, at(index, 1), draw(source.shape)).expand(batch)  # line 6, level t
            x_next = x_fg * mask + x_bg * (1 - mask)                                          # line 7
        yield StepRecord(step, first + 1, index, index - 1, x, x_fg, out.pred_xstart, x_bg, mask, x_next)
        x = x_next
