"""weights/toy.py's Blended Diffusion toy: the unconditional pixel model on ADM's schedule, the toy judge, and
CLIP guidance steering the unconditional model to the prompt's class."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blend.clip_guidance import CLIPGuidance, clip_normalise, spherical_distance
from samplers import GaussianDiffusion, linear_betas
from weights.toy import ToyPixelModel, load_toy_pixel

SIZE = 32          # the toy runs at any size; its photographs are resized to the images'


@pytest.fixture(scope="module")
def toy():
    model, judge, spec = load_toy_pixel()
    judge.image_size = 32       # views of 32 × 32 instead of CLIP's 224: the same judge, faster
    return model, judge, spec


def photographs(model):
    return model.denoiser.data_at((SIZE, SIZE)).reshape(-1, 3, SIZE, SIZE).float()   # (12, 3, SIZE, SIZE)


def central_mask(margin=2):
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., margin:SIZE - margin, margin:SIZE - margin] = 1
    return mask


def test_load_toy_pixel_gives_model_judge_and_spec(toy):
    model, judge, spec = toy
    assert (spec.name, spec.image_size, spec.respacing) == ("toy", 128, "100")
    assert isinstance(model, ToyPixelModel) and load_toy_pixel()[1].image_size == 224
    diffusion = spec.build_diffusion()
    assert diffusion.num_steps == 100 and spec.build_diffusion("ddim50").num_steps == 50
    # the toy's ᾱ is the diffusion's table before respacing: numpy's cumprod of ADM's linear β
    assert np.array_equal(model.denoiser.alphas_cumprod.numpy(), np.cumprod(1.0 - linear_betas()))
    kept = diffusion.timestep_map.numpy()
    np.testing.assert_allclose(model.denoiser.alphas_cumprod.numpy()[kept], diffusion.alphas_cumprod, rtol=1e-12)


def test_toy_pixel_model_is_the_unconditional_posterior_mean_with_variance_beta_tilde(toy):
    model, _, spec = toy
    diffusion = spec.build_diffusion()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    index = torch.tensor([50, 10])
    output = model(x, diffusion.model_timesteps(index))
    assert output.shape == (2, 6, SIZE, SIZE)
    every_class = torch.ones(2, 1, 6)
    assert torch.equal(output[:, :3], model.denoiser(x, diffusion.model_timesteps(index), every_class))
    assert torch.equal(output[:, 3:], torch.full_like(x, -1.0))
    out = diffusion.p_mean_variance(output, x, index)      # v = −1: Σ = β̃_t (Improved DDPM eq. 15)
    variance = torch.from_numpy(diffusion.posterior_variance)[index].float().view(2, 1, 1, 1).expand_as(x)
    torch.testing.assert_close(out.variance, variance, rtol=1e-6, atol=0)


def test_toy_judge_names_each_photographs_class_and_is_differentiable(toy):
    model, judge, _ = toy
    photos, labels = photographs(model), model.denoiser.labels
    names = judge.tokenizer.class_names
    texts = judge.text_embeddings(names)
    assert torch.equal(texts, torch.eye(6))                                        # one unit vector per class
    assert torch.allclose(judge.text_embeddings("a cat on grass").norm(dim=-1), torch.ones(1))
    for mask in (None, central_mask()):
        judge.set_mask(mask)
        masked = photos if mask is None else photos * mask
        pixels = clip_normalise(F.adaptive_avg_pool2d(masked, judge.image_size).add(1).div(2))
        pixels.requires_grad_()
        probabilities = judge.image_encoder(pixels)                                # (12, 6)
        assert torch.equal(probabilities.argmax(1), labels)
        distances = spherical_distance(probabilities[:, None], texts[None])        # (12, 6)
        assert torch.equal(distances.argmin(1), labels)
        distances.sum().backward()
        assert pixels.grad.abs().sum() > 0
    judge.set_mask(None)


def edit(toy, source_index: int, prompt: str, guided: bool, seed: int, batch: int = 2):
    """Blended Diffusion on the toy, as the official loop runs it: q_sample to respaced index 74, then for each index
    a CLIP-guided DDPM step and the background replaced by q_sample(source, index); the last x̂0 with the source's
    background. Returns the result (B, 3, SIZE, SIZE)."""
    model, judge, spec = toy
    diffusion: GaussianDiffusion = spec.build_diffusion()
    mask = central_mask()
    judge.set_mask(mask)
    source = photographs(model)[source_index:source_index + 1]
    generator = torch.Generator().manual_seed(seed)
    guidance = CLIPGuidance(model, diffusion, judge, judge.text_embeddings(prompt), mask, source=source,
                            num_views=2, generator=generator)
    x = diffusion.q_sample(source.expand(batch, -1, -1, -1), 74, torch.randn(batch, 3, SIZE, SIZE, generator=generator))
    for i in range(74, -1, -1):
        index = torch.full((batch,), i)
        with torch.no_grad():
            out = diffusion.p_mean_variance(model(x, diffusion.model_timesteps(index)), x, index)
        noise = torch.randn(x.shape, generator=generator)
        mean = diffusion.condition_mean(out, guidance(x, index)) if guided else out.mean
        x = diffusion.ddpm_step(out, index, noise, mean)
        background = diffusion.q_sample(source, i, torch.randn(1, 3, SIZE, SIZE, generator=generator))
        x = x * mask + background * (1 - mask)
    judge.set_mask(None)
    return out.pred_xstart * mask + source * (1 - mask)


def nearest_photographs(toy, results):
    """For each result, the class of the photograph nearest (L2) on the masked region, and that squared distance."""
    model, judge, _ = toy
    mask = central_mask()
    squared = ((results[:, None] - photographs(model)[None]) * mask).pow(2).flatten(2).mean(2)   # (B, 12)
    nearest = squared.argmin(1)
    return [judge.tokenizer.class_names[model.denoiser.labels[k]] for k in nearest], squared.min(1).values


@pytest.mark.parametrize(("source_index", "prompt", "seed"), [(10, "cat", 10), (2, "astronaut", 2)])
def test_guidance_turns_the_masked_region_into_a_photograph_of_the_prompts_class(toy, source_index, prompt, seed):
    """The toy model is unconditional: unguided, the edit stays some photograph that is not the prompt's class; the
    toy judge's gradient steers it to a photograph of the prompt's class, that photograph exactly in the mask."""
    unguided, _ = nearest_photographs(toy, edit(toy, source_index, prompt, guided=False, seed=seed))
    classes, squared = nearest_photographs(toy, edit(toy, source_index, prompt, guided=True, seed=seed))
    assert prompt not in unguided
    assert classes == [prompt, prompt]
    assert squared.max() < 1e-4
