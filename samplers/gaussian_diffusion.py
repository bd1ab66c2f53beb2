"""The diffusion OpenAI's ADM was trained with (Dhariwal & Nichol 2021; Nichol & Dhariwal 2021, "Improved DDPM"),
respaced for sampling: the linear schedule, the kept timesteps, the posterior with the learned-range variance, x̂0
from ε, gradient guidance both ways, and one DDPM or DDIM step.

The tables are float64 numpy, computed with numpy's operations, and each step runs the torch operations of
guided-diffusion's `gaussian_diffusion.py` and `respace.py` (GD) in GD's order, so that a step here and one of GD's
`SpacedDiffusion` agree bit for bit (tests/test_samplers_gaussian_diffusion.py). Indices are RESPACED indices
0..S−1, as (B,) long tensors (an int is taken for the whole batch); `model_timesteps` gives what the network sees.
"""
from dataclasses import dataclass, replace

import numpy as np
import torch


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    """DDPM's linear schedule (Ho et al. 2020 §4): β_t from 1e-4 to 0.02 over T = 1000 steps, float64, (T,).

    For another T both ends are scaled by 1000/T (GD `get_named_beta_schedule("linear")`).
    """
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
    """The original timesteps a respaced sampler keeps, sorted (Improved DDPM §4; GD respace.py `space_timesteps`).

    "100" (or [100]) keeps 100 steps evenly spread over [0, T−1]: t = round(k·(T−1)/99), the stride accumulated in
    floating point and rounded as Python rounds (0, 10, 20, 30, 40, 50, 61, …, 999). "10,20" splits [0, T) into
    equal sections and spreads 10 steps over the first, 20 over the second. "ddimN" keeps range(0, T, stride) for
    the integer stride that gives exactly N steps (the DDIM paper's spacing).
    """
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        wanted = int(section_counts[len("ddim"):])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == wanted:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"no integer stride gives exactly {wanted} of {num_timesteps} steps ({section_counts!r}); "
                         f"ask for another count or use a plain count such as '{wanted}'")
    if isinstance(section_counts, str):
        section_counts = [int(count) for count in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"section {i} has {size} timesteps, fewer than the {count} asked for; ask for at most "
                             f"{size} steps there")
        stride = (size - 1) / (count - 1) if count > 1 else 1
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def _gather(table: np.ndarray, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[index] in float32, shaped (B, 1, …) and expanded to like's shape (GD `_extract_into_tensor`)."""
    values = torch.from_numpy(table).to(device=index.device)[index].float()       # (B,)
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim)).expand(like.shape)


def _as_index(index, like: torch.Tensor) -> torch.Tensor:
    """A (B,) long tensor of respaced indices: a tensor as it is, an int repeated over like's batch."""
    if isinstance(index, torch.Tensor):
        return index
    return torch.full((like.shape[0],), int(index), dtype=torch.long, device=like.device)


@dataclass(frozen=True)
class MeanVariance:
    """p(x_{t−1} | x_t) = N(mean, variance) with x̂0 and the ε it came from, each (B, C, H, W), float32."""
    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor
    eps: torch.Tensor


