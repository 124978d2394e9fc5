"""`ChatSession`: a conversation with a checkpoint, carrying the hidden state from turn to turn.

This is the API every tool uses (the CLI, the terminal UI, the evaluation, the inspector):

    from contextbot import ChatSession
    s = ChatSession.load()               # checkpoints/gru.safetensors by default
    s.ask("Who is Tom Cruise?")          # 'He is an American actor.'
    s.ask("Where does he live?")         # 'He lives in Beverly Hills.' -- the state remembered him
    s.reset()                            # forget: the state a training conversation starts from
    s.carry = False                      # every turn from a zeroed state: the stateless comparison

A turn follows the protocol of text/turns.py (`turns.drive`): feed the prompt `Q: {text}\\nA: `
on top of the carried state, generate one token at a time until the end of the line, and feed
that newline too, so the bot's own reply becomes part of what it remembers. The recurrence is
`Stepper`'s, written out for one conversation. A sampled turn (temperature > 0) drives it a token
at a time; a greedy turn (temperature 0, the default) computes the whole turn in one compiled call
(`Stepper.answer`) and then replays it through the same driver, so that both stream, and stop
early, alike. `BatchSession` is the protocol's batched fast path, for the evaluation. The model
itself is stateless; the session owns the state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from .model import checkpoint
from .model.network import State, hidden_of, layer_norms, mask_state
from .model.recurrence import reference as gates
from .model.recurrence.stepper import Answer, Stepper
from .paths import default_checkpoint
# clean_question and visible live in text/terminal.py (no PyTorch); they stay public here too.
from .text.terminal import MAX_QUESTION, clean_question, visible  # noqa: F401
from .text.turns import END_PART, MAX_REPLY, PROMPT_EXTRA, PROMPT_PART, REPLY_PART, drive, prompt

# MAX_QUESTION (text/terminal.py): characters; a longer question is refused (`clean_question`).
# MAX_REPLY (text/turns.py): tokens; a reply stops there even without a newline. Read from this
# module at every turn, so a test or a tool may set chat.MAX_REPLY.


class StreamStep(NamedTuple):
    """One generated character and the per-layer ‖h‖ right after the model produced it."""

    char: str
    norms: tuple[float, ...]


class PromptTrace(NamedTuple):
    """A turn's prompt, character by character, with the top layer's h right after each one
    (`ChatSession.trace_prompt`)."""

    text: str  # the prompt as fed, `Q: {question}\nA: `
    hidden: torch.Tensor  # (len(text), hidden): the top layer's h after each character of `text`


class ChatSession:
    """A chat over one checkpoint; holds the carried hidden state (the model holds none)."""

    #: The smallest sampling temperature: below it, logits / temperature overflows float32 (and
    #: sampling is greedy in all but name). 0 means greedy.
    MIN_TEMPERATURE = 1e-3

    def __init__(self, ckpt: checkpoint.Checkpoint, *, carry: bool = True, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 0):
        import math

        from .errors import ContextbotError
        if (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
                or not math.isfinite(temperature) or temperature < 0
                or 0 < temperature < self.MIN_TEMPERATURE):
            raise ContextbotError(f"temperature must be 0 (greedy) or a finite number from "
                                  f"{self.MIN_TEMPERATURE:g} up, not {temperature!r:.40}")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ContextbotError(f"top_k must be None or a whole number of at least 1, not {top_k!r:.40}")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
            raise ContextbotError(f"seed must be a whole number from 0 to 2**64 - 1, not {seed!r:.40}")
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
        greedy turn computes the whole reply before its first character is yielded; a sampled
        one, a character at a time.)

        The question is validated here, before anything is fed, so a refused question raises
        ValueError at once and leaves the state untouched. Stopping the iteration early (a UI's
        Escape) still leaves a consistent state: the state after the characters shown, then the
        newline (`turns.drive` feeds it however the turn ends).
        """
        return self._generate(clean_question(text))

    def trace_prompt(self, text: str) -> PromptTrace:
        """The top layer's h after each character of the prompt that `stream(text)` would feed,
        from the state that turn would start from (the carried state; zero when `carry` is off),
        leaving the session as it is: its state, its counts, its last step.

        What the state holds while the question is read, which `stream` does not show (it feeds
        the prompt in one call): the terminal UI reads who "he" and "she" mean from it. The
        recurrence is the session's own (`Stepper`), a token at a time; a character spelled in
        several byte tokens gets the state after its last byte. Refuses a question as `stream`
        does (ValueError)."""
        question = clean_question(text)
        state = self.state if self.carry else self.model.zero_state(1, self.device)
        decoder = self.tokenizer.decoder()
        chars: list[str] = []
        rows: list[torch.Tensor] = []
        for token in self.tokenizer.encode(prompt(question)):
            _, state = self._stepper.step(token, state)  # a new state; the session's is untouched
            top = hidden_of(state)[-1, 0]
            for ch in decoder.push(token):
                chars.append(ch)
                rows.append(top)
        hidden = torch.stack(rows) if rows else torch.zeros(0, self.model.config.hidden)
        return PromptTrace("".join(chars), hidden)

    def _generate(self, question: str) -> Iterator[StreamStep]:
        # No torch.inference_mode() here: Stepper runs no autograd-tracked operation, and the
        # decorator would re-enter the mode at every yield.
        if not self.carry:
            self.reset()
        limit = MAX_REPLY
        if self.temperature <= 0:
            replay = _Replay(self, limit)
            feed, pick, norms = replay.feed, replay.pick, replay.norms
        else:
            feed, pick, norms = self._feed, self._pick, self.norms

        def feed_and_count(tokens: Sequence[int], part: str):
            logits = feed(tokens, part)
            if part == PROMPT_PART:
                self.chars_seen += len(question) + PROMPT_EXTRA
            elif part == END_PART:
                self.chars_seen += 1  # the reply's characters are counted as they are shown
            return logits

        turn = drive(self.tokenizer, question, feed_and_count, pick, limit)
        try:
            for token, text in turn:
                if token is None:  # the rest of a character left incomplete at the reply's end
                    after = layer_norms(self.state)
                else:
                    self.chars_seen += len(text)
                    after = norms()
                for ch in text:
                    yield StreamStep(ch, after)
        finally:
            turn.close()  # a reader that stopped early: the driver feeds the newline now

    def _feed(self, tokens: Sequence[int], part: str) -> torch.Tensor:
        """`drive`'s feed for a sampled turn: the tokens through Stepper, on top of the state."""
        if part == REPLY_PART:
            self._last = (self.state, tokens[0])
        logits, self.state = self._stepper.feed(tokens, self.state)
        return logits

    def trace_last(self) -> "gates.StepTrace | None":
        """Recompute the last generated character by hand from the layer weights, returning its
        gates (see `contextbot.model.recurrence.reference`). None before the first generated
        character."""
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


