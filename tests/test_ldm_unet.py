"""The UNet: golden parity with diffusers' UNet2DConditionModel, the published key layout, sizes, parts."""
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    SMALL_4_LEVEL,
    assert_matches_golden,
    in_float64,
    load_golden,
    max_relative_error,
    random_model,
    run_in_float64,
)
from torch import nn

from ldm import UNetModel
from ldm.attention import multi_head_attention
from ldm.unet import timestep_embedding
from weights import presets


def check_golden_unet(name: str) -> torch.Tensor:
    """Our UNet on the fixture's inputs against diffusers' stored output, within the float32 bound of
    helpers.assert_matches_golden (our float32 error measured against the same UNet in float64, the
    reference's stored beside its output). Returns our float32 output."""
    golden = load_golden(name)
    model = random_model(UNetModel, presets.get(golden["preset"]).unet, golden["seed"])
    x, timesteps, context = golden["x"].float(), golden["timesteps"], golden["context"].float()
    with torch.no_grad():
        output = model(x, timesteps, context)
        output64 = run_in_float64(in_float64(model), x, timesteps, context)
    assert_matches_golden(golden, "output", output, output64)
    return output


@pytest.mark.precision
def test_unet_parity_tiny_fp32():
    check_golden_unet("ldm_unet_tiny")


@pytest.mark.slow
def test_unet_parity_sd15_full_fp32():
    check_golden_unet("ldm_unet_sd15")


@pytest.mark.slow
def test_unet_parity_sd21_base_full_fp32():
    check_golden_unet("ldm_unet_sd21_base")


@pytest.mark.parametrize("fixture, preset", [("ldm_unet_sd15", "sd-1.5"), ("ldm_unet_sd21_base", "sd-2.1-base"),
                                             ("ldm_unet_sd21_base", "sd-2.1")])
def test_unet_state_dict_matches_published_layout(fixture, preset):
    """Key set and shapes equal the published single-file layout (read off diffusers, see fixtures_ldm.py)."""
    published = load_golden(fixture)["published_keys"]
    with torch.device("meta"):
        model = UNetModel(presets.get(preset).unet)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(published) - set(ours)) == [] and sorted(set(ours) - set(published)) == []
    assert {k: v for k, v in ours.items() if published[k] != v} == {}
    assert len(ours) == 686


def test_unet_int_timestep_equals_tensor_of_that_timestep():
    model = random_model(UNetModel, presets.get("tiny").unet, seed=0)
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.equal(model(x, 500, context), model(x, torch.tensor([500, 500]), context))
        assert torch.equal(model(x, torch.tensor(500), context), model(x, torch.tensor([500, 500]), context))


@pytest.mark.parametrize("height, width", [(24, 40), (40, 56), (8, 72), (48, 48)])
def test_unet_keeps_shape_for_latent_sides_that_are_multiples_of_8(height, width):
    model = random_model(UNetModel, SMALL_4_LEVEL, seed=0)
    with torch.no_grad():
        output = model(torch.randn(1, 4, height, width), 10, torch.randn(1, 3, 32))
    assert output.shape == (1, 4, height, width) and torch.isfinite(output).all()


@pytest.mark.parametrize("height, width, suggestion", [(30, 44, "32x48"), (62, 64, "64x64"), (3, 64, "8x64")])
def test_unet_rejects_latent_not_divisible_by_8_and_names_a_size_that_works(height, width, suggestion):
    model = random_model(UNetModel, SMALL_4_LEVEL, seed=0)
    with pytest.raises(ValueError, match=f"{height}x{width}.*multiples of 8.*{suggestion}"):
        model(torch.randn(1, 4, height, width), 10, torch.randn(1, 3, 32))


@pytest.mark.precision
def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies():
    t = torch.tensor([0, 7, 999])
    embedding = timestep_embedding(t, 320)
    frequencies = 10000.0 ** (-torch.arange(160, dtype=torch.float64) / 160)
    expected = torch.cat([torch.cos(t[:, None] * frequencies), torch.sin(t[:, None] * frequencies)], dim=1)
    assert embedding.shape == (3, 320) and embedding.dtype == torch.float32
    torch.testing.assert_close(embedding.double(), expected, rtol=0, atol=2e-4)  # float32 args up to 999 rad
    assert torch.equal(embedding[0], torch.cat([torch.ones(160), torch.zeros(160)]))


def test_multi_head_attention_splits_heads_like_the_einsum_definition():
    q, k, v = torch.randn(2, 5, 12), torch.randn(2, 7, 12), torch.randn(2, 7, 12)
    heads, d = 3, 4
    split = [t.reshape(2, -1, heads, d) for t in (q, k, v)]
    weights = torch.einsum("bnhd,bmhd->bhnm", split[0], split[1]).div(d**0.5).softmax(-1)
    expected = torch.einsum("bhnm,bmhd->bnhd", weights, split[2]).reshape(2, 5, 12)
    torch.testing.assert_close(multi_head_attention(q, k, v, heads), expected)


def test_upcast_attention_runs_the_attention_in_float32(monkeypatch):
    seen = []

    def spy(q, k, v, **kwargs):
        seen.append(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, **kwargs)

    monkeypatch.setattr("ldm.attention.F", type("F", (), {"scaled_dot_product_attention": staticmethod(spy)}))
    q = torch.randn(1, 4, 8, dtype=torch.bfloat16)
    out = multi_head_attention(q, q, q, heads=2, upcast=True)
    assert seen == [torch.float32] and out.dtype == torch.bfloat16
    multi_head_attention(q, q, q, heads=2)
    assert seen == [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_unet_tiny_runs_in_half_precision_close_to_fp32(dtype):
    """A CPU smoke test of the low-precision path against the fp32 diffusers output.

    Every activation is rounded to 2^-8 (bf16) or 2^-11 (fp16) relative, over ~20 layers; measured here
    (x86 CPU, torch 2.13): 1.3e-2 (bf16) and 1.7e-3 (fp16). The bounds are about twice that: tight enough
    to catch the timestep embedding computed in bf16 (t = 999 rounds to 1000), which measures 3.9e-2.
    The full-size comparison with diffusers in the same precision is in test_ldm_gpu.py."""
    golden = load_golden("ldm_unet_tiny")
    model = random_model(UNetModel, presets.get("tiny").unet, golden["seed"]).to(dtype)
    with torch.no_grad():
        output = model(golden["x"].float(), golden["timesteps"], golden["context"].float())
    assert output.dtype == dtype
    bound = {torch.bfloat16: 2.5e-2, torch.float16: 4e-3}[dtype]
    assert max_relative_error(output, golden["output"]) <= bound


@pytest.mark.parametrize("preset", ["tiny", "sd-1.5", "sd-2.1-base"])
def test_unet_norm_eps_follow_ldm(preset):
    """GroupNorm eps 1e-5 in ResBlocks and `out.0`, 1e-6 in SpatialTransformers; LayerNorm eps 1e-5.
    (An eps off by 10x moves the tiny golden output by only ~2e-6..1.5e-5, so parity alone cannot see it.)"""
    with torch.device("meta"):
        unet = presets.get(preset).build_unet()
    found = {name: m.eps for name, m in unet.named_modules() if isinstance(m, nn.GroupNorm)}
    assert {n: e for n, e in found.items() if e != (1e-6 if n.endswith(".norm") else 1e-5)} == {}
    assert any(n.endswith(".1.norm") for n in found) and "out.0" in found
    assert {n: m.eps for n, m in unet.named_modules() if isinstance(m, nn.LayerNorm) and m.eps != 1e-5} == {}
