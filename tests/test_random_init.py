"""The deterministic random weights that stand in for checkpoints in the golden tests."""
import pytest
import torch
from torch import nn

from weights import fill_random_, random_state_dict, random_tensor


def test_random_tensor_depends_only_on_seed_name_and_shape():
    a = random_tensor("input_blocks.1.0.in_layers.2.weight", (320, 320, 3, 3), seed=0)
    assert torch.equal(a, random_tensor("input_blocks.1.0.in_layers.2.weight", (320, 320, 3, 3), seed=0))
    assert not torch.equal(a, random_tensor("input_blocks.1.0.in_layers.2.weight", (320, 320, 3, 3), seed=1))
    assert not torch.equal(a, random_tensor("input_blocks.2.0.in_layers.2.weight", (320, 320, 3, 3), seed=0))


def test_random_tensor_values_are_pinned_across_machines():
    """Pinned on 2026-11-22 (torch 2.13.0, x86-64): if this fails, torch's CPU generator changed, and so did
    every golden weight; regenerate the fixtures with tests/golden/make_fixtures.py."""
    value = random_tensor("time_embed.0.weight", (4, 3), seed=0)
    expected = torch.tensor([[-0.3627, 0.1383, -0.2309], [0.4221, -0.5102, -0.6527],
                             [-0.2522, -0.0895, -0.2453], [-0.2955, -0.2659, 0.4397]])
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", [(512, 256), (64, 32, 3, 3)])
def test_matrices_have_variance_one_over_fan_in(shape):
    value = random_tensor("some.weight", shape)
    fan_in = value.numel() // shape[0]
    assert value.var().item() * fan_in == pytest.approx(1.0, rel=0.05)
    assert abs(value.mean().item()) < 5 / (fan_in * value.numel()) ** 0.5  # five standard errors


def test_norm_weights_sit_near_one_and_biases_near_zero():
    weight, bias = random_tensor("norm.weight", (4096,)), random_tensor("norm.bias", (4096,))
    assert weight.mean().item() == pytest.approx(1.0, abs=0.01) and weight.std().item() == pytest.approx(0.1, rel=0.05)
    assert bias.mean().item() == pytest.approx(0.0, abs=0.01) and bias.std().item() == pytest.approx(0.1, rel=0.05)


def test_fill_random_sets_every_parameter_independently_of_module_order():
    first = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16))
    fill_random_(first, seed=3)
    expected = random_state_dict({k: v.shape for k, v in first.state_dict().items()}, seed=3)
    for name, value in first.state_dict().items():
        assert torch.equal(value, expected[name]), name
