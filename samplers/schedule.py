"""The forward process of DDPM (Ho et al. 2020) under Stable Diffusion's noise schedule."""
import numpy as np
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
        # q_sample's √ᾱ_t and √(1 − ᾱ_t) when they are tabulated (CompVis); None: taken from ᾱ_t
        self.q_sample_roots: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000):
        """SD's schedule: β = linspace(√β_start, √β_end, T)², computed in float32."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        return cls(betas)

    @classmethod
    def compvis_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000):
        """CompVis's "linear" schedule (`ldm.modules.diffusionmodules.util.make_beta_schedule`,
        `ddpm.register_schedule`).

        The same β = linspace(√β_start, √β_end, T)² as `scaled_linear`, but in float64, and computed where
        CompVis computes it: β in torch, then ᾱ = cumprod(1 − β) and q_sample's √ᾱ and √(1 − ᾱ) in numpy,
        each stored as float32. They differ from SD's float32 table in the last bits, and numpy's square root
        is correctly rounded on every CPU, where torch's need not be. DDIM reads the float32 ᾱ.
        """
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = np.cumprod(1.0 - betas.numpy())         # float64, numpy
        schedule = cls(betas)
        schedule.betas, schedule.alphas = betas.float(), (1.0 - betas).float()
        schedule.alphas_cumprod = torch.from_numpy(alphas_cumprod).float()
        schedule.q_sample_roots = (torch.from_numpy(np.sqrt(alphas_cumprod)).float(),
                                   torch.from_numpy(np.sqrt(1.0 - alphas_cumprod)).float())
        return schedule

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

        The roots are tabulated (CompVis's schedule) or taken with torch's `** 0.5` from ᾱ_t, the
        operations of diffusers' `add_noise`, so the two agree bit for bit whatever torch's root rounds to.
        """
        if self.q_sample_roots is not None:
            root, root_of_rest = (_gather(table, t, z0).to(z0.dtype) for table in self.q_sample_roots)
            return root * z0 + root_of_rest * noise
        alpha_bar = _gather(self.alphas_cumprod, t, z0).to(z0.dtype)
        return alpha_bar**0.5 * z0 + (1 - alpha_bar) ** 0.5 * noise