class GaussianDiffusion:
    """The diffusion with the original β_1..β_T respaced to the kept timesteps t_0 < … < t_{S−1}.

    Respacing (Improved DDPM §4, GD respace.py `SpacedDiffusion`) keeps ᾱ at the kept steps and recomputes
    β'_i = 1 − ᾱ[t_i]/ᾱ[t_{i−1}] (ᾱ[t_{−1}] = 1), so the S-step process has ᾱ'_i = ᾱ[t_i]. Every table below is
    of the respaced process, float64 numpy, computed as GD's `GaussianDiffusion.__init__` computes it.
    `use_timesteps=None` keeps all T steps (β' is then β up to rounding, as GD).
    """

    def __init__(self, betas: np.ndarray, use_timesteps=None):
        betas = np.asarray(betas, dtype=np.float64)                                  # (T,) original
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError(f"betas must be a 1-D array with every value in (0, 1], got shape {betas.shape} "
                             f"and range [{betas.min()}, {betas.max()}]")
        self.original_num_timesteps = len(betas)
        kept = sorted(set(range(len(betas)) if use_timesteps is None else (int(t) for t in use_timesteps)))
        if not kept or kept[0] < 0 or kept[-1] >= len(betas):
            raise ValueError(f"use_timesteps must be timesteps in 0..{len(betas) - 1}, got {kept[:3]}…{kept[-3:]}")
        self.timestep_map = torch.tensor(kept, dtype=torch.long)                     # (S,) index → original t
        original_alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
        kept_alphas_cumprod = original_alphas_cumprod[kept]                          # (S,)
        self.betas = 1 - kept_alphas_cumprod / np.append(1.0, kept_alphas_cumprod[:-1])

        betas, alphas = self.betas, 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.log_betas = np.log(betas)
        # the posterior q(x_{t−1} | x_t, x_0) (DDPM eqs. 6–7): β̃_t and the two coefficients of μ̃_t
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0, so its log is clipped: log β̃_0 is taken as log β̃_1 (GD)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1],
                                                               self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    @classmethod
    def adm(cls, respacing="100", num_timesteps: int = 1000) -> "GaussianDiffusion":
        """ADM's diffusion: linear β over T steps, respaced to `respacing` (GD `create_gaussian_diffusion`; "" or
        None keeps all T)."""
        return cls(linear_betas(num_timesteps), space_timesteps(num_timesteps, respacing or [num_timesteps]))

    @property
    def num_steps(self) -> int:
        """S, the number of kept timesteps."""
        return len(self.timestep_map)

    def model_timesteps(self, index) -> torch.Tensor:
        """What the network sees at respaced `index`: the original timestep t_i as float32, × 1000/T
        (GD respace.py `_WrappedModel` with rescale_timesteps=True, the identity for T = 1000)."""
        index = torch.as_tensor(index)
        return self.timestep_map.to(index.device)[index].float() * (1000.0 / self.original_num_timesteps)

    def q_sample(self, x0: torch.Tensor, index, noise: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) (DDPM eq. 4) by reparameterisation: x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε (GD `q_sample`)."""
        index = _as_index(index, x0)
        return (_gather(self.sqrt_alphas_cumprod, index, x0) * x0
                + _gather(self.sqrt_one_minus_alphas_cumprod, index, x0) * noise)

    def pred_xstart_from_eps(self, x: torch.Tensor, index, eps: torch.Tensor) -> torch.Tensor:
        """x̂0 = √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε (DDPM eq. 15; GD `_predict_xstart_from_eps`)."""
        index = _as_index(index, x)
        return (_gather(self.sqrt_recip_alphas_cumprod, index, x) * x
                - _gather(self.sqrt_recipm1_alphas_cumprod, index, x) * eps)

    def eps_from_pred_xstart(self, x: torch.Tensor, index, pred_xstart: torch.Tensor) -> torch.Tensor:
        """ε = (√(1/ᾱ_t)·x_t − x̂0) / √(1/ᾱ_t − 1), DDPM eq. 15 solved for ε (GD `_predict_eps_from_xstart`)."""
        index = _as_index(index, x)
        return ((_gather(self.sqrt_recip_alphas_cumprod, index, x) * x - pred_xstart)
                / _gather(self.sqrt_recipm1_alphas_cumprod, index, x))

    def posterior_mean(self, pred_xstart: torch.Tensor, x: torch.Tensor, index) -> torch.Tensor:
        """μ̃_t(x_t, x̂0) = √ᾱ_{t−1}β_t/(1−ᾱ_t)·x̂0 + √α_t(1−ᾱ_{t−1})/(1−ᾱ_t)·x_t (DDPM eq. 7; GD
        `q_posterior_mean_variance`)."""
        index = _as_index(index, x)
        return (_gather(self.posterior_mean_coef1, index, x) * pred_xstart
                + _gather(self.posterior_mean_coef2, index, x) * x)

    def p_mean_variance(self, model_output: torch.Tensor, x: torch.Tensor, index) -> MeanVariance:
        """p(x_{t−1} | x_t) from the network's (B, 2C, H, W) output [ε | v] (GD `p_mean_variance`, learned range,
        clip_denoised=False as Blended Diffusion runs it).

        The variance interpolates in log space between the posterior's β̃_t and β_t (Improved DDPM eq. 15):
        log Σ = frac·log β_t + (1 − frac)·log β̃_t with frac = (v + 1)/2 (v is not clamped). The mean is the
        posterior's at x̂0 from ε (DDPM eqs. 7 and 15).
        """
        channels = x.shape[1]
        if model_output.shape != (x.shape[0], 2 * channels, *x.shape[2:]):
            raise ValueError(f"expected the network's output of shape {(x.shape[0], 2 * channels, *x.shape[2:])} "
                             f"([ε | v] for x of shape {tuple(x.shape)}), got {tuple(model_output.shape)}; "
                             f"ADM with learn_sigma has out_channels = 2·in_channels")
        index = _as_index(index, x)
        eps, v = torch.split(model_output, channels, dim=1)                            # (B, C, H, W) each
        min_log = _gather(self.posterior_log_variance_clipped, index, x)
        max_log = _gather(self.log_betas, index, x)
        frac = (v + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        pred_xstart = self.pred_xstart_from_eps(x, index, eps)
        return MeanVariance(mean=self.posterior_mean(pred_xstart, x, index), variance=torch.exp(log_variance),
                            log_variance=log_variance, pred_xstart=pred_xstart, eps=eps)

    def condition_mean(self, out: MeanVariance, gradient: torch.Tensor) -> torch.Tensor:
        """The mean shifted by the guidance gradient g = ∇_{x_t} log p(y | x_t) (scale included): μ + Σ·g
        (Sohl-Dickstein et al. 2015; Dhariwal & Nichol 2021 Algorithm 1; GD `condition_mean`)."""
        return out.mean.float() + out.variance * gradient.float()

    def condition_score(self, out: MeanVariance, x: torch.Tensor, index, gradient: torch.Tensor) -> MeanVariance:
        """ε shifted by the guidance gradient, ε' = ε − √(1 − ᾱ_t)·g, then x̂0 and the mean recomputed from ε'
        (Song et al. 2021; Dhariwal & Nichol 2021 Algorithm 2; GD `condition_score`). ε is re-derived from x̂0
        as GD does, and √(1 − ᾱ_t) taken in torch from the float32 ᾱ_t, as GD does."""
        index = _as_index(index, x)
        alpha_bar = _gather(self.alphas_cumprod, index, x)
        eps = self.eps_from_pred_xstart(x, index, out.pred_xstart)
        eps = eps - (1 - alpha_bar).sqrt() * gradient
        pred_xstart = self.pred_xstart_from_eps(x, index, eps)
        return replace(out, mean=self.posterior_mean(pred_xstart, x, index), pred_xstart=pred_xstart, eps=eps)

    def ddpm_step(self, out: MeanVariance, index, noise: torch.Tensor, mean: torch.Tensor | None = None):
        """x_{t−1} = μ + 1[t > 0]·exp(½·log Σ)·z (DDPM Algorithm 2, line 4; GD `p_sample`). `mean` replaces
        out.mean (pass `condition_mean`'s); no noise is added at index 0."""
        index = _as_index(index, noise)
        nonzero_mask = (index != 0).float().view(-1, *([1] * (noise.ndim - 1)))      # (B, 1, 1, 1)
        mean = out.mean if mean is None else mean
        return mean + nonzero_mask * torch.exp(0.5 * out.log_variance) * noise

    def ddim_step(self, out: MeanVariance, x: torch.Tensor, index, noise: torch.Tensor, eta: float = 0.0):
        """x_{t−1} = √ᾱ_{t−1}·x̂0 + √(1 − ᾱ_{t−1} − σ²)·ε + σ·z (DDIM eq. 12), with
        σ = η·√((1 − ᾱ_{t−1})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t−1}) (DDIM eq. 16); no noise at index 0 (GD `ddim_sample`;
        ε re-derived from out.pred_xstart as GD does). Pass `condition_score`'s output to guide."""
        index = _as_index(index, x)
        eps = self.eps_from_pred_xstart(x, index, out.pred_xstart)
        alpha_bar = _gather(self.alphas_cumprod, index, x)
        alpha_bar_prev = _gather(self.alphas_cumprod_prev, index, x)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        mean_pred = out.pred_xstart * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
        nonzero_mask = (index != 0).float().view(-1, *([1] * (x.ndim - 1)))          # (B, 1, 1, 1)
        return mean_pred + nonzero_mask * sigma * noise
