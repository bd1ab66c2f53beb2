"""RePaint (Lugmayr et al., CVPR 2022) on Stable Diffusion's latents, as diffusers' `RePaintScheduler` and its
community `stable_diffusion_repaint.py` pipeline run it.

Algorithm 1 of the paper (paraphrased, lines numbered there; its m is 1 where the image is *known*, ours 1 − m):

    1  x_T ~ N(0, I)                                              noise draw 1
    2  for t = T, …, 1 do
    3      for u = 1, …, U do
    4–5        x^known_{t−1} ~ q(x_0, t−1)                        sampler.noise_known, with the step's draw ε
    6–7        x^unknown_{t−1} = denoise(x_t, t)                  sampler.step: DDIM, σ·ε added when η > 0
    8          x_{t−1} = m ⊙ x^known_{t−1} + (1 − m) ⊙ x^unknown_{t−1}
    9–10       if u < U and t > 1: x_t ~ N(√(1−β)·x_{t−1}, β·I)  sampler.undo: T//N such steps per jump step
    11     end for
    12 end for

§4.2 replaces the U inner repeats with jumps: `samplers.jump_schedule` (jump length j, r = jump_n_sample).
Where it differs from Algorithm 1 of BLD (blend/algorithm.py): it starts from pure noise and runs all N steps (BLD
starts from the noised source at k); each step draws one ε for both the DDIM noise and the known region, even at
η = 0 (BLD draws the background's noise apart); the known region joins at the level the step lands on, like BLD's
"paper" variant, but the last step lands on ᾱ = 1 (BLD's DDIM on ᾱ_0); and it resamples, so it costs
`repaint_network_calls` network calls, 410 at N = 50, j = r = 10: 8.2× a 50-step run (10.8× BLD's default
38 steps, start 0.25). The paper ran pixel DDPMs (η = 1) without a prompt, N = 250; the community pipeline adds
classifier-free guidance and defaults to N = 50, η = 0, as here. z_init is the source image's latent (that
pipeline encodes the whole image, not the masked one).
"""
import torch

from samplers import NoiseSchedule, RePaintSampler, denoising_steps, guided_model_output, jump_schedule

from .interfaces import Denoiser, StepCallback, StepRecord


def repaint_network_calls(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> int:
    """UNet calls per result (a classifier-free-guided call counted once: it is one batched call).

    N + (r − 1)·j·⌈(N − j)/j⌉ for N > j: 2410 at N = 250 and 410 at N = 50 with j = r = 10; 95 at N = 50, j = 5, r = 2.
    """
    return denoising_steps(jump_schedule(num_steps, jump_length, jump_n_sample))


def repaint(unet: Denoiser, schedule: NoiseSchedule, z_init: torch.Tensor, mask: torch.Tensor, cond, uncond, *,
            guidance_scale: float, num_steps: int = 50, jump_length: int = 10, jump_n_sample: int = 10,
            eta: float = 0.0, prediction_type: str = "epsilon", generator: torch.Generator | None = None,
            callback: StepCallback | None = None) -> torch.Tensor:
    """RePaint on latents: regenerate z_init inside `mask` (1 = edit) towards the prompt of `cond`; returns z_0.

    unet, z_init (B, C, h, w), mask (1, 1, h, w), cond, uncond and guidance_scale as in
    `blended_latent_diffusion`. Draw order, part of the contract: z_T (z_init's shape), then one ε per denoising
    step (z_init's shape), then T//N per undo step; the same draws as `RePaintScheduler` given the same generator.
    callback(StepRecord) after every denoising step: z_fg the step's x^unknown, z_bg its x^known, z the blend.
    """
    sampler = RePaintSampler(schedule, num_steps, jump_length, jump_n_sample, eta, prediction_type)
    mask = mask.to(z_init.dtype)

    def draw_noise() -> torch.Tensor:  # ε ~ N(0, I), shaped like z_init, from the caller's generator
        return torch.randn(z_init.shape, generator=generator, device=z_init.device, dtype=z_init.dtype)

    z = draw_noise()                                                          # line 1: x_T ~ N(0, I)
    t_last, index = int(sampler.timesteps[0]) + 1, 0
    for t in (int(t) for t in sampler.timesteps):
        if t >= t_last:                                                       # lines 9–10: back up one step
            z = sampler.undo(z, t_last, generator)
        else:
            z_t = z
            model_output = guided_model_output(unet, z_t, t, cond, uncond, guidance_scale)
            noise = draw_noise()                                              # the step's ε (lines 4 and 6)
            z_fg, x0_fg = sampler.step(model_output, t, z_t, noise)          # lines 6–7: x^unknown_{t−1}
            z_bg = sampler.noise_known(z_init, t, noise)                      # lines 4–5: x^known_{t−1}
            z = z_fg * mask + z_bg * (1 - mask)                               # line 8
            if callback is not None:
                callback(StepRecord(index, sampler.network_calls, t, sampler.previous_timestep(t), z_t, z_fg,
                                    x0_fg, z_bg, mask, z))
            index += 1
        t_last = t
    return z
