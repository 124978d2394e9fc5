"""ChatSession mechanics on a tiny model, and the shipped checkpoint's behaviour."""

import gc
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from contextbot import ChatSession
from contextbot.chat import MAX_QUESTION, MAX_REPLY, clean_question
from contextbot.text.turns import END_PART, PROMPT_PART, REPLY_PART, drive, prompt

from .conftest import SHIPPED_GRU


def test_ask_feeds_the_question_and_the_reply_into_the_state(tiny_checkpoint):
    s = ChatSession.load(tiny_checkpoint)
    zero = s.state.clone()
    reply = s.ask("Who is Tom Cruise?")
    assert isinstance(reply, str) and "\n" not in reply
    assert not torch.equal(s.state, zero)
    # The state after a turn is exactly: zero state + prompt + reply + newline, fed in one call.
    tok, m = s.tokenizer, s.model
    ids = tok.encode(prompt("Who is Tom Cruise?")) + tok.encode(reply) + [tok.newline_id]
    _, expected = m(torch.tensor([ids]))
    torch.testing.assert_close(s.state, expected)


def module_turn(model, question, tok, state, stop_after=None):
    """One turn through `turns.drive` with PyTorch's module and an argmax: the protocol by itself.
    Returns (reply, state after the turn, the parts fed in order)."""
    parts = []

    def feed(tokens, part):
        nonlocal state
        parts.append(part)
        logits, state = model(torch.tensor([list(tokens)]), state)
        return logits[0, -1]

    reply = ""
    turn = drive(tok, question, feed, lambda logits: int(logits.argmax()), MAX_REPLY)
    for n, (_, text) in enumerate(turn, 1):
        reply += text
        if n == stop_after:
            turn.close()  # a reader that stops early
            break
    return reply, state, parts


def test_the_turn_driver_gives_what_a_session_gives(tiny_checkpoint):
    """The protocol written once (turns.drive) with the module: the same reply and state as
    ChatSession.ask (Stepper, its greedy fast path); and a turn stopped early still ends with the
    newline, after what was shown."""
    s = ChatSession.load(tiny_checkpoint)
    tok, model = s.tokenizer, s.model
    want = s.ask("Who is Tom Cruise?")
    with torch.inference_mode():
        reply, state, parts = module_turn(model, "Who is Tom Cruise?", tok, None)
    assert reply == want
    torch.testing.assert_close(state, s.state, atol=1e-5, rtol=1e-5)
    assert parts == [PROMPT_PART] + [REPLY_PART] * len(tok.encode(reply)) + [END_PART]

    with torch.inference_mode():
        shown, state, parts = module_turn(model, "Who is Tom Cruise?", tok, None, stop_after=2)
        _, expected = model(torch.tensor([tok.encode(prompt("Who is Tom Cruise?") + shown + "\n")]))
    assert shown == want[:2] and parts[-1] == END_PART
    torch.testing.assert_close(state, expected, atol=1e-5, rtol=1e-5)


def test_a_sampled_turn_is_the_driver_with_the_sessions_sampler(tiny_checkpoint):
    """A sampled turn is `drive` with Stepper's feed and the session's seeded draw: the same
    reply and state as the module driven with a generator seeded alike."""
    s = ChatSession.load(tiny_checkpoint, temperature=1.0, top_k=5, seed=4)
    want = s.ask("Hi")
    twin = ChatSession.load(tiny_checkpoint, temperature=1.0, top_k=5, seed=4)
    state = None

    def feed(tokens, part):
        nonlocal state
        logits, state = twin.model(torch.tensor([list(tokens)]), state)
        return logits[0, -1]

    with torch.inference_mode():
        reply = "".join(text for _, text in drive(twin.tokenizer, "Hi", feed, twin._pick, MAX_REPLY))
    assert reply == want
    torch.testing.assert_close(state, s.state, atol=1e-5, rtol=1e-5)


def test_reply_length_is_bounded(tiny_checkpoint):
    s = ChatSession.load(tiny_checkpoint)  # random weights rarely emit a newline
    assert len(s.tokenizer.encode(s.ask("x"))) <= MAX_REPLY


def test_stream_yields_characters_with_per_layer_norms(tiny_checkpoint):
    s = ChatSession.load(tiny_checkpoint)
    steps = list(s.stream("Where does he live?"))
    assert steps and all(len(st.char) == 1 for st in steps)
    assert all(len(st.norms) == s.model.config.layers for st in steps)
    s.reset()
    assert "".join(st.char for st in steps) == s.ask("Where does he live?")


