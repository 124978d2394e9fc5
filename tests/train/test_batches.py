"""Conversations into training batches (contextbot/train/batches.py): compact and exact."""

from __future__ import annotations

import torch

from contextbot.text import turns
from contextbot.text.corpus import Conversation
from contextbot.train.batches import Streams, encode_conversation


def test_encoded_conversations_are_compact_and_exact(tiny_tokenizer):
    """Training holds the whole corpus in memory: 10 bytes a token, not Python lists (about 60),
    with exactly the values the lists held."""
    tok = tiny_tokenizer
    conv = Conversation([("Who is Zoë?", "She is 😀."), ("Where does she live?", "She lives in Paris.")])
    e = encode_conversation(conv, tok, 3.0)
    ids, weights = [], []
    for q, a in conv.turns:
        prompt, reply = tok.encode(turns.prompt(q)), tok.encode(turns.reply(a))
        ids += prompt + reply
        weights += [1.0] * len(prompt) + [3.0] * len(reply)
    assert e.inputs.tolist() == ids[:-1] and e.targets.tolist() == ids[1:]
    assert e.weights.tolist() == weights[1:]
    assert e.chars.tolist() == [tok.char_count(t) for t in ids[1:]]
    assert tok.decode(ids) == turns.conversation(conv.turns)
    assert (e.tokens.nbytes + e.weights.nbytes + e.chars.nbytes) / len(e.tokens) < 10
    b = Streams([e, e], batch=2, seq_len=16, seed=0, epoch=0).chunk(0)
    assert b.inputs.dtype == b.targets.dtype == torch.long and b.chars.dtype == torch.float32
