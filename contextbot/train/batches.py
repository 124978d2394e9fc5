"""Turning conversations into batches for truncated backpropagation through time (BPTT).

The corpus is laid out as `batch` parallel *streams*. Each stream is a sequence of whole
conversations, back to back, cut into `seq_len` chunks. Training walks the streams chunk by chunk,
carrying the hidden state from one chunk to the next (detached, so gradients stop at the chunk
edge) and zeroing it just before the first token of every conversation: the batch's `keep` mask
is 0 there, and the model's recurrence (scan.py) resets the state at that step, wherever in the
chunk it falls. That makes the state a conversation starts from in training exactly the state
`ChatSession.reset()` gives in chat: zeros. (Padding each conversation to whole chunks would do
the same with `nn.GRU`, which cannot reset mid-sequence, but a fifth of the arithmetic went on
padding.)

Each target token has a loss weight: `answer_weight` for the characters of the bot's answers (what
chat generates), 1 for the rest (the questions), 0 for padding.

Memory: a corpus is held as compact tensors (int32 ids, float32 weights, int16 character counts,
a bool per token for where conversations start), not as Python lists, where every id costs an
8-byte pointer to a 28-byte int object. The values are the same as the lists held.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..text.corpus import Conversation
from ..text.referents import Referents
from ..text.tokenizer import Tokenizer
from ..text.turns import PROMPT_TAIL, turn_ids


@dataclass
class Encoded:
    """One conversation as model inputs, targets and per-target loss weights.

    The input at position t is token t and its target is token t + 1, so both are views of one
    tensor of the conversation's tokens.
    """

    tokens: torch.Tensor  # (n,) int32: the whole conversation
    weights: torch.Tensor  # (n - 1,) float32: the loss weight of each target
    chars: torch.Tensor  # (n - 1,) int16: characters each target token adds (for bits per *character*)
    # (n - 1, 2) int16: who "he" and "she" mean once input t is read (referents.py), or None
    referents: torch.Tensor | None = None

    @property
    def inputs(self) -> torch.Tensor:
        return self.tokens[:-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.tokens[1:]


def encode_conversation(conv: Conversation, tok: Tokenizer, answer_weight: float,
                        referents: Referents | None = None) -> Encoded:
    """Encode each turn's prompt and reply separately (`turns.turn_ids`), exactly as chat feeds
    and generates them.

    With `referents`, each input position is also labelled with who "he" and "she" mean there:
    the question's characters with the referents before the turn, from the prompt's tail
    (`turns.PROMPT_TAIL`, the state that must produce the answer) on with the referents after
    it."""
    ids: list[int] = []
    w: list[float] = []
    labels: list[tuple[int, int]] = []
    tail = len(tok.encode(PROMPT_TAIL))
    turns = referents.turns(conv) if referents is not None else None
    for k, (q, a) in enumerate(conv.turns):
        prompt, reply = turn_ids(tok, q, a)
        ids += prompt + reply
        w += [1.0] * len(prompt) + [answer_weight] * len(reply)
        if turns is not None:
            before, after = turns[k]
            labels += [before] * (len(prompt) - tail) + [after] * (tail + len(reply))
    return Encoded(torch.tensor(ids, dtype=torch.int32), torch.tensor(w[1:], dtype=torch.float32),
                   torch.tensor([tok.char_count(t) for t in ids[1:]], dtype=torch.int16),
                   torch.tensor(labels[:-1], dtype=torch.int16) if turns is not None else None)


@dataclass
class Batch:
    inputs: torch.Tensor  # (batch, seq_len) token ids
    targets: torch.Tensor  # (batch, seq_len) token ids
    weights: torch.Tensor  # (batch, seq_len) loss weights, 0 on padding
    chars: torch.Tensor  # (batch, seq_len) characters per target, 0 on padding
    keep: torch.Tensor  # (batch, seq_len) 0 where a conversation starts: zero the state before it
    referents: torch.Tensor  # (batch, seq_len, 2) referent classes; IGNORE on padding or unlabelled


IGNORE = -100  # cross_entropy's ignore_index: no referent loss here


class Streams:
    """All chunks of one epoch: conversations shuffled with (seed, epoch), dealt to the streams.

    `align=True` pads every conversation to whole chunks instead, so that every reset falls on a
    chunk's first token. That costs about a fifth of the arithmetic in padding, but lets a GPU run
    cuDNN's recurrent kernel, which cannot reset mid-chunk and is many times faster there than
    the step-by-step scan (training chooses it on CUDA)."""

    def __init__(self, encoded: list[Encoded], batch: int, seq_len: int, seed: int, epoch: int,
                 align: bool = False):
        order = list(range(len(encoded)))
        random.Random(f"{seed}-{epoch}").shuffle(order)
        streams: list[list[int]] = [[] for _ in range(batch)]
        lengths = [0] * batch
        for i in order:  # deal each conversation to the shortest stream so far
            s = min(range(batch), key=lengths.__getitem__)
            streams[s].append(i)
            lengths[s] += _span(len(encoded[i].inputs), seq_len, align)
        self.num_chunks = -(-max(lengths) // seq_len)
        n = self.num_chunks * seq_len  # the longest stream, padded to whole chunks at its end
        # Compact here too (int32 ids, int16 character counts); `chunk` widens one chunk at a time.
        self.inputs = torch.zeros(batch, n, dtype=torch.int32)
        self.targets = torch.zeros(batch, n, dtype=torch.int32)
        self.weights = torch.zeros(batch, n)
        self.chars = torch.zeros(batch, n, dtype=torch.int16)
        self.referents = torch.full((batch, n, 2), IGNORE, dtype=torch.int16)
        self.starts = torch.zeros(batch, n, dtype=torch.bool)  # a conversation's first token
        for s, convs in enumerate(streams):
            pos = 0
            for i in convs:
                e = encoded[i]
                k = len(e.inputs)
                self.starts[s, pos] = True
                self.inputs[s, pos:pos + k] = e.inputs
                self.targets[s, pos:pos + k] = e.targets
                self.weights[s, pos:pos + k] = e.weights
                self.chars[s, pos:pos + k] = e.chars
                if e.referents is not None:
                    self.referents[s, pos:pos + k] = e.referents
                pos += _span(k, seq_len, align)
            if pos < n:
                self.starts[s, pos] = True  # the padding at the end reads from a fresh state
        self.seq_len = seq_len

    def chunk(self, c: int) -> Batch:
        sl = slice(c * self.seq_len, (c + 1) * self.seq_len)
        return Batch(self.inputs[:, sl].long(), self.targets[:, sl].long(), self.weights[:, sl],
                     self.chars[:, sl].float(), (~self.starts[:, sl]).float(),
                     self.referents[:, sl].long())


def _span(tokens: int, seq_len: int, align: bool) -> int:
    """Positions a conversation takes in its stream: its tokens, or whole chunks if aligned."""
    return -(-tokens // seq_len) * seq_len if align else tokens


class BatchSchedule:
    """Maps a global training step to its chunk, across epochs, deterministically for a seed.

    Step s of a run always sees the same batch, so a resumed run sees what an uninterrupted one
    would have seen.
    """

    def __init__(self, encoded: list[Encoded], batch: int, seq_len: int, seed: int, align: bool = False):
        self.encoded, self.batch, self.seq_len, self.seed, self.align = encoded, batch, seq_len, seed, align
        self._epoch, self._streams, self._first = -1, None, 0

    def get(self, step: int) -> Batch:
        if self._streams is None or step < self._first:
            self._epoch, self._first = 0, 0
            self._streams = Streams(self.encoded, self.batch, self.seq_len, self.seed, 0, self.align)
        while step >= self._first + self._streams.num_chunks:
            self._first += self._streams.num_chunks
            self._epoch += 1
            self._streams = Streams(self.encoded, self.batch, self.seq_len, self.seed, self._epoch,
                                   self.align)
        return self._streams.chunk(step - self._first)

    @property
    def epoch(self) -> int:
        return self._epoch


class ConversationBatches:
    """Whole conversations as batches: full backpropagation through time, no truncation.

    With `Streams`, a conversation is cut into `seq_len` chunks and gradients stop at every chunk
    edge, so a pronoun question in a later chunk than its introduction teaches the model nothing
    about *storing* the name. Here every step takes `batch` whole conversations of similar length
    (each padded only to the longest of its batch) and starts them all from the zero state, so
    every dependency in a conversation, however far back, gets its gradient.

    Each epoch shuffles the conversations with (seed, epoch), sorts them by length within pools
    of `pool` batches, cuts the pools into batches and shuffles the batches: little padding, and
    no order of lengths that the model could learn from. Same `get(step)` contract as
    `BatchSchedule`: step s always sees the same batch.
    """

    def __init__(self, encoded: list[Encoded], batch: int, seed: int, pool: int = 16):
        self.encoded, self.batch, self.seed, self.pool = encoded, batch, seed, pool
        self._epoch, self._batches, self._first = -1, None, 0

    def _plan(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}-{epoch}")
        order = list(range(len(self.encoded)))
        rng.shuffle(order)
        size = self.batch * self.pool
        batches = []
        for p in range(0, len(order), size):
            group = sorted(order[p:p + size], key=lambda i: len(self.encoded[i].inputs))
            batches += [group[k:k + self.batch] for k in range(0, len(group), self.batch)]
        rng.shuffle(batches)
        # Every batch needs `batch` conversations (DDP shards them); a short last one borrows.
        for b in batches:
            while len(b) < self.batch:
                b.append(order[len(b) % len(order)])
        return batches

    def get(self, step: int) -> Batch:
        if self._batches is None or step < self._first:
            self._epoch, self._first, self._batches = 0, 0, self._plan(0)
        while step >= self._first + len(self._batches):
            self._first += len(self._batches)
            self._epoch += 1
            self._batches = self._plan(self._epoch)
        convs = [self.encoded[i] for i in self._batches[step - self._first]]
        n = max(len(e.inputs) for e in convs)
        b = len(convs)
        inputs = torch.zeros(b, n, dtype=torch.long)
        targets = torch.zeros(b, n, dtype=torch.long)
        weights = torch.zeros(b, n)
        chars = torch.zeros(b, n)
        referents = torch.full((b, n, 2), IGNORE, dtype=torch.long)
        for s, e in enumerate(convs):
            k = len(e.inputs)
            inputs[s, :k], targets[s, :k] = e.inputs, e.targets
            weights[s, :k], chars[s, :k] = e.weights, e.chars
            if e.referents is not None:
                referents[s, :k] = e.referents
        keep = torch.ones(b, n)
        keep[:, 0] = 0  # every row is a new conversation
        return Batch(inputs, targets, weights, chars, keep, referents)

    @property
    def epoch(self) -> int:
        return self._epoch