class _Replay:
    """A greedy turn for `drive`: `Stepper.answer` computes the whole turn in one compiled call
    when the prompt is fed (the fast path); then `pick` hands out its tokens one by one and `feed`
    moves the session to the state `answer` kept after each. So a greedy reply streams, and a
    reader that stops early leaves the state after what it was shown, as a sampled one does."""

    def __init__(self, session: ChatSession, limit: int):
        self.session, self.limit = session, limit
        self.answer: Answer | None = None
        self.shown = 0  # tokens of the reply fed so far

    def feed(self, tokens: Sequence[int], part: str) -> None:
        s, tok = self.session, self.session.tokenizer
        if part == PROMPT_PART:
            self.answer = s._stepper.answer(tokens, s.state, self.limit, tok.line_end_ids, tok.newline_id)
            s.state = self.answer.state(-1)
        elif part == REPLY_PART:
            s._last = (s.state, tokens[0])
            s.state = self.answer.state(self.shown)
            self.shown += 1
        elif self.shown == len(self.answer.tokens):
            s.state = self.answer.after_turn  # `answer` fed the newline after the whole reply
        else:
            s._feed(tokens, part)  # the reader stopped early: the newline after what it saw

    def pick(self, _logits) -> int:
        """The answer's next token; once it is over, the newline (which ends the reply)."""
        tokens = self.answer.tokens
        return tokens[self.shown] if self.shown < len(tokens) else self.session.tokenizer.newline_id

    def norms(self) -> tuple[float, ...]:
        """‖h‖ per layer after the last token fed, as `answer` computed it."""
        return self.answer.norms(self.shown - 1)


