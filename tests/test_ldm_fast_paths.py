"""The CPU fast paths of ldm/ compute the same maps as the plain layers they replace.

conv_as_matmul is y = b + Σ W·x_pad written as patches @ Wᵀ; the feed-forward in chunks of rows is
the feed-forward; channels-last activations and in-place residuals change no value and no gradient.
"""
import pytest
import torch
import torch.nn.functional as F
from helpers import SMALL_4_LEVEL, max_relative_error, random_model

from ldm import AutoencoderConfig, AutoencoderKL, UNetModel, conv
from ldm.attention import FeedForward
from ldm.conv import Conv2d, conv_as_matmul
from ldm.unet import ResBlock
from weights import fill_random_


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
    assert max_relative_error(result, expected) < 1e-12
    assert result.is_contiguous(memory_format=torch.channels_last)


def test_conv_as_matmul_pads_with_zeros_at_every_border():
    # A one-hot weight at the kernel's top-left reads x shifted down-right by one: zeros enter at the top and left.
    x = torch.arange(1.0, 13.0).reshape(1, 1, 3, 4)
    weight = torch.zeros(1, 1, 3, 3)
    weight[..., 0, 0] = 1
    expected = torch.zeros(1, 1, 3, 4)
    expected[..., 1:, 1:] = x[..., :-1, :-1]
    assert torch.equal(conv_as_matmul(x, weight, None), expected)


def test_conv2d_uses_the_matmul_only_when_out_channels_reach_the_positions(monkeypatch):
    calls = []
    monkeypatch.setattr(conv, "conv_as_matmul", lambda *args: calls.append(args) or conv_as_matmul(*args))
    layer = Conv2d(8, 16, 3, padding=1)
    layer(torch.randn(1, 8, 4, 4))            # O = 16 >= B·H·W = 16: the matmul
    assert len(calls) == 1
    layer(torch.randn(2, 8, 4, 4))            # O = 16 < 32 positions: oneDNN's convolution
    assert len(calls) == 1
    Conv2d(8, 16, 3, stride=2, padding=1)(torch.randn(1, 8, 2, 2))   # strided: never
    assert len(calls) == 1


def test_conv2d_has_the_keys_and_output_of_nn_conv2d():
    plain = torch.nn.Conv2d(32, 64, 3, padding=1)
    ours = Conv2d(32, 64, 3, padding=1)
    assert list(ours.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(1, 32, 4, 4)
    assert max_relative_error(ours(x), plain(x)) < 1e-5


def test_feed_forward_in_chunks_of_rows_equals_one_pass(monkeypatch):
    ff = fill_random_(FeedForward(16), seed=3)
    x = torch.randn(2, 37, 16)
    whole = ff(x)
    monkeypatch.setattr(FeedForward, "chunk_size", 10)   # 74 rows -> 8 chunks, the last one short
    chunked = ff(x)
    assert chunked.shape == x.shape
    assert max_relative_error(chunked, whole) < 1e-6


def test_unet_gives_the_same_output_for_either_input_layout_and_returns_nchw():
    model = random_model(UNetModel, SMALL_4_LEVEL, seed=0)
    x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32)
    with torch.no_grad():
        plain = model(x, 10, context)
        channels_last = model(x.contiguous(memory_format=torch.channels_last), 10, context)
    assert plain.is_contiguous() and channels_last.is_contiguous()
    assert torch.equal(plain, channels_last)


def has_nhwc_strides(t: torch.Tensor) -> bool:
    """The exact strides of a channels-last tensor, the batch stride too (is_contiguous ignores it at B = 1;
    oneDNN and the norms do not, and fall back to NCHW)."""
    _, channels, height, width = t.shape
    return t.stride() == (height * width * channels, 1, width * channels, channels)


def test_vae_returns_nchw_and_batch_one_keeps_the_channels_last_layout_through_attention():
    config = AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)
    model = random_model(AutoencoderKL, config, seed=0)
    layouts = []
    for module in model.decoder.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.register_forward_hook(lambda m, args, out: layouts.append(has_nhwc_strides(args[0])))
    with torch.no_grad():
        image = model.decode(torch.randn(1, 4, 6, 6))
    assert image.is_contiguous()
    # Every norm in the decoder, including those after the single-head attention, sees NHWC strides.
    assert layouts and all(layouts)


def test_in_place_residuals_keep_the_gradients_exact():
    # gradcheck compares autograd's Jacobian with finite differences, in float64.
    block = fill_random_(ResBlock(32, 16, 64), seed=1).double()
    x, emb = torch.randn(1, 32, 3, 3, dtype=torch.float64), torch.randn(1, 16, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: block(x, emb), (x.requires_grad_(),))
    vae = random_model(AutoencoderKL, AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1), seed=0).double()
    z = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(vae.decode, (z,))
