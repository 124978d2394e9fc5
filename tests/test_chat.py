"""ChatSession mechanics on a tiny model, and the shipped checkpoint's behaviour."""

import subprocess
import sys

import pytest
import torch

from contextbot import ChatSession
from contextbot.chat import MAX_QUESTION, MAX_REPLY, clean_question


def test_ask_feeds_the_question_and_the_reply_into_the_state(tiny_checkpoint):
    s = ChatSession.load(tiny_checkpoint)
    zero = s.state.clone()
    reply = s.ask("Who is Tom Cruise?")
    assert isinstance(reply, str) and "\n" not in reply
    assert not torch.equal(s.state, zero)
    # The state after a turn is exactly: zero state + prompt + reply + newline, fed in one call.
    tok, m = s.tokenizer, s.model
    ids = tok.encode("Q: Who is Tom Cruise?\nA: ") + tok.encode(reply) + [tok.newline_id]
    _, expected = m(torch.tensor([ids]))
    torch.testing.assert_close(s.state, expected)


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
