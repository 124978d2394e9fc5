"""One chat turn, run in a worker thread, reported as plain data: no Textual in this module.

The terminal UI runs `run_turn` in a `@work(thread=True)` worker so the model never blocks the
event loop. The worker must never touch a widget (Textual widgets are not thread-safe), so this
module knows nothing about widgets: it calls `on_progress(ticks)` after every character with an
immutable snapshot of the turn so far, and returns a `TurnResult`. The app turns those calls
into Messages, which Textual delivers on its own thread.

Each snapshot holds *every* tick of the turn so far, not just the newest one. That is what lets
the UI drop stale progress messages when they arrive faster than the screen redraws
(`ReplyProgress.can_replace`): the newest message alone is enough to draw the whole reply.

With a `Readout` (a checkpoint trained with the referent head, analysis/readout.py), the turn also
says who "he" and "she" mean after every character: before the reply, `on_prompt` is called after
each character of the prompt `Q: {question}\nA: ` (`ChatSession.trace_prompt`), and each Tick of
the reply carries its `memory`, read from its `units`. The readings are computed here, in the
worker thread; the UI only draws them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..model.recurrence import reference as gates
from ..model.network import hidden_of
from ..chat import ChatSession
from ..analysis.readout import Reading, Readout

#: Who "he" and "she" mean, as the readout reads one state.
Memory = tuple[Reading, Reading]


@dataclass(frozen=True)
class Tick:
    """What the state panel needs about one generated character."""

    char: str
    norms: tuple[float, ...]  # ‖h‖ per layer, right after this character
    cell_norms: tuple[float, ...]  # ‖c‖ per layer for an LSTM (its long-term memory), else ()
    gates: tuple[dict[str, float], ...]  # per layer: gate name -> mean over units
    units: torch.Tensor  # (hidden,) the top layer's h, every unit: the heatmap's raw material
    memory: Memory | None = None  # who he and she mean after this character (None: no readout)


@dataclass
class TurnResult:
    """A finished turn, as the transcript and the carryover table record it."""

    question: str
    reply: str
    carry: bool  # was the memory carried into this turn?
    stopped: bool  # did the user stop the reply early (Escape)?
    norms_in: tuple[float, ...]  # ‖h‖ per layer that the turn started from (0 when not carried)
    norms_out: tuple[float, ...]  # ‖h‖ per layer after the reply and its newline
    cosine: float | None  # cos(state ending the previous turn, state ending this one)
    norms: tuple[tuple[float, ...], ...] = ()  # ‖h‖ per layer after each reply character
    cell_norms: tuple[tuple[float, ...], ...] = ()  # ‖c‖ likewise, for an LSTM
    memory_out: Memory | None = None  # who he and she mean after the turn (None: no readout)
    # Heavy and only needed for a moment: the UI keeps them for the newest turn only (`slim`).
    ticks: tuple[Tick, ...] = field(repr=False, default=())
    end_state: torch.Tensor | None = field(repr=False, default=None)  # all layers' h, flattened

    def slim(self) -> "TurnResult":
        """This result without its ticks and end state: what a long transcript keeps per turn."""
        return dataclasses.replace(self, ticks=(), end_state=None)


def flat_hidden(state) -> torch.Tensor:
    """Every layer's h in one vector: (layers * hidden,). For an LSTM, h only (not the cell c)."""
    return hidden_of(state)[:, 0].reshape(-1).detach().clone()


def cell_norms(state) -> tuple[float, ...]:
    """‖c‖ per layer of an LSTM state; () for a GRU or RNN, which have no separate cell."""
    if not isinstance(state, tuple):
        return ()
    return tuple(float(x) for x in torch.linalg.vector_norm(state[1][:, 0], dim=-1))


def cosine(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    """Cosine similarity of two state vectors; None when either is missing, 0 when one is zero."""
    if a is None or b is None:
        return None
    if float(a.norm()) == 0.0 or float(b.norm()) == 0.0:
        return 0.0
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def zero_memory(session: ChatSession, readout: Readout) -> Memory:
    """Who he and she mean in the all-zero state (after ctrl+r, or a turn with memory off)."""
    return readout.read(session.model.zero_state(1, session.device))


def run_turn(session: ChatSession, question: str, *,
             on_progress: Callable[[tuple[Tick, ...]], None] = lambda ticks: None,
             should_stop: Callable[[], bool] = lambda: False,
             previous_end: torch.Tensor | None = None,
             readout: Readout | None = None,
             on_prompt: Callable[[str, Memory], None] = lambda fed, memory: None) -> TurnResult:
    """Ask `question`, calling `on_progress` with the ticks so far after every character.

    `should_stop()` is polled after each character; when it turns true the stream is closed,
    which makes the session feed the newline (its `finally`), so the state stays consistent.
    Raises ValueError, as `ChatSession.stream` does, for a question it refuses.

    With a `readout`, `on_prompt(fed, memory)` is called after each character of the prompt
    before the reply begins (`fed`: the prompt so far), and every tick and the result carry who
    he and she mean. `should_stop()` is polled during the prompt too; stopping there skips the
    rest of the prompt's readings, not the prompt (the reply stops after its first character).
    """
    carry = session.carry
    layers = session.checkpoint.config.layers
    norms_in = session.norms() if carry else (0.0,) * layers
    stream = session.stream(question)  # validates now: a refused question changes nothing
    if readout is not None:
        trace = session.trace_prompt(question)  # leaves the session as it is
        probs = readout.probabilities(trace.hidden)  # (characters, 2, classes), in one call
        for i in range(len(trace.text)):
            on_prompt(trace.text[:i + 1], readout.readings(probs[i]))
            if should_stop():
                break
    ticks: list[Tick] = []
    stopped = False
    gate_cache: tuple[object, tuple[dict[str, float], ...]] = (None, ())
    memory_cache: tuple[object, Memory | None] = (None, None)
    try:
        for step in stream:
            # A multi-character token yields several steps sharing one `norms` object: trace once.
            if gate_cache[0] is not step.norms:
                trace = session.trace_last()
                gate_cache = (step.norms, tuple(gates.gate_means(trace)) if trace else ())
            units = hidden_of(session.state)[-1, 0].detach().clone()  # (hidden,) the top layer
            if readout is not None and memory_cache[0] is not step.norms:
                memory_cache = (step.norms, readout.readings(readout.probabilities(units)))
            ticks.append(Tick(step.char, step.norms, cell_norms(session.state), gate_cache[1],
                              units, memory_cache[1]))
            on_progress(tuple(ticks))
            if should_stop():
                stopped = True
                break
    finally:
        stream.close()  # feeds the reply's newline, even when stopped early
    end = flat_hidden(session.state)
    return TurnResult(question=question, reply="".join(t.char for t in ticks), carry=carry,
                      stopped=stopped, norms_in=tuple(norms_in), norms_out=session.norms(),
                      cosine=cosine(previous_end, end), norms=tuple(t.norms for t in ticks),
                      cell_norms=tuple(t.cell_norms for t in ticks),
                      memory_out=readout.read(session.state) if readout is not None else None,
                      ticks=tuple(ticks), end_state=end)


def zeroed_answer(session: ChatSession, question: str) -> str:
    """The answer to `question` from an all-zero state, leaving `session` untouched.

    A second `ChatSession` over the same checkpoint, with the same sampling settings: the
    stateless twin that ctrl+d puts beside the answer the carried memory gave.
    """
    twin = ChatSession(session.checkpoint, carry=False, temperature=session.temperature,
                       top_k=session.top_k)
    return twin.ask(question)
