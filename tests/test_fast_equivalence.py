"""The fast path (`fast.optimize`) computes the plain networks' maps, with the plain networks' weights.

How close is close enough. A fast layer computes the same sums as the plain one in another order
(a convolution as a matrix product, a feed-forward in chunks), so in float32 the two outputs differ
by rounding, and how much depends on how the network amplifies rounding. The bound is derived as
for the stored goldens (tests/golden/precision.py): both outputs approximate the exact value f, so

    |fast − plain| ≤ |fast − f| + |f − plain| ≤ 2·(e_fast + e_plain) + u·max|plain|,

where e = max|x − x64| is each path's float32 error measured here against its own float64 run, and
u = 2^-24. A wrong map (a dropped residual, a transposed weight, a chunk left out) moves the output
by orders of magnitude more: the mutation test below shows one.
"""
import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from golden.precision import golden_bound
from helpers import SMALL_4_LEVEL, SMALL_SDXL, TINY, TINY_SD2, max_relative_error, random_model

import fast
import weights
from clip import TextEncoder
from fast import transform
from fast.transform import (
    ChunkedFeedForward,
    InPlaceResnetBlock,
    MatmulConv2d,
    PackedConv2d,
    SplitGEGLU,
    conv_as_matmul,
    onednn_can_prepack,
)
from ldm import AutoencoderConfig, AutoencoderKL, UNetModel
from ldm.attention import FeedForward
from ldm.autoencoder import ResnetBlock

ROOT = Path(__file__).resolve().parent.parent
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
SMALL_VAE = AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)
needs_prepack = pytest.mark.skipif(not onednn_can_prepack(), reason="this torch build has no oneDNN weight packing")


def plain_and_fast(cls, config, device, seed=0, prepack=True):
    plain = random_model(cls, config, seed=seed).to(device)
    return plain, fast.optimize(copy.deepcopy(plain), device=device, prepack=prepack)


def assert_same_map(plain_fn, fast_fn, plain, quick, inputs):
    """|fast − plain| within 2·(e_fast + e_plain) + u·max|plain| (module docstring), both run on `inputs`."""
    with torch.no_grad():
        plain32, fast32 = plain_fn(plain, *inputs), fast_fn(quick, *inputs)
        doubled = [x.double() if x.is_floating_point() else x for x in inputs]
        plain64, fast64 = plain_fn(copy.deepcopy(plain).double(), *doubled), fast_fn(copy.deepcopy(quick).double(),
                                                                                  *doubled)
    e_plain = (plain32.double() - plain64).abs().max().item()
    e_fast = (fast32.double() - fast64).abs().max().item()
    difference = (fast32.double() - plain32.double()).abs().max().item()
    assert difference <= golden_bound(plain32, e_plain, e_fast), (difference, e_plain, e_fast)
    return difference


def unet_call(model, x, t, context, y=None):
    return model(x, t, context, y)


# --- the whole networks ---------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 2])
def test_fast_unet_computes_the_plain_map_sd1(device, batch):
    plain, quick = plain_and_fast(UNetModel, SMALL_4_LEVEL, device)
    x, context = torch.randn(batch, 4, 16, 16, device=device), torch.randn(batch, 5, 32, device=device)
    assert_same_map(unet_call, unet_call, plain, quick, (x, torch.tensor(10, device=device), context))


@pytest.mark.parametrize("device", DEVICES)
def test_fast_unet_computes_the_plain_map_sd2_linear_projections(device):
    plain, quick = plain_and_fast(UNetModel, TINY_SD2.unet, device)
    x = torch.randn(2, 4, 16, 16, device=device)
    context = torch.randn(2, 7, TINY_SD2.unet.context_dim, device=device)
    assert_same_map(unet_call, unet_call, plain, quick, (x, torch.tensor(500, device=device), context))


