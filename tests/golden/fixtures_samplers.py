"""Golden DDIM trajectories from diffusers' DDIMScheduler with Stable Diffusion's scheduler config.

The config is the one published in the SD repositories' scheduler/scheduler_config.json:
scaled_linear betas 0.00085 → 0.012 over 1000 steps, clip_sample False,
set_alpha_to_one False, steps_offset 1 (0 for the official BLD SD2 script), "leading"
spacing. The stand-in network predicts the ε (or v) that points at a fixed target
image plus a little noise, so trajectories stay of order one like real ones. Both fixtures also run in
float64 (make_fixtures.py), which measures the float32 error of every stored result.
"""
import torch

CASES = {
    # name: (prediction_type, eta, num_steps, steps_offset)
    "eps_eta0_50": ("epsilon", 0.0, 50, 1),
    "eps_eta05_25": ("epsilon", 0.5, 25, 1),
    "eps_eta0_30": ("epsilon", 0.0, 30, 1),       # 30 does not divide 1000: ratio 33
    "eps_eta0_50_offset0": ("epsilon", 0.0, 50, 0),  # the official BLD SD2 script's timesteps
    "v_eta0_50": ("v_prediction", 0.0, 50, 1),
    "v_eta1_10": ("v_prediction", 1.0, 10, 1),
}


def _scheduler(prediction_type: str, steps_offset: int):
    from diffusers import DDIMScheduler
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=steps_offset,
                         prediction_type=prediction_type, timestep_spacing="leading")


def ddim_trajectories(dtype=torch.float32) -> dict:
    out = {"alphas_cumprod": _scheduler("epsilon", 1).alphas_cumprod.clone()}
    for name, (prediction_type, eta, num_steps, steps_offset) in CASES.items():
        generator = torch.Generator().manual_seed(len(name) * 7919 + num_steps)
        scheduler = _scheduler(prediction_type, steps_offset)
        scheduler.set_timesteps(num_steps)
        if dtype == torch.float64:   # the step's square roots in float64 too, so that the run measures their rounding
            scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(dtype)
            scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.to(dtype)
        target = torch.randn(2, 4, 4, 4, generator=generator).to(dtype)
        x = torch.randn(2, 4, 4, 4, generator=generator).to(dtype)
        out[f"{name}.timesteps"] = scheduler.timesteps.clone()
        out[f"{name}.x_T"] = x.clone()
        for i, t in enumerate(scheduler.timesteps):
            alpha_bar = scheduler.alphas_cumprod[t]
            eps = (x - alpha_bar.sqrt() * target) / (1 - alpha_bar).sqrt() \
                + 0.1 * torch.randn(x.shape, generator=generator).to(dtype)
            output = eps if prediction_type == "epsilon" else alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * target
            noise = torch.randn(x.shape, generator=generator).to(dtype)
            result = scheduler.step(output, t, x, eta=eta, variance_noise=noise if eta > 0 else None)
            out[f"{name}.{i}.model_output"] = output
            if eta > 0:
                out[f"{name}.{i}.noise"] = noise
            out[f"{name}.{i}.x0_pred"] = result.pred_original_sample
            x = result.prev_sample
            out[f"{name}.{i}.x_prev"] = x.clone()
    return out


def add_noise(dtype=torch.float32) -> dict:
    """diffusers' `add_noise`, which is q(z_t | z_0) sampled with given noise."""
    generator = torch.Generator().manual_seed(3)
    scheduler = _scheduler("epsilon", 1)
    z0 = torch.randn(5, 4, 8, 8, generator=generator)
    noise = torch.randn(5, 4, 8, 8, generator=generator)
    t = torch.tensor([0, 1, 499, 981, 999])
    return {"z0": z0, "noise": noise, "t": t, "z_t": scheduler.add_noise(z0.to(dtype), noise.to(dtype), t)}


FIXTURES = {"samplers_ddim": ddim_trajectories, "samplers_add_noise": add_noise}