def test_reset_zeroes_and_carry_false_starts_every_turn_from_zero(tiny_checkpoint):
    s = ChatSession.load(tiny_checkpoint)
    first = s.ask("Who is Megan Fox?")
    s.ask("Hello")
    s.reset()
    assert torch.count_nonzero(s.state) == 0 and s.chars_seen == 0
    s.carry = False
    s.ask("Hello")
    assert s.ask("Who is Megan Fox?") == first


def test_control_characters_are_dropped_and_long_input_refused(tiny_checkpoint):
    assert clean_question("Who\x1b[31m is\u202e Tom\x00?\n") == "Who[31m is Tom?"
    s = ChatSession.load(tiny_checkpoint)
    before = s.state.clone()
    with pytest.raises(ValueError, match="too long"):
        s.stream("x" * (MAX_QUESTION + 1))
    assert torch.equal(s.state, before)  # a refused question changes nothing
    assert isinstance(s.ask("😀 who is ☃?"), str)


def test_stopping_a_stream_early_leaves_a_consistent_state(tiny_checkpoint):
    s = ChatSession.load(tiny_checkpoint)
    it = s.stream("Who is Tom Cruise?")
    next(it)
    it.close()  # what a UI's Escape does
    assert isinstance(s.ask("Where does he live?"), str)


def test_sampling_is_seeded_and_temperature_zero_is_greedy(tiny_checkpoint):
    a = ChatSession.load(tiny_checkpoint, temperature=1.0, top_k=5, seed=3).ask("Hi")
    b = ChatSession.load(tiny_checkpoint, temperature=1.0, top_k=5, seed=3).ask("Hi")
    assert a == b
    g1 = ChatSession.load(tiny_checkpoint, seed=1).ask("Hi")
    g2 = ChatSession.load(tiny_checkpoint, seed=2).ask("Hi")
    assert g1 == g2