@pytest.mark.parametrize("device", DEVICES)
def test_fast_unet_computes_the_plain_map_sdxl_vector_conditioning(device):
    plain, quick = plain_and_fast(UNetModel, SMALL_SDXL, device)
    x, context = torch.randn(2, 4, 16, 16, device=device), torch.randn(2, 6, SMALL_SDXL.context_dim, device=device)
    y = torch.randn(2, SMALL_SDXL.adm_in_channels, device=device)
    assert_same_map(unet_call, unet_call, plain, quick, (x, torch.tensor(999, device=device), context, y))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 2])
def test_fast_autoencoder_computes_the_plain_encode_and_decode(device, batch):
    plain, quick = plain_and_fast(AutoencoderKL, SMALL_VAE, device)
    image, z = torch.rand(batch, 3, 24, 32, device=device) * 2 - 1, torch.randn(batch, 4, 6, 6, device=device)
    assert_same_map(lambda m, x: m.encode(x).mean, lambda m, x: m.encode(x).mean, plain, quick, (image,))
    assert_same_map(lambda m, z: m.decode(z), lambda m, z: m.decode(z), plain, quick, (z,))


def test_fast_path_at_the_sizes_where_the_matmul_convolution_runs(monkeypatch):
    # 32 channels at 2×2, batch 2: O = 32 ≥ 2·B·H·W = 16 in the deepest level, so the matrix product runs there
    # (without the packed convolutions, which would take the 3×3 ones).
    calls = []
    monkeypatch.setattr(transform, "conv_as_matmul", lambda *args: calls.append(args) or conv_as_matmul(*args))
    plain, quick = plain_and_fast(UNetModel, SMALL_4_LEVEL, "cpu", prepack=False)
    x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32)
    assert_same_map(unet_call, unet_call, plain, quick, (x, torch.tensor(10), context))
    assert calls


@needs_prepack
def test_fast_unet_with_packed_convolutions_computes_the_plain_map(reorders):
    # Batch 2 at 16×16 through four levels: B·H·W ≤ 4·O from the second level down, so weights get packed.
    plain, quick = plain_and_fast(UNetModel, SMALL_4_LEVEL, "cpu")
    x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32)
    assert_same_map(unet_call, unet_call, plain, quick, (x, torch.tensor(10), context))
    assert reorders


def test_the_bound_catches_a_wrong_map():
    # Mutation check: one weight of the fast UNet 0.1% off is far outside the bound.
    plain, quick = plain_and_fast(UNetModel, SMALL_4_LEVEL, "cpu")
    with torch.no_grad():
        quick.middle_block[0].in_layers[2].weight.mul_(1.001)
    x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32)
    with pytest.raises(AssertionError):
        assert_same_map(unet_call, unet_call, plain, quick, (x, torch.tensor(10), context))


# --- the weights stay the weights -----------------------------------------------------------------

@pytest.mark.parametrize("build", [lambda: UNetModel(SMALL_4_LEVEL), lambda: AutoencoderKL(SMALL_VAE),
                                   lambda: TextEncoder(TINY.text)], ids=["unet", "vae", "text"])
def test_optimize_keeps_every_key_shape_value_and_tensor(build):
    model = weights.fill_random_(build(), seed=0)
    before = {name: (tensor.data_ptr(), tensor.clone()) for name, tensor in model.state_dict().items()}
    fast.optimize(model, device="cpu")
    after = model.state_dict()
    assert list(after) == list(before)
    for name, (pointer, value) in before.items():
        assert after[name].data_ptr() == pointer and torch.equal(after[name], value), name
    assert fast.is_optimized(model)
    plain = build()
    plain.load_state_dict(after)                    # the plain class takes the fast model's state dict, strictly


