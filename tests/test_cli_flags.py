"""The numeric flags of `ask`, `eval` and `inspect`, `--version`, each subcommand's `--help`, and
line editing at `ask`'s prompt.

Every flag is tried with the values that break naive code (nan, inf, negative, zero, 10**30, the
edges of its range): each is either used or refused in one line with exit code 2, never a
traceback. Refusals come before the checkpoint is loaded, so most cases name a checkpoint that
does not exist and must still get the flag's own message.
"""

from __future__ import annotations

import io
import math
import sys

import pytest

import contextbot
from contextbot import chat
from contextbot import cli as cli_mod
from contextbot.chat import ChatSession
from contextbot.errors import ContextbotError
from contextbot.model import checkpoint

from .conftest import assert_one_line_error, cli, run

BIG = 10**30


@pytest.fixture
def missing(tmp_path):
    """A checkpoint path that does not exist: a flag error must come before it is noticed."""
    return tmp_path / "missing.safetensors"


@pytest.fixture
def short_replies(monkeypatch):
    monkeypatch.setattr(chat, "MAX_REPLY", 12)  # a random model talks for 300 tokens


# -- ask: --temperature, --top-k, --seed ------------------------------------------------------
@pytest.mark.parametrize("argv,match", [
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--temperature", "NaN"], "--temperature must be a finite number"),
    (["--temperature", "inf"], "--temperature must be a finite number"),
    (["--temperature=-inf"], "--temperature must be a finite number"),
    (["--temperature", "1e309"], "--temperature must be a finite number"),  # parses as inf
    (["--temperature", "-1"], "--temperature must be 0 .greedy. or more"),
    (["--temperature", "-0.5"], "--temperature must be 0 .greedy. or more"),
    (["--temperature", "1e-300"], "would overflow"),
    (["--temperature", "5e-324"], "would overflow"),  # the smallest float above 0
    (["--temperature", "0.0009"], "would overflow"),
    (["--temperature", "0.8", "--top-k", "-1"], "--top-k must be at least 1"),
    (["--temperature", "0.8", "--top-k", "0"], "--top-k must be at least 1"),
    (["--top-k", "0"], "--top-k must be at least 1"),  # refused even when greedy ignores it
    (["--top-k", str(-BIG)], "--top-k must be at least 1"),
    (["--top-k", "nan"], "invalid int value"),
    (["--top-k", "inf"], "invalid int value"),
    (["--seed", "-1"], "--seed must be from 0 to 2..64 - 1"),
    (["--seed", str(2**64)], "--seed must be from 0 to 2..64 - 1"),
    (["--seed", str(BIG)], "a number of 31 digits"),
    (["--seed", str(-BIG)], "--seed must be from 0"),
    (["--seed", "9" * 4000], "a number of 4000 digits"),
    (["--seed", "9" * 5000], "invalid int value"),  # beyond Python's int() digit limit
    (["--seed", "nan"], "invalid int value"),
])
def test_ask_refuses_bad_sampling_flags_in_one_line(capsys, missing, argv, match):
    rc, out, err = cli(capsys, "ask", "--checkpoint", missing, *argv, "Who is Tom Cruise?")
    assert_one_line_error(rc, err, match)
    assert out == ""


@pytest.mark.parametrize("argv", [
    ["--temperature", "0.001"],  # the smallest allowed
    ["--temperature", "1e30"],  # huge: sampling is uniform, but nothing overflows
    ["--temperature", "0.8", "--top-k", "1"],
    ["--temperature", "0.8", "--top-k", str(BIG)],  # more than the vocabulary: all of it
    ["--temperature", "0.8", "--seed", str(2**64 - 1)],
    ["--temperature", "0.8", "--seed", "0"],
    ["--top-k", "3"],  # greedy: top-k is ignored
])
def test_ask_uses_the_edges_of_each_range(capsys, tiny_checkpoint, short_replies, argv):
    rc, out, err = cli(capsys, "ask", "--checkpoint", tiny_checkpoint, *argv, "Who is Tom Cruise?",
                       "Where does he live?")
    assert rc == 0, err
    assert err == "" and out.count("\n") == 2