def test_load_defaults_to_env_checkpoint(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("CONTEXTBOT_CHECKPOINT", str(tiny_checkpoint))
    assert ChatSession.load().checkpoint.path == tiny_checkpoint


# -- the shipped checkpoint ------------------------------------------------------------------

def test_shipped_gru_answers_tom_cruise_and_megan_fox(shipped_gru):
    s = shipped_gru
    s.reset()
    assert s.ask("Who is Tom Cruise?") == "He is an American actor."
    assert s.ask("Where does he live?") == "He lives in Beverly Hills."
    assert s.ask("Who is Megan Fox?") == "She is an American actress."
    assert s.ask("Where does she live?") == "She lives in Los Angeles."
    assert s.ask("Whom did she marry?") == "She married Brian Austin Green."
    s.reset()


def test_cli_ask_arguments_and_stdin(shipped_gru):
    args = ["Who is Tom Cruise?", "Where does he live?"]
    r = subprocess.run([sys.executable, "-m", "contextbot", "ask", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["He is an American actor.", "He lives in Beverly Hills."]
    r = subprocess.run([sys.executable, "-m", "contextbot", "ask"], input="\n".join(args) + "\n",
                       capture_output=True, text=True)
    assert r.stdout.splitlines() == ["He is an American actor.", "He lives in Beverly Hills."]
    r = subprocess.run([sys.executable, "-m", "contextbot", "ask", "--no-carry", *args],
                       capture_output=True, text=True)
    assert r.stdout.splitlines()[1] != "He lives in Beverly Hills."


def test_interactive_ask_refuses_a_bad_question_and_goes_on(tiny_checkpoint, monkeypatch, capsys):
    """At the `you>` prompt a too-long question is one error line, and the conversation goes on
    with its state (piped input still stops with exit 2, tested with the other hostile input)."""
    from contextbot import chat as session_module
    from contextbot.cli import main

    typed = iter(["Hi", "x" * (session_module.MAX_QUESTION + 1), "Hi"])

    def fake_input(prompt):
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", fake_input)
    asked = []
    real_ask = session_module.ChatSession.ask
    monkeypatch.setattr(session_module.ChatSession, "ask",
                        lambda self, q: asked.append((q, self.chars_seen)) or real_ask(self, q))
    assert main(["ask", "--checkpoint", str(tiny_checkpoint)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("contextbot: error: question is too long"), err
    assert [q[:2] for q, _ in asked] == ["Hi", "xx", "Hi"]
    assert asked[2][1] == asked[1][1] > 0  # the same session: the refusal left its state as it was


# -- a long conversation ---------------------------------------------------------------------------

def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _thousand_turns():
    """1000 turns without a reset (a 50-turn script of introductions, follow-ups and small talk,
    20 times) on the shipped GRU; returns the session and what was measured on the way."""
    from contextbot.paths import DEFAULT_FACTS
    from contextbot.text.dialogue import training_conversation
    from contextbot.text.facts import load_facts

    s = ChatSession.load(SHIPPED_GRU)
    rng = random.Random(11)
    entities = load_facts(DEFAULT_FACTS)
    script: list[str] = []
    while len(script) < 50:
        script += [t.question for t in training_conversation(rng, entities)]
    script = script[:50]
    times, norms = [], []
    for turn in range(1000):
        if turn == 100:
            gc.collect()
            rss_100 = _rss_bytes()
        question = script[turn % len(script)]
        t0 = time.process_time()  # CPU time: what other programs on the machine do not change
        reply = s.ask(question)
        # per character fed and generated, so that longer or shorter replies do not count
        times.append((time.process_time() - t0) / (len(question) + len(reply) + 8))
        norms.append(max(s.norms()))
        assert torch.isfinite(s.state).all()
    gc.collect()
    return s, (_rss_bytes() - rss_100) / 2**20, times, norms


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
@pytest.mark.shipped
def test_a_1000_turn_conversation_stays_fast_small_and_finite():
    """After 1000 turns the memory has not grown, a turn costs no more at the end than at the
    start (CPU time per character, the same questions at both ends), ‖h‖ stays within its bound,
    and a reset gives back exactly a fresh bot."""
    s, growth_mb, times, norms = _thousand_turns()
    bound = s.model.config.hidden ** 0.5  # |h_i| < 1 for a GRU: ‖h‖ < sqrt(hidden)
    first, last = statistics.median(times[:100]), statistics.median(times[-100:])
    print(f"RSS growth over turns 100-1000: {growth_mb:.2f} MB; median CPU time per character "
          f"{first * 1e6:.0f} µs (first 100 turns) and {last * 1e6:.0f} µs (last 100); "
          f"max ‖h‖ {max(norms):.2f} of {bound:.1f}")
    assert growth_mb < 5
    assert last < 1.5 * first  # a ratio, not a time limit
    assert max(norms) < bound
    s.reset()
    fresh = ChatSession.load(SHIPPED_GRU)
    for q in ("Who is Megan Fox?", "Where does she live?", "Who is Tom Cruise?", "Where does he live?"):
        assert s.ask(q) == fresh.ask(q)


@pytest.mark.slow
@pytest.mark.shipped
def test_after_1000_turns_the_bot_still_follows_a_new_introduction():
    """Carried over the whole conversation, a new introduction still sets who "he" means."""
    s, *_ = _thousand_turns()
    assert s.ask("Who is Tom Cruise?") == "He is an American actor."
    assert s.ask("Where does he live?") == "He lives in Beverly Hills."


# -- trace_prompt: the state while the question is read ----------------------------------------------
@pytest.mark.parametrize("carry", [True, False])
def test_trace_prompt_is_the_prompt_fed_through_the_module_and_changes_nothing(tiny_checkpoint, carry):
    s = ChatSession.load(tiny_checkpoint)
    s.ask("Who is Tom Cruise?")
    s.carry = carry
    state, seen, last = s.state.clone(), s.chars_seen, s._last
    trace = s.trace_prompt("  Where does\the live? ")  # cleaned as `stream` cleans it
    assert trace.text == prompt(clean_question("  Where does\the live? "))
    assert trace.hidden.shape == (len(trace.text), s.model.config.hidden)
    # The top layer's h after each character: the module's output, from the state the turn starts
    # from (the carried one, or zero with carry off).
    start = state if carry else s.model.zero_state(1)
    with torch.no_grad():
        x = s.model.embedding(torch.tensor([s.tokenizer.encode(trace.text)]))
        out, _ = s.model.rnn(x, start)
    torch.testing.assert_close(trace.hidden, out[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(s.state, state) and s.chars_seen == seen and s._last is last
    if not carry:  # with carry off, the turn itself still starts from zero
        assert s.ask("Where does he live?") == ChatSession.load(tiny_checkpoint).ask("Where does he live?")


def test_trace_prompt_refuses_what_stream_refuses(tiny_checkpoint):
    s = ChatSession.load(tiny_checkpoint)
    with pytest.raises(ValueError):
        s.trace_prompt("x" * (MAX_QUESTION + 1))
    assert float(s.state.abs().sum()) == 0.0 and s.chars_seen == 0
