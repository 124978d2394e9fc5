"""Helpers shared by the training tests: fingerprints of a checkpoint's tensors (for bit-for-bit
comparisons of runs), one CPU thread (the arithmetic of the one-thread subprocesses), and torchrun."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from contextbot.analysis import probe
from contextbot.model import checkpoint

TIMEOUT = 180  # a hang (a rank waiting for another forever) fails the test instead of the suite


def launcher() -> list[str]:
    """torchrun beside this Python (it is `python -m torch.distributed.run`)."""
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "torch.distributed.run"]


def fingerprint(weights: dict[str, torch.Tensor], train_tensors: dict[str, torch.Tensor]) -> str:
    """A hash of every tensor a checkpoint holds (weights, Adam's moments, carried state, RNG)."""
    h = hashlib.sha256()
    for prefix, tensors in (("model.", weights), ("train.", train_tensors)):
        for k in sorted(tensors):
            h.update(f"{prefix}{k}".encode())
            h.update(tensors[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_fingerprint(path: Path) -> tuple[int, str]:
    ck = checkpoint.load(path)
    return ck.step, fingerprint(ck.model.state_dict(), ck.train_tensors)


# Train in this process on one thread, as the subprocesses (OMP_NUM_THREADS=1) do: the same
# arithmetic, so the same weights bit for bit.
one_thread = probe.one_thread
