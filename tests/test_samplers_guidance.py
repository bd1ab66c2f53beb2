"""Classifier-free guidance (Ho & Salimans 2022, eq. 6)."""
import torch

from samplers import classifier_free_guidance, guided_model_output


def test_cfg_scale_1_is_the_conditional_and_scale_0_the_unconditional_prediction():
    eps_u, eps_c = torch.randn(2, 3, 4, 8, 8)
    torch.testing.assert_close(classifier_free_guidance(eps_u, eps_c, 1.0), eps_c)
    torch.testing.assert_close(classifier_free_guidance(eps_u, eps_c, 0.0), eps_u)


def test_cfg_extrapolates_along_the_conditional_direction():
    """ε̃ − ε_u = w (ε_c − ε_u) for any w."""
    eps_u, eps_c = torch.randn(2, 3, 4, 8, 8, dtype=torch.float64)
    for w in (2.0, 7.5, 12.0):
        torch.testing.assert_close(classifier_free_guidance(eps_u, eps_c, w) - eps_u, w * (eps_c - eps_u))


class _RecordingUNet:
    """A stand-in network that returns z + mean(context) and remembers its inputs."""

    def __call__(self, z, timesteps, context):
        self.z, self.timesteps, self.context = z, timesteps, context
        return z + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def test_guided_model_output_runs_uncond_then_cond_in_one_batch():
    unet, z = _RecordingUNet(), torch.randn(3, 4, 8, 8)
    cond, uncond = torch.full((1, 77, 16), 2.0), torch.zeros(1, 77, 16)
    guided = guided_model_output(unet, z, 981, cond, uncond, guidance_scale=7.5)
    assert unet.z.shape == (6, 4, 8, 8) and unet.context.shape == (6, 77, 16)
    assert torch.equal(unet.context[:3], uncond.expand(3, -1, -1))
    assert torch.equal(unet.context[3:], cond.expand(3, -1, -1))
    assert unet.timesteps.tolist() == [981] * 6 and unet.timesteps.dtype == torch.long
    torch.testing.assert_close(guided, z + 7.5 * 2.0)
