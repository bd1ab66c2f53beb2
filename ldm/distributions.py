"""The KL autoencoder's posterior q(z|x) = N(mean, diag(exp(logvar))) (LDM `ldm/modules/distributions`)."""
import torch


class DiagonalGaussian:
    """A diagonal Gaussian read from the encoder's moments, (B, 2C, h, w) = cat[mean, logvar] on channels.

    logvar is clamped to [−30, 20] as in LDM, so exp(logvar) stays finite.
    """

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)            # (B, 2C, h, w) -> 2 × (B, C, h, w)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std · ε,  ε ~ N(0, I) drawn in float32 from `generator` on its own device."""
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=torch.float32)
        return self.mean + self.std * noise.to(self.mean)
