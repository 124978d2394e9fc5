"""`ChatSession`: a conversation with a checkpoint, carrying the hidden state from turn to turn.

This is the API every tool uses (the CLI, the terminal UI, the evaluation, the inspector):

    from contextbot import ChatSession
    s = ChatSession.load()               # checkpoints/gru.safetensors by default
    s.ask("Who is Tom Cruise?")          # 'He is an American actor.'
    s.ask("Where does he live?")         # 'He lives in Beverly Hills.' -- the state remembered him
    s.reset()                            # forget: the state a training conversation starts from
    s.carry = False                      # every turn from a zeroed state: the stateless comparison

A turn feeds `Q: {text}\\nA: ` on top of the carried state, then generates one token at a time
until the end of the line, and feeds that newline too, so the bot's own reply becomes part of what
it remembers. Both go through `Stepper`, the recurrence written out for one conversation; a greedy
turn (temperature 0, the default) runs all of it in one compiled call, then streams the reply.
The model itself is stateless; the session owns the state.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch.nn.utils.rnn import PackedSequence, pack_sequence, pad_packed_sequence

from .model import checkpoint
from .model.network import State, layer_norms, mask_state
from .model.recurrence import reference as gates
from .model.recurrence.stepper import Stepper
from .paths import default_checkpoint
from .text.turns import PROMPT_EXTRA, prompt

MAX_QUESTION = 1000  # characters; longer input is refused
MAX_REPLY = 300  # tokens; a reply stops here even without a newline


class StreamStep(NamedTuple):
    """One generated character and the per-layer ‖h‖ right after the model produced it."""

    char: str
    norms: tuple[float, ...]


def clean_question(text: str) -> str:
    """Drop control and format characters (escape sequences, bidi marks, NUL); newlines and tabs
    become spaces. Raise ValueError if what is left is too long."""
    if not isinstance(text, str):
        raise ValueError("a question must be a string")
    text = "".join(" " if ch in "\t\n\r\v\f" else ch for ch in text)
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("C")).strip()
    if len(text) > MAX_QUESTION:
        raise ValueError(f"question is too long ({len(text)} characters; at most {MAX_QUESTION})")
    return text


def visible(text: str) -> str:
    """The bot's text made safe to print: control characters other than tab become U+FFFD (�).

    The counterpart of `clean_question`, for output. Any model can spell any byte (the tokenizer's
    byte fallback), so a checkpoint from a stranger could reply with ESC sequences that retitle,
    clear or reprogram the user's terminal, or with a newline spelled as a byte that breaks
    `contextbot ask`'s one reply a line. The session returns the reply exactly as generated (its
    text is what the state was fed); whoever prints it to a terminal passes it through here.
    """
    return "".join("\ufffd" if unicodedata.category(ch) == "Cc" and ch != "\t" else ch for ch in text)


class ChatSession:
    """A chat over one checkpoint; holds the carried hidden state (the model holds none)."""

    def __init__(self, ckpt: checkpoint.Checkpoint, *, carry: bool = True, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 0):
        self.checkpoint = ckpt
        self.model = ckpt.model.eval()
        self.tokenizer = ckpt.tokenizer
        self.device = next(self.model.parameters()).device
        self.carry = carry
        self.temperature = temperature
        self.top_k = top_k
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.chars_seen = 0  # characters of context fed since the last reset
        self.state: State = self.model.zero_state(1, self.device)
        self._last: tuple[State, int] | None = None  # (state before, token) of the last step
        self._stepper = Stepper(self.model)  # the turn's recurrence, fast (stepper.py)

    @classmethod
    def load(cls, path: str | Path | None = None, **kwargs) -> "ChatSession":
        """Load a checkpoint (None: `$CONTEXTBOT_CHECKPOINT`, else checkpoints/gru.safetensors)."""
        return cls(checkpoint.load(path if path is not None else default_checkpoint()), **kwargs)

    # -- state --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything: the all-zero state that every training conversation starts from."""
        self.state = self.model.zero_state(1, self.device)
        self.chars_seen = 0
        self._last = None

    def norms(self) -> tuple[float, ...]:
        """‖h‖ per layer of the current state."""
        return layer_norms(self.state)

    # -- talking ------------------------------------------------------------------------------
    def ask(self, text: str) -> str:
        """One turn: the reply, without its `A: ` and newline."""
        return "".join(step.char for step in self.stream(text))

    def stream(self, text: str) -> Iterator[StreamStep]:
        """One turn, yielding each character of the reply with the state's norms after it. (A
        greedy turn computes the whole reply before its first character is yielded: a
        millisecond; a sampled one, a character at a time.)

        The question is validated here, before anything is fed, so a refused question raises
        ValueError at once and leaves the state untouched. Stopping the iteration early (a UI's
        Escape) still leaves a consistent state: the newline is fed in the `finally` clause.
        """
        return self._generate(clean_question(text))

    def _generate(self, question: str) -> Iterator[StreamStep]:
        # No torch.inference_mode() here: Stepper runs no autograd-tracked operation, and the
        # decorator would re-enter the mode at every yield, ~10 µs per character.
        if not self.carry:
            self.reset()
        yield from (self._greedy(question) if self.temperature <= 0 else self._sampled(question))

    def _greedy(self, question: str) -> Iterator[StreamStep]:
        """A greedy turn: the whole reply is computed in one compiled call (Stepper.answer),
        then streamed. The state advances with each token handed out, so a reader that stops
        part-way leaves the state after what it was shown, then the newline, as `_sampled` does."""
        tok = self.tokenizer
        answer = self._stepper.answer(tok.encode(prompt(question)), self.state, MAX_REPLY,
                                      tok.line_end_ids, tok.newline_id)
        self.state = answer.state(-1)
        self.chars_seen += len(question) + PROMPT_EXTRA
        decoder = tok.decoder()
        finished = False
        try:
            for i, nxt in enumerate(answer.tokens):
                self._last = (self.state, nxt)
                self.state = answer.state(i)
                text_piece = decoder.push(nxt)
                self.chars_seen += len(text_piece)
                norms = answer.norms(i)
                for ch in text_piece:
                    yield StreamStep(ch, norms)
            for ch in decoder.flush():
                yield StreamStep(ch, layer_norms(self.state))
            finished = True
        finally:
            # The reply's newline is part of the conversation, as it was in training. Answer
            # has fed it already after the whole reply; a reader that stopped early needs it now.
            if finished:
                self.state = answer.after_turn
            else:
                _, self.state = self._stepper.step(tok.newline_id, self.state)
            self.chars_seen += 1

    def _sampled(self, question: str) -> Iterator[StreamStep]:
        """A sampled turn (temperature > 0), one step per token: the sampler is Python's."""
        tok = self.tokenizer
        logits, self.state = self._stepper.feed(tok.encode(prompt(question)), self.state)
        self.chars_seen += len(question) + PROMPT_EXTRA
        decoder = tok.decoder()
        try:
            for _ in range(MAX_REPLY):
                nxt = self._pick(logits)
                if nxt in tok.line_end_ids:
                    break
                self._last = (self.state, nxt)
                logits, self.state = self._stepper.step(nxt, self.state)
                text_piece = decoder.push(nxt)
                self.chars_seen += len(text_piece)
                norms = layer_norms(self.state)
                for ch in text_piece:
                    yield StreamStep(ch, norms)
            for ch in decoder.flush():
                yield StreamStep(ch, layer_norms(self.state))
        finally:
            # The reply's newline is part of the conversation, as it was in training.
            _, self.state = self._stepper.step(tok.newline_id, self.state)
            self.chars_seen += 1

    def trace_last(self) -> "gates.StepTrace | None":
        """Recompute the last generated character by hand from the layer weights, returning its
        gates (see `contextbot.gates`). None before the first generated character."""
        if self._last is None:
            return None
        return gates.step(self.model, self._last[1], self._last[0])

    def _pick(self, logits: torch.Tensor) -> int:
        """Sample (optionally from the top k) with the session's seeded generator."""
        logits = logits.float() / self.temperature
        if self.top_k:
            v, i = logits.topk(min(self.top_k, logits.numel()))
            return int(i[torch.multinomial(v.softmax(-1), 1, generator=self.generator)])
        return int(torch.multinomial(logits.softmax(-1), 1, generator=self.generator))


