"""The forward process of DDPM (Ho et al. 2020) under Stable Diffusion's noise schedule."""
import torch


def _gather(values: torch.Tensor, t, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast against `like` (a batch of latents, B first)."""
    t = torch.as_tensor(t, device=values.device, dtype=torch.long)
    picked = values[t].to(like.device)
    return picked.reshape(picked.shape + (1,) * (like.ndim - picked.ndim))


class NoiseSchedule:
    """β_1..β_T and ᾱ_t = Π_{s≤t} (1 − β_s), indexed by integer timesteps t in [0, T).

    `scaled_linear` computes in float32, as diffusers does; a float64 `betas` gives a
    float64 schedule (for tests of the equations). Callers cast the results.
    """

    def __init__(self, betas: torch.Tensor):
        self.betas = betas                                       # (T,)
        self.alphas = 1.0 - self.betas                           # (T,)
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # (T,)  ᾱ_t

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000):
        """SD's schedule: β = linspace(√β_start, √β_end, T)², computed in float32."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        return cls(betas)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)

    def alpha_bar(self, t, like: torch.Tensor | None = None) -> torch.Tensor:
        """ᾱ_t for an int or a (B,) tensor of ints; broadcast against `like` when given."""
        if like is None:
            return self.alphas_cumprod[torch.as_tensor(t, dtype=torch.long)]
        return _gather(self.alphas_cumprod, t, like)

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio SNR(t) = ᾱ_t / (1 − ᾱ_t) (Kingma et al. 2021)."""
        alpha_bar = self.alpha_bar(t)
        return alpha_bar / (1.0 - alpha_bar)

    def q_sample(self, z0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """q(z_t | z_0) (DDPM eq. 4), sampled by reparameterisation:

            z_t = √ᾱ_t · z_0 + √(1 − ᾱ_t) · ε,   ε ~ N(0, I)
        """
        alpha_bar = _gather(self.alphas_cumprod, t, z0).to(z0.dtype)
        return alpha_bar.sqrt() * z0 + (1.0 - alpha_bar).sqrt() * noise
