"""golden.precision.OneUlpOff, the third CPU that `make precision` runs the precision tests on: torch's roots,
exponentials and powers rounded the other way for about half of their results, everything else untouched."""
import numpy as np
import pytest
import torch
from golden.precision import OneUlpOff


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_ulp_off_moves_half_of_torchs_roots_by_one_ulp_and_none_of_numpys(dtype):
    values = torch.rand(10_000, generator=torch.Generator().manual_seed(0), dtype=dtype) + 0.01
    plain = values.sqrt()
    with OneUlpOff():
        moved = values.sqrt()
        numpy_roots = np.sqrt(values.numpy())
    changed = moved != plain
    assert 0.4 < changed.double().mean().item() < 0.6
    assert torch.equal(moved[changed], torch.nextafter(plain[changed], torch.tensor(float("inf"), dtype=dtype)))
    assert np.array_equal(numpy_roots, np.sqrt(values.numpy()))


def test_one_ulp_off_moves_every_spelling_of_a_function_alike_and_leaves_exact_arithmetic_alone():
    values = torch.rand(1000, generator=torch.Generator().manual_seed(1)) + 0.5
    plain_exp, plain_arithmetic = values.exp(), (values * 3 + 1) / 7
    with OneUlpOff():
        roots = values.sqrt()
        in_place = values.clone().sqrt_()
        assert torch.equal(roots, torch.sqrt(values)) and torch.equal(roots, values**0.5)
        assert torch.equal(roots, in_place)
        assert torch.equal(values.exp(), torch.exp(values)) and not torch.equal(values.exp(), plain_exp)
        assert torch.equal((values * 3 + 1) / 7, plain_arithmetic)   # IEEE products, sums, quotients: untouched
    assert not torch.equal(roots, values.sqrt())


def test_one_ulp_off_passes_infinities_and_nan_through():
    values = torch.tensor([0.0, -1.0, float("inf"), float("nan"), 2.0])
    with OneUlpOff():
        logs = values.log()
    assert logs[0] == float("-inf") and logs[1].isnan() and logs[2] == float("inf") and logs[3].isnan()


def test_one_ulp_off_keeps_gradients_flowing():
    values = torch.rand(8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    with OneUlpOff():
        values.exp().sum().backward()
    torch.testing.assert_close(values.grad, values.detach().exp())
