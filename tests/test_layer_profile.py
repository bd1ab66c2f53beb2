"""benchmarks/layer_profile.py puts each operator (torch) and each node (OpenVINO) in the row of what it computes."""
import pytest
import torch
from helpers import SMALL_4_LEVEL, random_model

import fast
from benchmarks.layer_profile import ROWS, openvino_row, profile_ours, torch_row
from ldm import UNetModel
from ldm.attention import CrossAttention


@pytest.mark.parametrize("fast_path", [False, True], ids=["plain", "fast"])
def test_every_operator_of_a_small_unet_lands_in_a_row_of_what_it_computes(fast_path):
    model = random_model(UNetModel, SMALL_4_LEVEL, seed=0).eval()
    if fast_path:
        fast.optimize(model, device="cpu")
    inputs = (torch.randn(2, 4, 16, 16), torch.tensor([10, 10]), torch.randn(2, 5, 32))
    rows, ops, seconds = profile_ours(model, inputs, calls=1)
    assert set(rows) <= set(ROWS) and seconds > 0
    for row in ("convolution 3×3", "convolution 1×1", "linear", "attention core", "normalisation", "elementwise"):
        assert rows[row] > 0, row
    assert rows["other"] < 0.05 * sum(rows.values())
    assert any("scaled_dot_product" in op for row, op in ops if row == "attention core")
    assert not any("convolution" in op for row, op in ops if not row.startswith("convolution"))


def test_torch_operators_take_the_row_of_their_module():
    conv3, conv1 = torch.nn.Conv2d(4, 4, 3), torch.nn.Conv2d(4, 4, 1)
    attention = CrossAttention(8, heads=2, head_dim=4)
    assert torch_row("aten::addmm", conv3) == "convolution 3×3"          # a convolution run as a matrix product
    assert torch_row("aten::addmm", conv1) == "convolution 1×1"
    assert torch_row("aten::addmm", torch.nn.Linear(2, 2)) == "linear"
    assert torch_row("aten::mm", attention) == "attention core"          # q kᵀ inside an attention module
    assert torch_row("aten::addmm", torch.nn.Module()) == "linear"       # GEGLU's own F.linear
    assert torch_row("mkldnn::_convolution_pointwise", conv3) == "convolution 3×3"
    assert torch_row("aten::native_group_norm", None) == "normalisation"
    assert torch_row("aten::silu_", None) == "elementwise"
    assert torch_row("aten::copy_", None) == "layout"
    assert torch_row("aten::lerp", None) == "other"


def test_openvino_nodes_take_the_row_of_their_type_and_module():
    conv3, linear = torch.nn.Conv2d(4, 4, 3), torch.nn.Linear(2, 2)
    assert openvino_row("Convolution", conv3, "input_blocks.1.0.in_layers.2") == "convolution 3×3"
    assert openvino_row("FullyConnected", linear, "input_blocks.1.1.transformer_blocks.0.attn1.to_q") == "linear"
    assert openvino_row("Subgraph", None, "input_blocks.1.1.transformer_blocks.0.attn1") == "attention core"
    assert openvino_row("Subgraph", None, "input_blocks.1.0") == "elementwise"
    assert openvino_row("MVN", None, "") == "normalisation"
    assert openvino_row("Reorder", None, "input_blocks.1.0.in_layers.2") == "layout"
    assert openvino_row("MulAdd", None, "") == "elementwise"
