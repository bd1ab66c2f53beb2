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
import functools
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


# --- torch's rounding, moved on purpose ----------------------------------------------------------------------------
#
# A bit-for-bit claim holds on every CPU only when both sides run the same operations in the same library: the
# last bit of a square root or an exponential is the library's and the CPU's choice (torch 2.13's float32 sqrt is
# one ulp off the correctly rounded value for about a fifth of inputs on an AMD EPYC, and exact on an Intel Xeon;
# numpy's is exact on both). A test that compares a torch root with a numpy one passes on the Xeon and fails on the
# EPYC. OneUlpOff makes every machine behave like a third CPU, whose torch rounds these functions the other way for
# about half of their results, so that such a test fails wherever it runs.

def _moved_one_ulp(result: torch.Tensor) -> torch.Tensor:
    """result with every element whose last significand bit is 1 moved one ulp up (towards +∞)."""
    bits = result.detach().contiguous().view(torch.int32 if result.dtype == torch.float32 else torch.int64)
    odd = (bits & 1).bool() & result.detach().isfinite()
    return torch.where(odd, torch.nextafter(result.detach(), torch.full_like(result.detach(), float("inf"))),
                       result.detach())


class OneUlpOff:
    """Within the block, torch's square roots, exponentials, logarithms, powers and trigonometric and hyperbolic
    functions of float32 and float64 tensors return a result one ulp off for about half of their elements.

    Both sides of a bit-for-bit claim that run the same torch operations see the same moved results and still agree;
    a side that computes one of these in numpy or Python instead does not. Each function is replaced, under
    every spelling (torch.sqrt, Tensor.sqrt, Tensor.sqrt_, `**`), by a wrapper for the duration of the block, so
    nothing else pays for it. Functions reached only inside other kernels (a GroupNorm's rsqrt, a softmax's exp)
    are not moved: both sides run those kernels alike. Nested blocks move nothing further: a moved result's last
    significand bit is 0.
    """
    NAMES = ("sqrt", "rsqrt", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "pow", "float_power",
             "sin", "cos", "tan", "tanh", "sigmoid", "erf", "erfinv", "atan", "asin", "acos", "sinh", "cosh")
    TENSOR_NAMES = (*NAMES, *(name + "_" for name in NAMES), "__pow__", "__rpow__", "__ipow__")

    def __enter__(self):
        self.replaced = []                  # (owner, name, what owner.__dict__ held or None)
        for owner, names in ((torch, self.NAMES), (torch.Tensor, self.TENSOR_NAMES)):
            for name in names:
                function = getattr(owner, name, None)
                if function is None:
                    continue
                self.replaced.append((owner, name, owner.__dict__.get(name)))
                setattr(owner, name, _moving(function, in_place=name.endswith("_") or name == "__ipow__"))
        return self

    def __exit__(self, *exc_info):
        for owner, name, held in reversed(self.replaced):
            if held is None:
                delattr(owner, name)        # it was inherited (Tensor from TensorBase): inherit it again
            else:
                setattr(owner, name, held)
        return False


def _moving(function, in_place: bool):
    """function, with its float32/float64 tensor results moved by `_moved_one_ulp` (in place for `name_`)."""
    @functools.wraps(function)
    def moved(*args, **kwargs):
        result = function(*args, **kwargs)
        if not isinstance(result, torch.Tensor) or result.dtype not in (torch.float32, torch.float64):
            return result
        if in_place:
            with torch.no_grad():
                return result.copy_(_moved_one_ulp(result))
        step = torch.where(result.isfinite(), _moved_one_ulp(result) - result.detach(), 0.0)
        return result + step                # exact: the step is one ulp or 0; ±∞ and NaN pass through as they are
    return moved
