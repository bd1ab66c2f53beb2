"""ADM's diffusion (samplers/gaussian_diffusion.py): the linear schedule, the respacing, the learned-range posterior,
both guidance forms and the DDPM and DDIM steps, against guided-diffusion's SpacedDiffusion in-process."""
import numpy as np
import pytest
import torch

from samplers import GaussianDiffusion, MeanVariance, linear_betas, space_timesteps

# space_timesteps(1000, "100"), as listed in ../shared/FACTS-BLENDED-DIFFUSION.md §3 (Diffusion)
KEPT_100 = [0, 10, 20, 30, 40, 50, 61, 71, 81, 91, 101, 111, 121, 131, 141, 151, 161, 172, 182, 192, 202, 212, 222,
            232, 242, 252, 262, 272, 283, 293, 303, 313, 323, 333, 343, 353, 363, 373, 383, 394, 404, 414, 424, 434,
            444, 454, 464, 474, 484, 494, 505, 515, 525, 535, 545, 555, 565, 575, 585, 595, 605, 616, 626, 636, 646,
            656, 666, 676, 686, 696, 706, 716, 727, 737, 747, 757, 767, 777, 787, 797, 807, 817, 827, 838, 848, 858,
            868, 878, 888, 898, 908, 918, 928, 938, 949, 959, 969, 979, 989, 999]
SECTIONS = ["100", "50", "25", "10", "1000", "7", "10,20", "1,2,3", "ddim50", "ddim25", "ddim10"]
TABLES = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
          "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
          "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"]
UNIT_ROUNDOFF_64 = 2.0 ** -53


def test_space_timesteps_100_keeps_the_published_steps():
    assert space_timesteps(1000, "100") == KEPT_100
    assert GaussianDiffusion.adm("100").timestep_map.tolist() == KEPT_100


def test_linear_betas_run_from_1e4_to_0_02_and_respacing_recomputes_them():
    betas = linear_betas(1000)
    assert betas.dtype == np.float64 and betas[0] == 1e-4 and betas[-1] == 0.02
    diffusion = GaussianDiffusion.adm("100")
    assert diffusion.num_steps == 100 and diffusion.betas[0] == pytest.approx(1e-4, rel=1e-12)   # 1 − (1 − β_0)
    assert diffusion.betas[1] == pytest.approx(2.0936e-3, rel=1e-4)
    assert diffusion.betas[99] == pytest.approx(0.18218, rel=1e-4)


def test_respaced_alphas_cumprod_equal_the_original_at_the_kept_steps():
    """Exactly for "100" (the facts file's claim). For any spacing within the rounding of the telescoping product:
    each factor 1 − β'_j = 1 − fl(1 − fl(r_j)), r_j = ᾱ[t_j]/ᾱ[t_{j−1}], is r_j within u(1 + 1/r_j) relative (three
    float64 roundings, the subtraction's error relative to 1 − r_j), and each product adds u, so ᾱ'_i is within
    Σ_{j≤i} u(2 + 1/r_j) of Π_j r_j = ᾱ[t_i], u = 2^-53."""
    original = np.cumprod(1.0 - linear_betas(1000))
    assert np.array_equal(GaussianDiffusion.adm("100").alphas_cumprod, original[KEPT_100])
    for sections in SECTIONS:
        diffusion = GaussianDiffusion.adm(sections)
        kept = original[diffusion.timestep_map.numpy()]
        ratios = kept / np.append(1.0, kept[:-1])
        bound = np.cumsum(UNIT_ROUNDOFF_64 * (2 + 1 / ratios))
        assert (np.abs(diffusion.alphas_cumprod / kept - 1) <= bound).all(), sections


def test_bad_spacings_and_outputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="fewer than the 2000"):
        space_timesteps(1000, "2000")
    with pytest.raises(ValueError, match="no integer stride"):
        space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError, match="out_channels = 2·in_channels"):
        GaussianDiffusion.adm("10").p_mean_variance(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), 0)


# --- against guided-diffusion's SpacedDiffusion ---------------------------------------------------------------------

def reference_diffusion(respacing: str):
    """GD's diffusion as Blended Diffusion builds it (its `create_model_and_diffusion` arguments)."""
    script_util = pytest.importorskip("guided_diffusion.script_util")
    return script_util.create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear",
                                                 timestep_respacing=respacing, rescale_timesteps=True)


@pytest.fixture(scope="module")
def pair():
    pytest.importorskip("guided_diffusion")
    return GaussianDiffusion.adm("100"), reference_diffusion("100")


@pytest.fixture
def inputs():
    """A batch over five respaced indices (0 takes no noise), x_t, the network's [ε | v] and a guidance gradient."""
    index = torch.tensor([0, 1, 50, 74, 99])
    x, output, gradient = torch.randn(5, 3, 8, 8), torch.randn(5, 6, 8, 8), torch.randn(5, 3, 8, 8)
    return index, x, output, gradient


class Stub:
    """The network: returns the fixed output and records the timesteps it was given."""

    def __init__(self, output):
        self.output, self.seen = output, []

    def __call__(self, x, timesteps, **kwargs):
        self.seen.append(timesteps)
        return self.output


def reference_mean_variance(reference, output, x, index):
    return reference.p_mean_variance(Stub(output), x, index, clip_denoised=False, model_kwargs={})