def test_optimize_swaps_only_exact_plain_classes_and_twice_changes_nothing():
    model = fast.optimize(random_model(UNetModel, SMALL_4_LEVEL, seed=0), device="cpu")
    classes = [type(m) for m in model.modules()]
    assert {MatmulConv2d, SplitGEGLU, ChunkedFeedForward} <= set(classes)   # the 1×1 convolutions are matmul ones
    assert PackedConv2d in set(classes) or not onednn_can_prepack()         # the 3×3 ones, strided too, packed
    fast.optimize(model, device="cpu")
    assert [type(m) for m in model.modules()] == classes
    unpacked = fast.optimize(random_model(UNetModel, SMALL_4_LEVEL, seed=0), device="cpu", prepack=False)
    assert PackedConv2d not in {type(m) for m in unpacked.modules()}
    strided = [m for m in unpacked.modules() if type(m) is torch.nn.Conv2d]
    assert strided and all(m.stride == (2, 2) for m in strided)   # without packing the downsampling ones stay


def test_on_a_gpu_only_layout_and_in_place_swaps_apply():
    # The CPU's matmul convolutions, split GEGLU and chunked feed-forward are not applied for another device.
    swaps = transform.swaps_for(torch.device("cuda"))
    assert set(swaps.values()).isdisjoint({SplitGEGLU, ChunkedFeedForward, MatmulConv2d, PackedConv2d})
    assert swaps[UNetModel] is transform.ChannelsLastUNet


def test_weights_load_gives_the_fast_path_by_default_and_the_plain_networks_with_fast_false():
    quick, plain = weights.load("tiny"), weights.load("tiny", fast=False)
    assert fast.is_optimized(quick.unet) and fast.is_optimized(quick.vae) and fast.is_optimized(quick.text_encoder)
    assert not any(fast.is_optimized(m) for m in (plain.unet, plain.vae, plain.text_encoder))
    assert not {type(m) for m in plain.unet.modules()} & fast.OPTIMIZED_CLASSES
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, TINY.unet.context_dim)
    assert_same_map(unet_call, unet_call, plain.unet, quick.unet, (x, torch.tensor(10), context))


# --- the layers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("weight_layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("input_layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_as_matmul_is_the_convolution_sum(kernel, weight_layout, input_layout, bias):
    generator = torch.Generator().manual_seed(kernel)
    x = torch.randn(2, 6, 5, 7, generator=generator, dtype=torch.float64).contiguous(memory_format=input_layout)
    weight = torch.randn(4, 6, kernel, kernel, generator=generator, dtype=torch.float64)
    b = torch.randn(4, generator=generator, dtype=torch.float64) if bias else None
    expected = F.conv2d(x, weight, b, padding=kernel // 2)
    result = conv_as_matmul(x, weight.contiguous(memory_format=weight_layout), b)
    assert result.shape == expected.shape == (2, 4, 5, 7)
    assert max_relative_error(result, expected) < 1e-12     # float64: the same sum, another order
    assert result.is_contiguous(memory_format=torch.channels_last)


def test_conv_as_matmul_pads_with_zeros_at_every_border():
    # A one-hot weight at the kernel's top-left reads x shifted down-right by one: zeros enter at the top and left.
    x = torch.arange(1.0, 13.0).reshape(1, 1, 3, 4)
    weight = torch.zeros(1, 1, 3, 3)
    weight[..., 0, 0] = 1
    expected = torch.zeros(1, 1, 3, 4)
    expected[..., 1:, 1:] = x[..., :-1, :-1]
    assert torch.equal(conv_as_matmul(x, weight, None), expected)


def test_matmul_conv2d_runs_the_product_only_when_out_channels_reach_the_positions(monkeypatch):
    calls = []
    monkeypatch.setattr(transform, "conv_as_matmul", lambda *args: calls.append(args) or conv_as_matmul(*args))
    layer = fast.optimize(torch.nn.Conv2d(8, 32, 3, padding=1), device="cpu", prepack=False)
    assert type(layer) is MatmulConv2d
    layer(torch.randn(1, 8, 4, 4))            # O = 32 >= 2·B·H·W = 32: the matmul
    assert len(calls) == 1
    layer(torch.randn(2, 8, 4, 4))            # O = 32 < 2 · 32 positions: oneDNN's convolution
    assert len(calls) == 1
    strided = fast.optimize(torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), device="cpu", prepack=False)
    assert type(strided) is torch.nn.Conv2d   # not a same-size convolution: never swapped