class BatchSession:
    """Many independent conversations at once, for evaluation: the same protocol as ChatSession
    (greedy), but every turn of every conversation advances together in batched calls.

    Prompts of different lengths go through the RNN as one packed sequence, which returns each
    conversation's state after its own last character; replies are generated one token per call
    for the whole batch, and a conversation that has finished its line keeps its state.
    """

    def __init__(self, session: ChatSession):
        self.model, self.tokenizer, self.device = session.model, session.tokenizer, session.device

    @torch.inference_mode()
    def run(self, conversations: list[list[str]], zero_before: list[set[int]] | None = None) -> list[list[str]]:
        """Talk each list of questions through from a zero state; return the replies.
        `zero_before[b]` lists turn indices whose state is zeroed first (the stateless comparison)."""
        model, tok = self.model, self.tokenizer
        line_ends = torch.tensor(sorted(tok.line_end_ids), device=self.device)
        n = len(conversations)
        state = model.zero_state(n, self.device)
        replies: list[list[str]] = [[] for _ in range(n)]
        for turn in range(max(len(c) for c in conversations)):
            active = [b for b in range(n) if turn < len(conversations[b])]
            idx = torch.tensor(active, device=self.device)
            sub = tuple(s[:, idx] for s in state) if isinstance(state, tuple) else state[:, idx]
            if zero_before:
                keep = torch.tensor([0.0 if turn in zero_before[b] else 1.0 for b in active], device=self.device)
                sub = mask_state(sub, keep)
            prompts = [torch.tensor(tok.encode(prompt(clean_question(conversations[b][turn]))),
                                    device=self.device) for b in active]
            packed = pack_sequence(prompts, enforce_sorted=False)
            out, sub = model.rnn(PackedSequence(
                model.embedding(packed.data), packed.batch_sizes, packed.sorted_indices,
                packed.unsorted_indices), sub)
            last = _last_outputs(out)
            logits = model.head(last)  # (active, vocab)
            generated: list[list[int]] = [[] for _ in active]
            done = torch.zeros(len(active), dtype=torch.bool, device=self.device)
            for _ in range(MAX_REPLY):
                nxt = logits.argmax(-1)
                done |= torch.isin(nxt, line_ends)
                if bool(done.all()):
                    break
                # One copy to the host per step: int(nxt[i]) for each conversation was a device
                # sync each on a GPU (six evals there did not finish in six minutes).
                for i, (token, finished) in enumerate(zip(nxt.tolist(), done.tolist())):
                    if not finished:
                        generated[i].append(token)
                step_logits, new = _call(model, nxt.view(-1, 1), sub)
                sub = _blend(new, sub, ~done)
                logits = step_logits[:, -1]
            newline = torch.full((len(active), 1), tok.newline_id, device=self.device)
            _, sub = _call(model, newline, sub)
            if isinstance(state, tuple):
                for s, v in zip(state, sub):
                    s[:, idx] = v
            else:
                state[:, idx] = sub
            for i, b in enumerate(active):
                replies[b].append(tok.decode(generated[i]))
        return replies


def _call(model, tokens: torch.Tensor, state: State):
    """One forward call for chat-sized inputs. PyTorch's oneDNN LSTM kernel costs milliseconds
    per call on a single token (measured: 4 ms at 1x256, against 0.1 ms without it), so it is
    switched off around these small calls; the results are the same."""
    enabled = torch._C._get_mkldnn_enabled()  # the public flags() also resets TF32 and warns
    torch._C._set_mkldnn_enabled(False)
    try:
        return model(tokens, state)
    finally:
        torch._C._set_mkldnn_enabled(enabled)


def _last_outputs(packed_out) -> torch.Tensor:
    """The output at each sequence's last step, in the original order, from a packed output."""
    padded, lengths = pad_packed_sequence(packed_out, batch_first=True)
    return padded[torch.arange(len(lengths)), lengths - 1]


def _blend(new: State, old: State, keep: torch.Tensor) -> State:
    """new where keep is true, old where it is false (per conversation)."""
    k = keep.view(1, -1, 1)
    if isinstance(new, tuple):
        return tuple(torch.where(k, a, b) for a, b in zip(new, old))
    return torch.where(k, new, old)
