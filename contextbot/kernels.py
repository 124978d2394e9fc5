"""σ and tanh for compiled loops: the shared maths of chat's step (stepper.py) and training's scan.

Both run their element-wise work as Numba-compiled loops (`@njit(**JIT)`) instead of a string of
array operations, because each array operation reads and writes its whole block of memory and
costs a dispatch; one loop does all of a step's arithmetic per element while it sits in a
register. For that loop to run 8 floats at a time (AVX2), everything in it must vectorise, and
the C library's `tanhf` does not: it is a function call per element.

So `tanh` here is, for float32, the rational approximation Eigen uses (and so PyTorch's CPU
kernels): clamp to ±7.9, then x · p(x²) / q(x²) with a degree-13 and a degree-6 polynomial. It is
within a few units in the last place of float32 (tests/test_stepper.py checks 3e-7) and is only
multiplies, adds, a division and two comparisons, all of which vectorise. For float64 (the tests
that compare against PyTorch to 1e-12, and gradcheck) it is the exact `math.tanh`: the dtype picks
the implementation when the loop is compiled. σ(x) = (1 + tanh(x / 2)) / 2.

`JIT` holds the compile options every kernel uses:
- fast-math flags that allow reordering sums (so a dot product runs in vector lanes) without
  assuming the absence of NaN or infinity;
- error_model="numpy": a float division by zero gives inf, as in NumPy, instead of Numba's default
  check of every divisor (which raises ZeroDivisionError, and stops the loop from vectorising);
- nogil, so a UI thread keeps running while a worker computes; cache, so the machine code is
  compiled once and reused by the next process.
"""

from __future__ import annotations

import math

import numpy as np
from numba import types
from numba.extending import overload

FASTMATH = {"contract", "reassoc", "arcp", "nsz"}
JIT = dict(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")

# Eigen's coefficients as float32 constants: a Python float literal in the loop would turn float32
# arithmetic into float64 (half as many vector lanes).
_CLAMP = np.float32(7.90531110763549805)  # tanh(±7.9) rounds to ±1 in float32
_P = tuple(np.float32(a) for a in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                                   5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                                   4.89352455891786e-03))
_Q = tuple(np.float32(b) for b in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                                   4.89352518554385e-03))
P0, P1, P2, P3, P4, P5, P6 = _P
Q0, Q1, Q2, Q3 = _Q
_HALF = np.float32(0.5)
_INLINED = dict(fastmath=FASTMATH, error_model="numpy")


def tanh(x):
    """tanh inside a compiled loop (see the module docstring); not callable from Python."""
    raise NotImplementedError("contextbot.kernels.tanh runs inside @njit code only")


def sigmoid(x):
    """σ inside a compiled loop; not callable from Python."""
    raise NotImplementedError("contextbot.kernels.sigmoid runs inside @njit code only")


@overload(tanh, inline="always", jit_options=_INLINED)
def _tanh(x):
    if x == types.float32:
        def rational(x):
            x = min(max(x, -_CLAMP), _CLAMP)
            x2 = x * x
            p = (((((P0 * x2 + P1) * x2 + P2) * x2 + P3) * x2 + P4) * x2 + P5) * x2 + P6
            q = ((Q0 * x2 + Q1) * x2 + Q2) * x2 + Q3
            return x * p / q
        return rational
    return lambda x: math.tanh(x)


@overload(sigmoid, inline="always", jit_options=_INLINED)
def _sigmoid(x):
    if x == types.float32:
        return lambda x: _HALF + _HALF * tanh(_HALF * x)
    return lambda x: 0.5 + 0.5 * math.tanh(0.5 * x)
