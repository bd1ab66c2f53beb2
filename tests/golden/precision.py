"""How far apart two float32 results of the same computation may be: the bound every stored golden is held to.

A stored golden g was computed in float32 by a reference implementation on some machine; the test
computes o in float32 with ours on this machine. float32 kernels differ between CPUs (AVX2 on one,
AVX-512 on another: other vector widths, other summation orders, other 1-ulp approximations of exp,
pow and erf), so o and g agree only up to rounding, and how much rounding matters depends on the
computation: x̂0 = (x − √(1−ᾱ)·ε)/√ᾱ multiplies it by 1/√ᾱ ≈ 15 at t = 981, a 24-block transformer
by far more. So no single tolerance is right, and the bound is derived instead.

Both results approximate the exact value f of the same function of the same inputs (the inputs are
stored, and are exactly representable in float32). By the triangle inequality

    |o − g| ≤ |o − f| + |f − g|.

Each term is the float32 error of one implementation on one machine, and each is measured as the
distance to the same computation done in float64 (whose own rounding is 2^29 times smaller):

    e_ours = max|o − o64|   measured by the test, here, now;
    e_ref  = max|g − g64|   measured by tests/golden/make_fixtures.py on the machine that made g,
                            stored beside g as "<name>.float32_error".

These measured errors carry the conditioning of the computation with them: a network whose output
amplifies rounding shows a larger e. The bound is

    |o − g| ≤ 2·(e_ours + e_ref) + u·max|g|,     u = 2^-24 (float32's unit roundoff).

The factor 2 covers what the two float64 runs cannot see: the parts that both precisions compute in
float32 (the schedule's ᾱ and its square roots, the sinusoidal timestep embedding, every random draw),
which each machine rounds in its own way, and the first-order nature of e as an error estimate. The
last term is the rounding of the stored number itself. A wrong weight, a transposed projection or a
misplaced normalisation moves o by orders of magnitude more than this, as the mutation checks in the
tests' docstrings show.

Random draws: a float64 run must see the float32 run's noise, so `float32_draws()` makes torch.randn
draw in float32 and cast (a float64 draw from the same generator gives other numbers altogether).
"""
from contextlib import contextmanager

import torch

UNIT_ROUNDOFF = 2.0 ** -24      # float32: |fl(x) − x| ≤ u·|x| for a correctly rounded operation
ERROR_SUFFIX = ".float32_error"


@contextmanager
def float32_draws():
    """Within the block, torch.randn draws in float32 and casts to the dtype asked for."""
    randn = torch.randn

    def randn_drawn_in_float32(*args, dtype=None, **kwargs):
        dtype = dtype or torch.get_default_dtype()
        return randn(*args, dtype=torch.float32, **kwargs).to(dtype)

    torch.randn = randn_drawn_in_float32
    try:
        yield
    finally:
        torch.randn = randn


def float32_error(value32: torch.Tensor, value64: torch.Tensor) -> float:
    """max|v32 − v64|: the measured float32 error of a result."""
    return (value32.double() - value64.double()).abs().max().item()


def golden_bound(golden: torch.Tensor, reference_error: float, ours_error: float) -> float:
    """2·(e_ours + e_ref) + u·max|g| (module docstring)."""
    return 2 * (ours_error + reference_error) + UNIT_ROUNDOFF * golden.double().abs().max().item()


def add_float32_errors(values32: dict, values64: dict) -> dict:
    """values32 plus "<name>.float32_error" for each floating tensor that the float64 run computed differently.

    Inputs come out of both runs identical (they are drawn or stored before any arithmetic), so only
    the results get an error; a result that is exact in float32 gets none and is compared exactly.
    """
    out = dict(values32)
    for name, value in values32.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            other = values64[name]
            if not torch.equal(value.double(), other.double()):
                out[name + ERROR_SUFFIX] = torch.tensor(float32_error(value, other), dtype=torch.float64)
    return out
