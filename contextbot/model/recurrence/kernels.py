"""σ and tanh for compiled loops: the shared maths of chat's step (stepper.py) and training's scan.

Both run their element-wise work as Numba-compiled loops (`@njit(**JIT)`) instead of a string of
array operations, because each array operation reads and writes its whole block of memory and
costs a dispatch; one loop does all of a step's arithmetic per element while it sits in a
register. For that loop to run 8 floats at a time (AVX2), everything in it must vectorise, and
the C library's `tanhf` does not: it is a function call per element.

So `tanh` here is, for float32, the rational approximation that the Eigen library uses for
float32 tanh: clamp to ±7.9, then x · p(x²) / q(x²) with a degree-13 and a degree-6 polynomial.
It is within about 5 units in the last place of float32 (at most 3e-7; tests/model/test_stepper.py
checks) and is only multiplies, adds, a division and two comparisons, all of which vectorise.
That is the same size as the rounding differences that summing a dot product in another order
already makes (PyTorch's MKL and these loops do), so chat and `contextbot eval` (which runs
PyTorch's modules) agree except where the model is undecided between two characters to within
about 1e-4 (tests/analysis/test_evaluate.py checks that that is the only place they part).

For float64 it is the exact `math.tanh` (the dtype picks the implementation when the loop is
compiled): the float64 tests that compare the scan against PyTorch to 1e-12, and gradcheck, get
exact maths. σ(x) = (1 + tanh(x / 2)) / 2.

`JIT` holds the compile options every kernel uses:
- fast-math flags that allow reordering sums (so a dot product runs in vector lanes) without
  assuming the absence of NaN or infinity (NaN stays NaN);
- error_model="numpy": a float division by zero gives inf, as in NumPy, instead of Numba's default
  check of every divisor (which raises ZeroDivisionError, and stops the loop from vectorising);
- nogil, so a UI thread keeps running while a worker computes; cache, so the machine code is
  compiled once and reused by the next process.

Numba's cache checks only the file that holds a compiled function, not the files it inlines
from: a change here would leave stepper.py's and scan.py's cached machine code stale. So the
cache lives in a folder named after a hash of this file (in the user's cache folder, or the
temporary folder where that is not writable), unless NUMBA_CACHE_DIR says otherwise.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from pathlib import Path

import numba
import numpy as np
from numba import types
from numba.extending import overload


def _cache_dir() -> str:
    """A writable folder for Numba's cache, keyed on this file's source (see the docstring)."""
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for root in (base, tempfile.gettempdir()):
        folder = os.path.join(root, "contextbot", f"numba-{key}")
        try:
            os.makedirs(folder, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    return folder


if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = _cache_dir()  # before any @njit(cache=True) below or in stepper/scan

FASTMATH = {"contract", "reassoc", "arcp", "nsz"}
JIT = dict(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")

# Eigen's coefficients as float32 constants: a Python float literal in the loop would turn float32
# arithmetic into float64 (half as many vector lanes).
_CLAMP = np.float32(7.90531110763549805)  # beyond ±7.9 the approximation is flat at ±(1 − 2.4e-7)
P0, P1, P2, P3, P4, P5, P6 = (np.float32(a) for a in (
    -2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
    1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03))
Q0, Q1, Q2, Q3 = (np.float32(b) for b in (
    1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03))
_HALF = np.float32(0.5)
ONE = np.float32(1.0)  # for `1 - z` in float32 kernels: the literal 1 would make it float64
_INLINED = dict(fastmath=FASTMATH, error_model="numpy")


def tanh(x):
    """tanh inside a compiled loop (see the module docstring); not callable from Python."""
    raise NotImplementedError("kernels.tanh runs inside @njit code only")


def sigmoid(x):
    """σ inside a compiled loop; not callable from Python."""
    raise NotImplementedError("kernels.sigmoid runs inside @njit code only")


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