@pytest.fixture
def reorders(monkeypatch):
    """The input shapes oneDNN's weight packing is called with, in order."""
    shapes = []
    reorder = torch._C._nn.mkldnn_reorder_conv2d_weight

    def counted(*args):
        shapes.append(tuple(args[-1]))
        return reorder(*args)
    monkeypatch.setattr(torch._C._nn, "mkldnn_reorder_conv2d_weight", counted)
    return shapes


@needs_prepack
@pytest.mark.parametrize("stride", [1, 2])
def test_packed_conv2d_computes_the_convolution(stride, reorders):
    plain = weights.fill_random_(torch.nn.Conv2d(16, 32, 3, stride=stride, padding=1), seed=stride)
    layer = fast.optimize(copy.deepcopy(plain), device="cpu")
    assert type(layer) is PackedConv2d
    x = torch.randn(2, 16, 5, 6)
    assert_same_map(lambda m, x: m(x), lambda m, x: m(x), plain, layer, (x,))
    assert reorders == [(2, 16, 5, 6)]                 # float32 ran packed (float64, for the bound, did not)


@needs_prepack
def test_packed_conv2d_packs_once_per_input_shape_and_again_when_the_weight_changes(reorders):
    layer = fast.optimize(weights.fill_random_(torch.nn.Conv2d(8, 32, 3, padding=1), seed=0), device="cpu")
    x, wider = torch.randn(2, 8, 4, 4), torch.randn(1, 8, 4, 5)
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x), first) and reorders == [(2, 8, 4, 4)]        # packed once, reused
        layer(wider)
        assert reorders == [(2, 8, 4, 4), (1, 8, 4, 5)]                          # a new shape: packed for it
        layer.weight.mul_(2)                                                      # changed in place
        doubled = layer(wider)
    assert len(reorders) == 3
    expected = F.conv2d(wider.double(), layer.weight.double(), layer.bias.double(), padding=1)
    assert max_relative_error(doubled, expected) < 1e-5        # the new weight, not the packed old one


@needs_prepack
def test_packed_conv2d_leaves_autograd_float64_and_many_positions_to_the_plain_convolution(reorders):
    layer = fast.optimize(weights.fill_random_(torch.nn.Conv2d(8, 4, 3, padding=1), seed=0), device="cpu")
    x = torch.randn(1, 8, 3, 3, requires_grad=True)
    layer(x).sum().backward()                          # autograd: oneDNN's packed kernel has no backward
    assert x.grad is not None and layer.weight.grad is not None
    with torch.no_grad():
        layer.double()(torch.randn(1, 8, 3, 3, dtype=torch.float64))   # float64
        layer.float()(torch.randn(1, 8, 5, 5))        # B·H·W = 25 > 4·O = 16: too many positions a channel
        assert reorders == []
        layer(torch.randn(1, 8, 4, 4))                 # 16 ≤ 16: packed
    assert reorders == [(1, 8, 4, 4)]


def test_chunked_feed_forward_equals_one_pass(monkeypatch):
    ff = weights.fill_random_(FeedForward(16), seed=3).double()
    x = torch.randn(2, 37, 16, dtype=torch.float64)
    whole = ff(x)
    fast.optimize(ff, device="cpu")
    monkeypatch.setattr(ChunkedFeedForward, "chunk_size", 10)   # 74 rows -> 8 chunks, the last one short
    chunked = ff(x)
    assert chunked.shape == x.shape
    assert max_relative_error(chunked, whole) < 1e-12           # float64: the same products, in another grouping


