"""weights/toy.py: the exact posterior-mean denoiser, and Algorithm 1 made meaningful with it."""
import pytest
import torch

import weights
from blend import blended_latent_diffusion
from samplers import DDIMSampler, NoiseSchedule
from weights.toy import ToyDenoiser, ToyTextEncoder, ToyTokenizer

SIZE = 32  # the toy works at any size; its data is resized to the latent's


@pytest.fixture(scope="module")
def toy():
    return weights.load("toy")


def test_toy_denoiser_is_posterior_mean():
    # An independent Bayes computation: p(x_k | x_t) ∝ prior_k · N(x_t; √ᾱ·x_k, (1−ᾱ)·I), then Σ_k p_k·x_k.
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(5, 3, 4, 4, generator=generator) * 2 - 1, torch.tensor([0, 0, 1, 1, 1])
    schedule = NoiseSchedule.scaled_linear()
    denoiser = ToyDenoiser(images, labels, schedule)
    z_t = torch.randn(3, 3, 4, 4, generator=generator)
    timesteps = torch.tensor([900, 400, 50])
    context = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])[:, None, :]  # all, class 1, class 0
    for row in range(3):
        alpha_bar = schedule.alphas_cumprod[timesteps[row]].double()
        likelihood = torch.distributions.Normal(alpha_bar.sqrt() * images.double(), (1 - alpha_bar).sqrt())
        log_p = likelihood.log_prob(z_t[row].double()).flatten(1).sum(1) + context[row, 0, labels].double().log()
        expected_x0 = (torch.softmax(log_p, 0)[:, None, None, None] * images.double()).sum(0)
        x0 = denoiser.posterior_mean(z_t[row:row + 1], timesteps[row:row + 1], context[row:row + 1])
        torch.testing.assert_close(x0[0].double(), expected_x0, rtol=1e-6, atol=1e-6)
        # ε̂ is the forward process solved for ε, given x̂0 (module docstring)
        eps = denoiser(z_t[row:row + 1], timesteps[row:row + 1], context[row:row + 1])
        torch.testing.assert_close(alpha_bar.sqrt() * x0.double() + (1 - alpha_bar).sqrt() * eps.double(),
                                   z_t[row:row + 1].double(), rtol=1e-5, atol=1e-5)


def test_toy_denoiser_is_one_hot_at_low_noise(toy):
    data = toy.unet.data_at((SIZE, SIZE)).reshape(-1, 3, SIZE, SIZE)
    noisy = 0.999**0.5 * data[3:4] + 0.02 * torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    x0 = toy.unet.posterior_mean(noisy, torch.tensor([5]), torch.ones(1, 1, len(toy.tokenizer.class_names)))
    torch.testing.assert_close(x0, data[3:4])


def test_toy_tokenizer_reads_class_words_and_empty_prompt_is_unconditional(toy):
    names = toy.tokenizer.class_names
    assert names == ["astronaut", "brick", "cat", "coffee", "grass", "rocket"]
    rows = toy.tokenizer(["a photo of two Cats", "", "brick and grass"])
    assert rows[0].tolist() == [float(n == "cat") for n in names]
    assert rows[1].tolist() == [1.0] * len(names)
    assert rows[2].tolist() == [float(n in ("brick", "grass")) for n in names]
    assert ToyTextEncoder()(rows).shape == (3, 1, len(names))
    with pytest.raises(ValueError, match="knows only the classes"):
        ToyTokenizer(names)(["a dog"])


def edit_with_toy(toy, source_index: int, prompt: str, variant: str = "paper", seed: int = 0):
    """Algorithm 1 on data image `source_index` at SIZE×SIZE, a central square masked, 2 samples, w = 1."""
    data = toy.unet.data_at((SIZE, SIZE)).reshape(-1, 3, SIZE, SIZE)
    z_init = data[source_index:source_index + 1].expand(2, -1, -1, -1)
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 8:24, 8:24] = 1
    contexts = [toy.text_encoder(toy.tokenizer([p])) for p in (prompt, "")]
    sampler = DDIMSampler(toy.spec.build_schedule(), 50, offset=0 if variant == "official" else 1)
    with torch.no_grad():
        result = blended_latent_diffusion(toy.unet, sampler, z_init, mask, *contexts, guidance_scale=1.0,
                                          generator=torch.Generator().manual_seed(seed), variant=variant)
    return result, z_init, mask, data


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_toy_edit_inside_mask_matches_an_image_of_the_prompt_class(toy, variant):
    coffee = toy.unet.labels.tolist().index(toy.tokenizer.class_names.index("coffee"))
    result, z_init, mask, data = edit_with_toy(toy, coffee, "a cat", variant)
    inside = mask[0, 0].bool()
    is_cat = toy.unet.labels == toy.tokenizer.class_names.index("cat")
    # DDIM's last step lands on ᾱ_0, not 1: z_0 = √ᾱ_0·x_k + √(1−ᾱ_0)·ε̂, so a pixel is off by about
    # √(1−ᾱ_0)·E|ε| = 0.029 · 0.8 ≈ 0.023 from the image x_k it snapped to. 1.5·√(1−ᾱ_0) bounds the mean.
    bound = 1.5 * (1 - toy.spec.build_schedule().alphas_cumprod[0]).sqrt()
    for sample in result:
        errors = (sample[:, inside][None] - data[:, :, inside]).abs().mean(dim=(1, 2))  # (N,) per data image
        assert errors[is_cat].min() < bound, f"the masked region is no cat image's: mean error {errors[is_cat].min()}"
        assert errors[~is_cat].min() > 5 * bound, "the masked region looks like an image of another class"
    outside = ~inside
    background_error = (result[:, :, outside] - z_init[:, :, outside]).abs().max()
    if variant == "paper":
        assert background_error == 0  # the last blend uses z_init itself
    else:
        assert 0 < background_error < 0.2  # the official loop's last background is noised to t = 0


def test_toy_edit_samples_follow_the_seed(toy):
    coffee = toy.unet.labels.tolist().index(toy.tokenizer.class_names.index("coffee"))
    first, *_ = edit_with_toy(toy, coffee, "a rocket", seed=1)
    again, *_ = edit_with_toy(toy, coffee, "a rocket", seed=1)
    assert torch.equal(first, again)


def test_toy_loads_through_weights_load_with_the_spec_fields_of_a_preset():
    toy, tiny = weights.load("toy"), weights.load("tiny")
    for field in ("name", "prediction_type", "scale_factor", "image_size", "size_multiple", "steps_offset",
                  "guidance_scale", "notes"):
        assert hasattr(toy.spec, field) and hasattr(tiny.spec, field), field
    assert toy.spec.size_multiple == 1 and tiny.spec.size_multiple == 16   # tiny: 8 in the VAE, 2 in the UNet
    assert weights.spec_of("toy") == toy.spec and weights.spec_of("tiny") == tiny.spec
    assert toy.spec.build_schedule().alphas_cumprod.equal(tiny.spec.build_schedule().alphas_cumprod)