class BatchSession:
    """Many independent conversations at once, for evaluation: the same protocol as ChatSession
    (greedy; text/turns.py), but every turn of every conversation advances together in batched
    calls: a fast path of the protocol, held to ChatSession by tests/analysis/test_evaluate.py.

    Prompts of different lengths go through the model in one call (`RecurrentLM.forward_packed`),
    which returns each conversation's state after its own last character; replies are generated
    one token per call for the whole batch, and a conversation that has finished its line keeps
    its state; then every conversation is fed its newline.
    """

    def __init__(self, session: ChatSession):
        self.model, self.tokenizer, self.device = session.model, session.tokenizer, session.device

    def run(self, conversations: list[list[str]],
            zero_before: list[set[int]] | None = None) -> list[list[str]]:
        """Talk each list of questions through from a zero state; return the replies,
        `replies[b][t]`. `zero_before[b]` lists turn indices whose state is zeroed first (the
        stateless comparison)."""
        return self._run(conversations, zero_before, False)[0]

    def run_with_prompt_states(self, conversations: list[list[str]],
                               zero_before: list[set[int]] | None = None,
                               ) -> tuple[list[list[str]], list[list[torch.Tensor]]]:
        """`run`, and the states replies are generated from: `(replies, states)`, where
        `states[b][t]` is the top layer's h, (hidden,), at the end of turn t's prompt (after
        `Q: ...\\nA: `), what analysis/readout.py reads, taken in the same pass."""
        return self._run(conversations, zero_before, True)

    @torch.inference_mode()
    def _run(self, conversations: list[list[str]], zero_before: list[set[int]] | None,
             prompt_states: bool) -> tuple[list[list[str]], list[list[torch.Tensor]]]:
        model, tok = self.model, self.tokenizer
        line_ends = torch.tensor(sorted(tok.line_end_ids), device=self.device)
        n = len(conversations)
        state = model.zero_state(n, self.device)
        replies: list[list[str]] = [[] for _ in range(n)]
        tops: list[list[torch.Tensor]] = [[] for _ in range(n)]
        for turn in range(max(len(c) for c in conversations)):
            active = [b for b in range(n) if turn < len(conversations[b])]
            idx = torch.tensor(active, device=self.device)
            sub = tuple(s[:, idx] for s in state) if isinstance(state, tuple) else state[:, idx]
            if zero_before:
                keep = torch.tensor([0.0 if turn in zero_before[b] else 1.0 for b in active], device=self.device)
                sub = mask_state(sub, keep)
            prompts = [torch.tensor(tok.encode(prompt(clean_question(conversations[b][turn]))),
                                    device=self.device) for b in active]
            logits, sub = model.forward_packed(prompts, sub)  # (active, vocab)
            if prompt_states:
                top = hidden_of(sub)[-1].cpu()  # (active, hidden): the top layer's h
                for i, b in enumerate(active):
                    tops[b].append(top[i])
            generated: list[list[int]] = [[] for _ in active]
            done = torch.zeros(len(active), dtype=torch.bool, device=self.device)
            for _ in range(MAX_REPLY):
                nxt = logits.argmax(-1)
                done |= torch.isin(nxt, line_ends)
                if bool(done.all()):
                    break
                # One copy to the host per step: int(nxt[i]) for each conversation would be a
                # device sync each on a GPU.
                for i, (token, finished) in enumerate(zip(nxt.tolist(), done.tolist())):
                    if not finished:
                        generated[i].append(token)
                step_logits, new = model.forward_small(nxt.view(-1, 1), sub)
                sub = _blend(new, sub, ~done)
                logits = step_logits[:, -1]
            newline = torch.full((len(active), 1), tok.newline_id, device=self.device)
            _, sub = model.forward_small(newline, sub)
            if isinstance(state, tuple):
                for s, v in zip(state, sub):
                    s[:, idx] = v
            else:
                state[:, idx] = sub
            for i, b in enumerate(active):
                replies[b].append(tok.decode(generated[i]))
        return replies, tops


def _blend(new: State, old: State, keep: torch.Tensor) -> State:
    """new where keep is true, old where it is false (per conversation)."""
    k = keep.view(1, -1, 1)
    if isinstance(new, tuple):
        return tuple(torch.where(k, a, b) for a, b in zip(new, old))
    return torch.where(k, new, old)