def has_nhwc_strides(t: torch.Tensor) -> bool:
    """The exact strides of a channels-last tensor, the batch stride too (is_contiguous ignores it at B = 1;
    oneDNN and the norms do not, and fall back to NCHW)."""
    _, channels, height, width = t.shape
    return t.stride() == (height * width * channels, 1, width * channels, channels)


def test_fast_autoencoder_keeps_nhwc_through_attention_at_batch_one_and_returns_nchw():
    model = fast.optimize(random_model(AutoencoderKL, SMALL_VAE, seed=0), device="cpu")
    layouts = []
    for module in model.decoder.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.register_forward_hook(lambda m, args, out: layouts.append(has_nhwc_strides(args[0])))
    with torch.no_grad():
        image = model.decode(torch.randn(1, 4, 6, 6))
    assert image.is_contiguous()
    assert layouts and all(layouts)   # every norm, those after the single-head attention too, sees NHWC strides


def test_fast_unet_returns_nchw_for_either_input_layout():
    model = fast.optimize(random_model(UNetModel, SMALL_4_LEVEL, seed=0), device="cpu")
    x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32)
    with torch.no_grad():
        out = model(x, 10, context)
        out_nhwc = model(x.contiguous(memory_format=torch.channels_last), 10, context)
    assert out.is_contiguous() and out_nhwc.is_contiguous() and torch.equal(out, out_nhwc)


def test_in_place_layers_keep_the_gradients_exact():
    # gradcheck compares autograd's Jacobian with finite differences, in float64.
    block = fast.optimize(weights.fill_random_(ResnetBlock(32, 64), seed=1).double(), device="cpu")
    assert type(block) is InPlaceResnetBlock
    x = torch.randn(1, 32, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))
    geglu = fast.optimize(weights.fill_random_(FeedForward(8), seed=2).double(), device="cpu")
    assert torch.autograd.gradcheck(geglu, (torch.randn(3, 8, dtype=torch.float64, requires_grad=True),))


# --- ldm/ is the plain reference -------------------------------------------------------------------

SPEED_CODE = {
    "a device branch": r"\.device\.type|\.is_cuda|\"cuda\"|'cuda'|\"cpu\"|'cpu'",
    "a memory-layout choice": r"channels_last|memory_format",
    "an in-place update": r"inplace=True|\w\s*[-+*/]=\s*[^=]|\.(add|mul|sub|div|clamp|copy)_\(",
    "chunking for speed": r"chunk_size|\.split\(",
}


@pytest.mark.parametrize("path", sorted((ROOT / "ldm").glob("*.py")), ids=lambda p: p.name)
def test_ldm_networks_have_no_device_branch_and_no_speed_code(path):
    if path.name == "wordpiece.py":   # the LDM's tokenizer: list building, no tensors
        return
    code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
    found = {what: re.findall(pattern, code) for what, pattern in SPEED_CODE.items() if re.search(pattern, code)}
    assert found == {}, f"{path.name} holds {found}; speed belongs in fast/transform.py"


@needs_prepack
def test_packing_bytes_counts_the_packed_layers_until_they_have_packed():
    model = fast.optimize(random_model(UNetModel, SMALL_4_LEVEL, seed=0), device="cpu")
    layers = [m for m in model.modules() if type(m) is PackedConv2d]
    assert fast.packing_bytes(model) == sum(4 * layer.weight.numel() for layer in layers) > 0
    with torch.no_grad():
        model(torch.randn(2, 4, 16, 16), 10, torch.randn(2, 5, 32))
    packed_now = [layer for layer in layers if layer in transform.PACKED]
    assert packed_now and fast.packing_bytes(model) == sum(4 * m.weight.numel() for m in layers if m not in packed_now)
    assert fast.packing_bytes(fast.optimize(random_model(UNetModel, SMALL_4_LEVEL, seed=0), device="cpu",
                                            prepack=False)) == 0