def test_sampling_with_the_same_seed_is_the_same(capsys, tiny_checkpoint, short_replies):
    argv = ["ask", "--checkpoint", tiny_checkpoint, "--temperature", "1.5", "--seed", str(2**64 - 1),
            "Who is Tom Cruise?"]
    assert cli(capsys, *argv) == cli(capsys, *argv)


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": 1e-300}, "temperature"),
    ({"temperature": "0.5"}, "temperature"),
    ({"temperature": 0.8, "top_k": 0}, "top_k"),
    ({"temperature": 0.8, "top_k": -1}, "top_k"),
    ({"temperature": 0.8, "top_k": 2.5}, "top_k"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"seed": BIG}, "seed"),
    ({"seed": 1.5}, "seed"),
])
def test_chat_session_checks_its_arguments(tiny_checkpoint, kwargs, match):
    """ChatSession is public API: the same checks as the flags, for callers from Python."""
    ck = checkpoint.load(tiny_checkpoint)
    with pytest.raises(ContextbotError, match=match) as e:
        ChatSession(ck, **kwargs)
    assert "\n" not in str(e.value)
    with pytest.raises(ContextbotError, match=match):
        ChatSession.load(tiny_checkpoint, **kwargs)


def test_chat_session_accepts_the_edges(tiny_checkpoint, short_replies):
    ck = checkpoint.load(tiny_checkpoint)
    for kwargs in ({"temperature": 0}, {"temperature": ChatSession.MIN_TEMPERATURE, "top_k": 1},
                   {"temperature": 1e30, "top_k": BIG, "seed": 2**64 - 1}):
        ChatSession(ck, **kwargs).ask("Who is Tom Cruise?")


# -- eval and inspect: the counting flags -----------------------------------------------------
@pytest.mark.parametrize("argv,match", [
    (["eval", "--per-category", "0"], "--per-category must be from 1 to"),
    (["eval", "--per-category", "-1"], "--per-category must be from 1 to"),
    (["eval", "--per-category", str(cli_mod.MAX_PER_CATEGORY + 1)], "--per-category must be from 1 to"),
    (["eval", "--per-category", str(BIG)], "a number of 31 digits"),
    (["eval", "--per-category", "nan"], "invalid int value"),
    (["eval", "--per-category", "inf"], "invalid int value"),
    (["eval", "--seed", "nan"], "invalid int value"),
    (["eval", "--seed", "1.5"], "invalid int value"),
    (["inspect", "--probe", "--conversations", "2"], "--conversations must be from 3 to"),
    (["inspect", "--probe", "--conversations", "-1"], "--conversations must be from 3 to"),
    (["inspect", "--probe", "--conversations", "10001"], "--conversations must be from 3 to 10000"),
    (["inspect", "--probe", "--conversations", str(BIG)], "a number of 31 digits"),
    (["inspect", "--probe", "--conversations", str(-BIG)], "--conversations must be from 3"),
    (["inspect", "--probe", "--conversations", "nan"], "invalid int value"),
    (["inspect", "--probe", "--conversations", "inf"], "invalid int value"),
])
def test_eval_and_inspect_refuse_absurd_counts_in_one_line(capsys, missing, argv, match):
    rc, out, err = cli(capsys, *argv, "--checkpoint", missing)
    assert_one_line_error(rc, err, match)
    assert out == ""


# Every numeric flag of ask, eval and inspect against the values that break naive code: the answer
# is the flag's own one-line refusal or, for a value the flag accepts, the next check's (here, the
# missing checkpoint): one line and exit code 2 either way, never a traceback.
NUMERIC_FLAGS = [("ask", "--temperature"), ("ask", "--top-k"), ("ask", "--seed"),
                 ("eval", "--seed"), ("eval", "--per-category"), ("inspect", "--conversations")]
