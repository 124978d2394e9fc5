"""Validation bits per character: how well a model predicts text it was not trained on.

Shared by training (validation every `--eval-every` steps) and `contextbot eval` (its last row).
Bits per character, not per token, so that models with different tokenizers compare.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..model.network import RecurrentLM
from .batches import Encoded, Streams

LN2 = math.log(2)


def evaluate_bpc(model: RecurrentLM, encoded: list[Encoded], device: torch.device) -> float:
    """Validation bits per character: every conversation from a zero state, no dropout."""
    streams = Streams(encoded, batch=min(64, len(encoded)), seq_len=512, seed=0, epoch=0)
    nats = chars = 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        state = None
        for c in range(streams.num_chunks):
            b = streams.chunk(c)
            logits, state = model(b.inputs.to(device), state, keep=b.keep.to(device))
            ce = F.cross_entropy(logits.flatten(0, 1), b.targets.to(device).flatten(), reduction="none")
            nats += float((ce * (b.weights.to(device).flatten() > 0)).sum())
            chars += float(b.chars.sum())
    model.train(was_training)
    return nats / max(chars, 1.0) / LN2
