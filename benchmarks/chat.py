"""Chat speed: reply latency, first character, characters per second, and turn 1 vs turn 1000.

A typical turn is one of the seed dialogue's questions, asked through `ChatSession.ask` on the
shipped checkpoint, exactly as `contextbot ask` and the terminal UI do it.

The second half shows why the state is carried. A stateless bot that wants context must re-read
the whole conversation every turn: its turn n costs O(n). contextbot feeds only the new question
on top of the carried state: every turn costs the same. Both are timed at turns 1, 10, 100 and
1000 of one conversation; the re-feeding turn is answered from a reset state fed the transcript
so far, then the question.
"""

from __future__ import annotations

import statistics
import time

import torch

from contextbot.analysis.evaluate import SEED_DIALOGUE
from contextbot.chat import ChatSession
from contextbot.text.turns import prompt, reply

TYPICAL = [q for q, _ in SEED_DIALOGUE] + ["Who is Tom Cruise?", "Where does he live?",
                                           "Thanks!", "What is her profession?"]
CHECKPOINTS_AT = (1, 10, 100, 1000)


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def latency(session: ChatSession, turns: int) -> dict:
    """Median and 95th percentile of one turn, time to the first character, and throughput: reply
    characters per second of turn, and the time per character the turn read or wrote (its prompt,
    `Q: ...` and `A: `, its reply and the closing newline: with the shipped character tokenizer,
    each is one step of the recurrence).

    A greedy turn computes its whole reply in one compiled call before the first character is
    handed out (stepper.py, `Stepper.answer`), so the first character comes when the reply is done.
    """
    session.reset()
    for q in TYPICAL:  # warm-up
        session.ask(q)
    session.reset()
    whole, first, chars, steps = [], [], 0, 0
    for t in range(turns):
        q = TYPICAL[t % len(TYPICAL)]
        start = time.perf_counter()
        it = session.stream(q)
        n = 0
        for i, _ in enumerate(it):
            if i == 0:
                first.append(time.perf_counter() - start)
            n += 1
        whole.append(time.perf_counter() - start)
        chars += n
        steps += len(prompt(q)) + n + 1
    return {"turns": turns, "median_ms": statistics.median(whole) * 1e3,
            "p95_ms": _quantile(whole, 0.95) * 1e3,
            "first_char_median_ms": statistics.median(first) * 1e3,
            "reply_chars_mean": chars / turns,
            "chars_per_sec": chars / sum(whole),
            "ms_per_step": sum(whole) / steps * 1e3}


@torch.inference_mode()
def refeed_turn(session: ChatSession, history: str, question: str) -> float:
    """Seconds for one stateless turn: reset, feed the whole history, then answer the question."""
    start = time.perf_counter()
    session.reset()
    if history:
        ids = torch.tensor([session.tokenizer.encode(history)])
        _, session.state = session.model.forward_small(ids, session.state)
    session.ask(question)
    return time.perf_counter() - start


def turn_scaling(session: ChatSession, at: tuple[int, ...] = CHECKPOINTS_AT, repeats: int = 21,
                 refeed_repeats: int = 3) -> list[dict]:
    """The cost of turn n with the carried state, beside re-feeding the history, for n in `at`.

    One conversation is talked through to the last turn in `at`, keeping the state each measured
    turn starts from. Then each measured turn is asked again from its own saved state, `repeats`
    times, the turns taking their rounds in turn, so that a slow moment of the machine falls on
    all of them alike; the figure is the median. Turns 1, 10, 100 and 1000 ask the same question
    (TYPICAL has 9 questions), so they differ only in how much conversation came before.
    """
    session.reset()
    history: list[str] = []
    saved: dict[int, tuple] = {}
    for t in range(1, max(at) + 1):
        q = TYPICAL[(t - 1) % len(TYPICAL)]
        if t in at:
            saved[t] = (session.state, session.chars_seen, "".join(history), q)
        history.append(prompt(q) + reply(session.ask(q)))
    final = (session.state, session.chars_seen)
    carried: dict[int, list[float]] = {n: [] for n in at}
    for _ in range(repeats):
        for n in at:
            session.state, session.chars_seen = saved[n][0], saved[n][1]
            start = time.perf_counter()
            session.ask(saved[n][3])
            carried[n].append(time.perf_counter() - start)
    out = []
    for n in at:
        _, _, text, q = saved[n]
        refeed = statistics.median(refeed_turn(session, text, q) for _ in range(refeed_repeats))
        out.append({"turn": n, "history_chars": len(text), "carried_ms": statistics.median(carried[n]) * 1e3,
                    "refeed_ms": refeed * 1e3})
    session.state, session.chars_seen = final
    return out


def run(checkpoint: str | None = None, quick: bool = False) -> dict:
    session = ChatSession.load(checkpoint)
    lat = latency(session, 100 if quick else 500)
    scaling = turn_scaling(session, (1, 10, 100) if quick else CHECKPOINTS_AT)
    first, last = scaling[0]["carried_ms"], scaling[-1]["carried_ms"]
    return {"latency": lat, "turns": scaling, "last_over_first": last / first,
            "threads": torch.get_num_threads()}
