"""The three things a diffusion network can predict, and how each gives the others.

With z_t = √ᾱ·z_0 + √(1−ᾱ)·ε (the forward process) and v = √ᾱ·ε − √(1−ᾱ)·z_0
(Salimans & Ho 2022, §4), any one of ε, ẑ_0, v together with z_t fixes the other two.
`alpha_bar` is a tensor that broadcasts against the latents.
"""
import torch


def predict_x0_from_eps(z_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """ẑ_0 = (z_t − √(1−ᾱ)·ε) / √ᾱ   (DDIM eq. 9; the "predicted x_0" of eq. 12)."""
    return (z_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def predict_eps_from_x0(z_t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """ε = (z_t − √ᾱ·ẑ_0) / √(1−ᾱ)   (the forward process solved for ε)."""
    return (z_t - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5


def predict_x0_from_v(z_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """ẑ_0 = √ᾱ·z_t − √(1−ᾱ)·v   (Salimans & Ho 2022, §4)."""
    return alpha_bar**0.5 * z_t - (1 - alpha_bar) ** 0.5 * v


def predict_eps_from_v(z_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """ε = √ᾱ·v + √(1−ᾱ)·z_t   (Salimans & Ho 2022, §4)."""
    return alpha_bar**0.5 * v + (1 - alpha_bar) ** 0.5 * z_t


def v_from_eps_and_x0(eps: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """v = √ᾱ·ε − √(1−ᾱ)·z_0   (the v-prediction target, Salimans & Ho 2022, §4)."""
    return alpha_bar**0.5 * eps - (1 - alpha_bar) ** 0.5 * x0


def x0_and_eps(model_output: torch.Tensor, z_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str):
    """(ẑ_0, ε̂) from a network's output under its `prediction_type` ("epsilon" or "v")."""
    if prediction_type == "epsilon":
        return predict_x0_from_eps(z_t, model_output, alpha_bar), model_output
    if prediction_type == "v":
        return predict_x0_from_v(z_t, model_output, alpha_bar), predict_eps_from_v(z_t, model_output, alpha_bar)
    raise ValueError(f"prediction_type must be 'epsilon' or 'v', got {prediction_type!r}")