@pytest.mark.reference
@pytest.mark.parametrize("sections", SECTIONS)
def test_space_timesteps_equal_guided_diffusion(sections):
    respace = pytest.importorskip("guided_diffusion.respace")
    assert space_timesteps(1000, sections) == sorted(respace.space_timesteps(1000, sections))
    assert space_timesteps(300, "10,15,20") == sorted(respace.space_timesteps(300, "10,15,20"))


@pytest.mark.reference
@pytest.mark.precision
@pytest.mark.parametrize("sections", ["100", "50", "ddim25", "10,20", ""])
def test_tables_equal_guided_diffusion_bit_for_bit(sections):
    ours, reference = GaussianDiffusion.adm(sections), reference_diffusion(sections)
    assert ours.timestep_map.tolist() == reference.timestep_map
    for name in TABLES:
        assert getattr(ours, name).dtype == np.float64
        assert np.array_equal(getattr(ours, name), getattr(reference, name)), name
    assert np.array_equal(ours.log_betas, np.log(reference.betas))             # p_mean_variance's max_log


@pytest.mark.reference
@pytest.mark.precision
def test_model_timesteps_equal_what_guided_diffusion_gives_the_network(pair, inputs):
    ours, reference = pair
    index, x, output, _ = inputs
    stub = Stub(output)
    reference.p_mean_variance(stub, x, index, clip_denoised=False, model_kwargs={})
    assert torch.equal(ours.model_timesteps(index), stub.seen[0])
    assert ours.model_timesteps(index).tolist() == [0.0, 10.0, 505.0, 747.0, 999.0]


@pytest.mark.reference
@pytest.mark.precision
def test_q_sample_equals_guided_diffusion(pair, inputs):
    ours, reference = pair
    index, x, _, noise = inputs
    assert torch.equal(ours.q_sample(x, index, noise), reference.q_sample(x, index, noise))


@pytest.mark.reference
@pytest.mark.precision
def test_p_mean_variance_equals_guided_diffusion(pair, inputs):
    ours, reference = pair
    index, x, output, _ = inputs
    out, expected = ours.p_mean_variance(output, x, index), reference_mean_variance(reference, output, x, index)
    assert isinstance(out, MeanVariance) and torch.equal(out.eps, output[:, :3])
    for name in ("mean", "variance", "log_variance", "pred_xstart"):
        assert torch.equal(getattr(out, name), expected[name]), name


@pytest.mark.reference
@pytest.mark.precision
def test_condition_mean_and_condition_score_equal_guided_diffusion(pair, inputs):
    ours, reference = pair
    index, x, output, gradient = inputs
    out, expected = ours.p_mean_variance(output, x, index), reference_mean_variance(reference, output, x, index)
    cond_fn = Stub(gradient)
    assert torch.equal(ours.condition_mean(out, gradient), reference.condition_mean(cond_fn, expected, x, index, {}))
    guided, expected_guided = ours.condition_score(out, x, index, gradient), reference.condition_score(
        cond_fn, expected, x, index, {})
    for name in ("mean", "variance", "log_variance", "pred_xstart"):
        assert torch.equal(getattr(guided, name), expected_guided[name]), name
    assert torch.equal(cond_fn.seen[0], ours.model_timesteps(index))       # cond_fn sees original timesteps


@pytest.mark.reference
@pytest.mark.precision
@pytest.mark.parametrize("guided", [False, True])
def test_ddpm_step_equals_guided_diffusion_p_sample(pair, inputs, guided):
    """GD's p_sample draws its noise with randn_like(x) after the network's only call: the same seed injects it."""
    ours, reference = pair
    index, x, output, gradient = inputs
    torch.manual_seed(7)
    expected = reference.p_sample(Stub(output), x, index, clip_denoised=False, model_kwargs={},
                                  cond_fn=Stub(gradient) if guided else None)
    torch.manual_seed(7)
    noise = torch.randn_like(x)
    out = ours.p_mean_variance(output, x, index)
    x_prev = ours.ddpm_step(out, index, noise, mean=ours.condition_mean(out, gradient) if guided else None)
    assert torch.equal(x_prev, expected["sample"]) and torch.equal(out.pred_xstart, expected["pred_xstart"])
    assert torch.equal(x_prev[0], (ours.condition_mean(out, gradient) if guided else out.mean)[0])   # index 0


@pytest.mark.reference
@pytest.mark.precision
@pytest.mark.parametrize("eta, guided", [(0.0, False), (0.0, True), (0.5, True)])
def test_ddim_step_equals_guided_diffusion_ddim_sample(pair, inputs, eta, guided):
    ours, reference = pair
    index, x, output, gradient = inputs
    torch.manual_seed(7)
    expected = reference.ddim_sample(Stub(output), x, index, clip_denoised=False, model_kwargs={},
                                     cond_fn=Stub(gradient) if guided else None, eta=eta)
    torch.manual_seed(7)
    noise = torch.randn_like(x)
    out = ours.p_mean_variance(output, x, index)
    step_from = ours.condition_score(out, x, index, gradient) if guided else out
    assert torch.equal(ours.ddim_step(step_from, x, index, noise, eta=eta), expected["sample"])
