"""The fast generation step (contextbot.model.recurrence.stepper) against PyTorch's own modules.

A chat turn is fed and generated with `Stepper` (compiled with Numba), not with `nn.GRU`; it is
only allowed to be faster, never different. So over a run of characters from a non-zero state,
its logits and state must equal the module's to 1e-5, for every cell, with one layer and with
several.
"""

import pytest
import torch

from contextbot.model.network import layer_norms
from contextbot.chat import MAX_REPLY, ChatSession
from contextbot.model.recurrence.stepper import Stepper
from contextbot.text.turns import prompt, turn

from ..conftest import build, random_state


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("layers", [1, 3])
def test_stepper_matches_the_module(cell, layers):
    model = build(cell, layers)
    stepper = Stepper(model)
    tokens = torch.randint(0, 23, (1, 20), generator=torch.Generator().manual_seed(3))
    ref = fast = random_state(model)
    with torch.inference_mode():
        for t in range(tokens.shape[1]):
            want, ref = model(tokens[:, t:t + 1], ref)
            got, fast = stepper.step(int(tokens[0, t]), fast)
            torch.testing.assert_close(got, want[0, 0], atol=1e-5, rtol=1e-5)
            for a, b in zip(as_tuple(fast), as_tuple(ref)):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_feeding_a_question_matches_one_module_call(cell, layers):
    """`feed` reads a run of tokens as the module does in one call: same last logits, same state,
    and the state it was given is left as it was (the session may still hold it)."""
    model = build(cell, layers)
    stepper = Stepper(model)
    tokens = torch.randint(0, 23, (1, 17), generator=torch.Generator().manual_seed(5))
    start = random_state(model)
    before = [t.clone() for t in as_tuple(start)]
    with torch.inference_mode():
        want, ref = model(tokens, start)
        got, fast = stepper.feed(tokens[0].tolist(), start)
    torch.testing.assert_close(got, want[0, -1], atol=1e-5, rtol=1e-5)
    for a, b in zip(as_tuple(fast), as_tuple(ref)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(as_tuple(start), before):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_answer_is_feed_then_greedy_steps(cell, layers):
    """`answer` (a whole greedy turn in one compiled call) equals `feed`, then `step` after `step`
    on the argmax, then the end token: the same tokens, the same state after each, the same
    norms; it stops before a stop token and at the limit; the state it was given is untouched."""
    prompt, end = [3, 5, 7, 11], 2
    for seed in range(20):  # a model whose free reply has a token that first appears mid-reply
        model = build(cell, layers, seed)
        stepper = Stepper(model)
        start = random_state(model)
        free = stepper.answer(prompt, start, 12, (), end).tokens
        mid = next((i for i in range(2, 12) if free.index(free[i]) == i), None)
        if mid is not None:
            break
    assert mid is not None, "no seed gave a reply that a stop token can cut in the middle"
    before = [t.clone() for t in as_tuple(start)]

    def by_steps(stops, limit):
        logits, state = stepper.feed(prompt, start)
        states, tokens = [state], []
        while len(tokens) < limit and int(logits.argmax()) not in stops:
            tokens.append(int(logits.argmax()))
            logits, state = stepper.step(tokens[-1], state)
            states.append(state)
        return tokens, states, stepper.step(end, state)[1]

    assert len(free) == 12  # nothing stops it: the limit does
    for stops, limit, n in [((), 12, 12), ((), 5, 5), ((), 0, 0), ((free[mid],), 12, mid), ((free[0],), 12, 0)]:
        got = stepper.answer(prompt, start, limit, stops, end)
        tokens, states, after_turn = by_steps(stops, limit)
        assert got.tokens == tokens and len(tokens) == n
        for i, want in enumerate(states, start=-1):
            for a, b in zip(as_tuple(got.state(i)), as_tuple(want)):
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
            assert got.norms(i) == pytest.approx(layer_norms(want), rel=1e-6)
        for past in (-2, len(tokens)):  # rows that were never written
            with pytest.raises(IndexError):
                got.state(past)
        for a, b in zip(as_tuple(got.after_turn), as_tuple(after_turn)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    for a, b in zip(as_tuple(start), before):
        assert torch.equal(a, b)
    with pytest.raises(IndexError):
        stepper.answer([1, 23], start, 4, (), end)
    for bad_end, bad_stops in ((23, ()), (2, (-1,)), (2, (23,))):
        with pytest.raises(IndexError):
            stepper.answer([1], start, 4, bad_stops, bad_end)


def test_a_stream_stopped_early_remembers_only_what_it_showed(tiny_checkpoint):
    """A UI's Escape after k characters: the state is the module's after the prompt, the first k
    characters of the reply and the newline, not after the whole reply that was computed."""
    session = ChatSession.load(tiny_checkpoint)
    model, tok = session.model, session.tokenizer
    full = session.ask("Who is Tom Cruise?")
    assert len(full) >= 3, "the tiny model's reply is too short for this test"
    session.reset()
    it = session.stream("Who is Tom Cruise?")
    shown = "".join(next(it).char for _ in range(2))
    it.close()
    with torch.inference_mode():
        ids = torch.tensor([tok.encode(turn("Who is Tom Cruise?", shown))])
        _, state = model(ids, None)
    torch.testing.assert_close(session.state, state, atol=1e-5, rtol=1e-5)


def test_a_session_replies_as_the_module_would(tiny_checkpoint):
    """A whole turn through ChatSession (Stepper) equals greedy decoding with the module itself."""
    session = ChatSession.load(tiny_checkpoint)
    model, tok = session.model, session.tokenizer
    reply = session.ask("Who is Tom Cruise?")
    with torch.inference_mode():
        ids = torch.tensor([tok.encode(prompt("Who is Tom Cruise?"))])
        logits, state = model(ids, None)
        out = []
        for _ in range(MAX_REPLY):  # the session stops at the same cap
            nxt = int(logits[0, -1].argmax())
            if nxt in tok.line_end_ids:
                break
            out.append(nxt)
            logits, state = model(torch.tensor([[nxt]]), state)
        _, state = model(torch.tensor([[tok.newline_id]]), state)
    assert tok.decode(out) == reply
    torch.testing.assert_close(session.state, state, atol=1e-5, rtol=1e-5)


def test_the_compiled_tanh_and_sigmoid_match_numpy():
    """The compiled σ and tanh (contextbot/model/recurrence/kernels.py): in float32 a rational approximation (Eigen's),
    within 3e-7 (about 5 units in the last place) everywhere, flat just inside ±1 far out, and
    odd; in float64 the exact functions."""
    import numba
    import numpy as np

    from contextbot.model.recurrence.kernels import JIT, sigmoid, tanh

    @numba.njit(**{k: v for k, v in JIT.items() if k != "cache"})
    def both(x, t, s):
        for i in range(x.shape[0]):
            t[i] = tanh(x[i])
            s[i] = sigmoid(x[i])

    def run(x):
        t, s = np.empty_like(x), np.empty_like(x)
        both(x, t, s)
        return t, s

    xs = np.concatenate([np.linspace(-30, 30, 4001), [-1e6, -8.0, -1e-6, 0.0, 1e-6, 8.0, 1e6]])
    exact_t, exact_s = np.tanh(xs), 0.5 + 0.5 * np.tanh(xs / 2)
    t32, s32 = run(xs.astype(np.float32))
    np.testing.assert_allclose(t32, exact_t, atol=3e-7, rtol=0)
    np.testing.assert_allclose(s32, exact_s, atol=3e-7, rtol=0)
    assert (np.abs(t32[np.abs(xs) >= 9]) >= np.float32(1 - 3e-7)).all() and (np.abs(t32) <= 1).all()
    np.testing.assert_array_equal(t32, -run(-xs.astype(np.float32))[0])
    t64, s64 = run(xs)
    np.testing.assert_allclose(t64, exact_t, atol=1e-15, rtol=0)
    np.testing.assert_allclose(s64, exact_s, atol=1e-15, rtol=0)


def test_a_token_outside_the_vocabulary_is_refused_not_read_out_of_bounds():
    """The compiled loop does not check bounds, so feed does, as nn.Embedding would."""
    model = build("gru", 1)
    stepper = Stepper(model)
    state = model.zero_state(1)
    for bad in (23, -1, 10 ** 6):
        with pytest.raises(IndexError):
            stepper.step(bad, state)
    with pytest.raises(IndexError):
        stepper.feed([1, 2, 23], state)
    stepper.feed([0, 22], state)  # the ends of the range are fine