HOSTILE = ["nan", "inf", "-inf", "-1", "0", str(BIG), str(-BIG), "1e-300", "1e400", "0x10", ""]


@pytest.mark.parametrize("command,flag", NUMERIC_FLAGS)
def test_every_numeric_flag_is_one_line_for_every_hostile_value(capsys, missing, command, flag):
    extra = ["--probe"] if flag == "--conversations" else []
    for value in HOSTILE:
        rc, out, err = cli(capsys, command, "--checkpoint", missing, *extra, f"{flag}={value}")
        assert_one_line_error(rc, err)
        assert out == ""


def test_eval_accepts_any_integer_seed():
    """`eval --seed` seeds a string-keyed generator: negative and huge seeds are fine, so they
    are not refused (the flag sweep above sees them reach the checkpoint check)."""
    from contextbot.analysis import evaluate
    from contextbot.paths import DEFAULT_FACTS
    from contextbot.text.facts import load_facts
    entities = load_facts(DEFAULT_FACTS)
    for seed in (-1, 0, BIG, -BIG, 2**64):
        assert len(evaluate.generate(entities, seed, per_category=1)) == len(evaluate.CATEGORIES)


# -- --version and --help ---------------------------------------------------------------------
def test_version(capsys):
    rc, out, err = cli(capsys, "--version")
    assert rc == 0 and err == ""
    assert out == f"contextbot {contextbot.__version__}\n" == "contextbot 0.1.0\n"


def test_version_as_a_process():
    r = run("--version")
    assert r.returncode == 0 and r.stdout == "contextbot 0.1.0\n" and r.stderr == ""


@pytest.mark.parametrize("command,first_line", [
    ("ask", "Ask questions of one conversation"),
    ("chat", "Chat in a terminal UI"),
    ("eval", "Score context tracking"),
    ("inspect", "Show how the hidden state carries context"),
    ("train", "Train a model on a corpus"),
])
def test_each_subcommand_help_has_a_description_and_examples(capsys, command, first_line):
    rc, out, err = cli(capsys, command, "--help")
    assert rc == 0 and err == ""
    assert first_line in " ".join(out.split())
    examples = out.split("examples:\n", 1)[1].splitlines()
    examples = [e for e in examples if e.strip()]
    assert 2 <= len(examples) <= 3
    for e in examples:  # each kept on its own line, not rewrapped into a paragraph
        assert e.startswith(f"  contextbot {command}"), e
    assert "--checkpoint" in out or "--out" in out  # the flags are still there
    if command == "train":  # train's flags are added lazily: still all there, before the epilog
        assert out.index("--hidden") < out.index("examples:")


# -- line editing at the prompt ---------------------------------------------------------------
class _Terminal(io.StringIO):
    """Standard input that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_ask_prompt_gets_line_editing_only_on_a_terminal(capsys, tiny_checkpoint, short_replies,
                                                          monkeypatch, tty):
    calls = []
    monkeypatch.setattr(cli_mod, "_line_editing", lambda: calls.append(1))
    stdin = _Terminal("Who is Tom Cruise?\n") if tty else io.StringIO("Who is Tom Cruise?\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    rc, out, err = cli(capsys, "ask", "--checkpoint", tiny_checkpoint)
    assert rc == 0, err
    assert calls == ([1] if tty else [])
    assert ("you> " in out) == tty


def test_line_editing_imports_readline_where_there_is_one(monkeypatch):
    pytest.importorskip("readline", reason="this Python has no readline")
    monkeypatch.delitem(sys.modules, "readline")
    cli_mod._line_editing()
    assert "readline" in sys.modules


def test_line_editing_without_readline_is_no_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "readline", None)  # as if it were missing: import fails
    cli_mod._line_editing()  # no exception
