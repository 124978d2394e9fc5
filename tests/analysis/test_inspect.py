"""`contextbot inspect`: the trace, units, probe and plots on tiny models built here (mechanics),
and on the shipped GRU (behaviour)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from contextbot import ChatSession
from contextbot.model import checkpoint
from contextbot.analysis import plots, probe
from contextbot.analysis import trace as insp
from contextbot.analysis import units as units_mod
from contextbot.cli import main
from contextbot.paths import DEFAULT_FACTS
from contextbot.errors import ContextbotError
from contextbot.analysis.evaluate import SEED_DIALOGUE
from contextbot.text.facts import load_facts
from contextbot.model.network import hidden_of
from contextbot.text.turns import turn as turn_text
from contextbot.text.turns import turn_ids

from ..conftest import SHIPPED_GRU, make_model
from ..conftest import run as run_process

PNG = b"\x89PNG\r\n\x1a\n"
QUESTIONS = ["Who is Tom Cruise?", "Where does he live?", "Who is Megan Fox?"]


@pytest.fixture(scope="module")
def entities():
    return load_facts(DEFAULT_FACTS)


def save_tiny(path, tok, cell="gru", layers=1):
    """A random model that never emits a byte piece or <unk>, so that every generated token
    is one character."""
    model = make_model(tok, cell, layers=layers)
    with torch.no_grad():
        for i in range(tok.vocab_size):
            if tok.piece_byte[i] is not None or tok.piece_text[i] == "":
                model.head.bias[i] = -1e4
    checkpoint.save(path, model, tok, step=0)
    return path


@pytest.fixture
def tiny(tmp_path, tiny_tokenizer):
    return save_tiny(tmp_path / "tiny.safetensors", tiny_tokenizer)


def run_cli(capsys, *argv):
    rc = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


# -- the trace ----------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # printed by mkldnn.flags
@pytest.mark.parametrize("cell,layers", [("gru", 1), ("lstm", 2), ("rnn", 1)])
def test_trace_follows_the_session_protocol(tmp_path, tiny_tokenizer, cell, layers):
    path = save_tiny(tmp_path / f"{cell}.safetensors", tiny_tokenizer, cell, layers)
    ckpt = checkpoint.load(path)
    # oneDNN's LSTM takes tens of milliseconds per single-token call on CPU; the plain kernel
    # takes a fraction of one, and random weights make 300-token replies.
    with torch.backends.mkldnn.flags(enabled=False):
        turns = insp.trace_conversation(ckpt, QUESTIONS)
        carried, zeroed = ChatSession.load(path), ChatSession.load(path, carry=False)
        for turn, q in zip(turns, QUESTIONS):
            assert turn.reply == carried.ask(q)
            assert turn.reply_zeroed == zeroed.ask(q)
            torch.testing.assert_close(hidden_of(turn.state_out), hidden_of(carried.state))
    assert turns[1].state_in is turns[0].state_out  # the state is carried from turn to turn
    assert not turns[0].changed  # the first turn starts from zeros either way
    steps = turns[0].steps
    assert "".join(s.text for s in steps) == turn_text(QUESTIONS[0], turns[0].reply)
    assert [s.part for s in steps][-1] == "end"
    assert all(len(s.norms) == layers and len(s.gates) == layers and len(s.top) == 5 for s in steps)
    assert steps[0].hidden.shape == (layers * 16,)


def test_turn_summary_compares_turn_end_states(tiny):
    turns = insp.trace_conversation(checkpoint.load(tiny), QUESTIONS[:2])
    first, second = insp.turn_summary(turns[0]), insp.turn_summary(turns[1])
    assert first["norm_in"] == [0.0] and first["cosine_to_previous"] == [None]
    assert second["norm_in"] == pytest.approx(first["norm_out"])
    a, b = hidden_of(turns[0].state_out)[0, 0], hidden_of(turns[1].state_out)[0, 0]
    assert second["cosine_to_previous"][0] == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-5)
    assert second["distance_to_previous"][0] == pytest.approx(float((a - b).norm()), abs=1e-5)
    assert set(second["gate_means"][0]) == {"update", "reset"}
    assert all(0 <= v <= 1 for v in second["saturated"][0].values())


def test_json_has_one_entry_per_generated_character(tiny, capsys):
    rc, out, _ = run_cli(capsys, "--checkpoint", tiny, "--json", *QUESTIONS[:2])
    assert rc == 0
    trace = json.loads(out)
    assert trace["sha256"] == checkpoint.file_sha256(tiny)
    assert trace["config"]["cell"] == "gru"
    for t in trace["turns"]:
        reply = [c for c in t["characters"] if c["part"] == "reply"]
        assert "".join(c["char"] for c in reply) == t["reply"]
        assert len(reply) == len(t["reply"])
        c = t["characters"][0]
        assert set(c) >= {"char", "norms", "gates", "top5"}
        probs = [p for _, p in c["top5"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)


def test_script_file_is_one_question_per_line(tiny, tmp_path, capsys):
    script = tmp_path / "talk.txt"
    script.write_text(QUESTIONS[0] + "\n\n" + QUESTIONS[1] + "\n", encoding="utf-8")
    _, from_file, _ = run_cli(capsys, "--checkpoint", tiny, "--json", "--script", script)
    _, from_args, _ = run_cli(capsys, "--checkpoint", tiny, "--json", *QUESTIONS[:2])
    assert json.loads(from_file) == json.loads(from_args)


def test_table_is_printed(tiny, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps the table to the terminal's width
    rc, out, _ = run_cli(capsys, "--checkpoint", tiny, *QUESTIONS[:2])
    assert rc == 0 and "carry changed it" in out and "Where does he live?" in out


# -- units --------------------------------------------------------------------------------------
def test_units_are_on_over_the_phrase(tiny):
    turns = insp.trace_conversation(checkpoint.load(tiny), QUESTIONS, zeroed=False)
    units = units_mod.find_units(turns, "tom cruise", hidden_size=16, k=4)  # case-insensitive
    start, end = units.span
    assert units.text[start:end] == "Tom Cruise"
    span = sorted({units.char_step[i] for i in range(start, end)})
    assert len(units.labels) == 4 and units.z.shape == (4, len(units.char_step))
    assert (units.z[:, span].mean(1) > 0).all()  # oriented: on over the phrase is positive
    assert units.echoes and all(e["at"] >= end for e in units.echoes)  # where they fire *again*
    assert units.echoes == sorted(units.echoes, key=lambda e: -e["score"])
    with pytest.raises(ContextbotError, match="does not occur"):
        units_mod.find_units(turns, "Cruis", hidden_size=16)  # whole words only


def test_units_cli_prints_and_plots(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(insp, "MAX_REPLY", 40)  # random weights talk for 300 characters
    out_png = tmp_path / "units.png"
    rc, out, _ = run_cli(capsys, "--checkpoint", tiny, "--units", "Tom", "--plot", out_png, QUESTIONS[0])
    assert rc == 0 and "most on over 'Tom'" in out
    assert out_png.read_bytes()[:8] == PNG


# -- plots --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_plot_is_a_png(tmp_path, tiny_tokenizer, capsys, monkeypatch, cell):
    monkeypatch.setattr(insp, "MAX_REPLY", 40)  # a narrower figure draws faster
    path = save_tiny(tmp_path / f"{cell}.safetensors", tiny_tokenizer, cell)
    out_png = tmp_path / "trace.png"
    rc, _, _ = run_cli(capsys, "--checkpoint", path, "--plot", out_png, QUESTIONS[0])
    assert rc == 0
    assert out_png.read_bytes()[:8] == PNG


# -- the probe ----------------------------------------------------------------------------------
def test_linear_probe_learns_a_linear_rule():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g)
    y = (x @ torch.randn(5, 3, generator=g)).argmax(1)  # a rule that softmax(W x + b) can express
    p = probe.LinearProbe(3).fit(x[:200], y[:200])
    assert (p.predict(x[200:]) == y[200:]).float().mean() > 0.85


@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("gru", 1)])
def test_batched_turn_end_states_equal_one_conversation_at_a_time(tmp_path, tiny_tokenizer, entities, cell, layers):
    model = make_model(tiny_tokenizer, cell, layers=layers)
    convs = probe.make_conversations(entities, 5, "test", seed=1)
    got = probe.turn_end_states(model, tiny_tokenizer, convs)
    row = 0
    for conv in convs:
        state, ends = model.zero_state(1), []
        with torch.no_grad():
            for t in conv.turns:
                prompt_ids, reply_ids = turn_ids(tiny_tokenizer, t.question, t.answer)
                ids = prompt_ids + reply_ids
                _, state = model(torch.tensor([ids]), state)
                ends.append(probe.flat_state(state)[0])
        for turn, *_ in conv.labels:
            torch.testing.assert_close(got[row], ends[turn], atol=1e-5, rtol=1e-4)
            row += 1
    assert row == len(got)


def test_probe_labels_follow_the_dialogue(entities):
    for conv in probe.make_conversations(entities, 20, "train"):
        turn, referent, gender, distance = conv.labels[0]
        assert distance == 0 and conv.turns[turn].kind == "intro"
        assert entities[referent].name in conv.turns[turn].question
        assert probe.GENDERS[gender] == entities[referent].pronoun
        assert [lab[3] for lab in conv.labels] == list(range(probe.MAX_DISTANCE + 1))
        assert all(conv.turns[lab[0]].kind == "small_talk" for lab in conv.labels[1:])
        assert {lab[1] for lab in conv.labels} == {referent}


def test_probe_cli_on_tiny_models(tmp_path, tiny_tokenizer, capsys):
    a = save_tiny(tmp_path / "gru.safetensors", tiny_tokenizer, "gru")
    b = save_tiny(tmp_path / "rnn.safetensors", tiny_tokenizer, "rnn")
    out_png = tmp_path / "probe.png"
    rc, out, _ = run_cli(capsys, "--probe", "--checkpoint", a, "--checkpoint", b,
                         "--conversations", 12, "--plot", out_png, "--json")
    assert rc == 0
    results = json.loads(out)["results"]
    assert [r["cell"] for r in results] == ["gru", "rnn"]
    for r in results:
        for target in ("referent", "gender"):
            assert len(r["accuracy"][target]) == probe.MAX_DISTANCE + 1
            assert all(0 <= a <= 1 for a in r["accuracy"][target])
    assert out_png.read_bytes()[:8] == PNG


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--script", "{tmp}/missing.txt"], "no such script file"),
    (["--script", "{tmp}"], "is a directory"),
    (["--plot", "{tmp}/no/such/dir/out.png"], "cannot write the plot"),
    (["--plot", "{tmp}/out.bmpx"], "a plot must end in"),
    (["--plot", "{tmp}"], "a plot must end in"),
    (["--units", "Zaphod Beeblebrox", "Who is Tom Cruise?"], "does not occur"),
    (["--checkpoint", "{ckpt}", "Hi."], "several --checkpoint are for --probe only"),
    (["--conversations", "5"], "--conversations is for --probe"),
    (["--probe", "Hi."], "give no questions"),
    (["--probe", "--units", "x"], "not allowed with argument"),
])
def test_bad_input_is_one_line_and_exit_2(tiny, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, ckpt=tiny) for a in argv]
    rc, out, err = run_cli(capsys, "--checkpoint", tiny, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("contextbot: error: ") and message in err and err.count("\n") == 1


def test_bad_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    for argv in (["--checkpoint", bad], ["--probe", "--checkpoint", bad]):
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 2 and err.startswith("contextbot: error: ") and err.count("\n") == 1


# -- the shipped GRU ----------------------------------------------------------------------------
@pytest.mark.shipped
def test_shipped_gru_carry_changes_the_pronoun_answers_of_the_seed_dialogue(capsys, entities):
    rc, out, _ = run_cli(capsys, "--checkpoint", SHIPPED_GRU, "--json")
    assert rc == 0
    turns = json.loads(out)["turns"]
    assert [t["question"] for t in turns] == [q for q, _ in SEED_DIALOGUE]
    session = ChatSession.load(SHIPPED_GRU)
    assert [t["reply"] for t in turns] == [session.ask(q) for q, _ in SEED_DIALOGUE]
    for t in turns:
        reply = [c for c in t["characters"] if c["part"] == "reply"]
        assert len(reply) == len(t["reply"])
        names_someone = any(e.name.lower() in t["question"].lower() for e in entities)
        if not names_someone:  # "Where she lives?": only the carried state knows who she is
            assert t["carry_changed_answer"], t


@pytest.mark.shipped
def test_shipped_gru_probe_beats_chance_at_distance_0(entities):
    r = probe.probe_checkpoint(checkpoint.load(SHIPPED_GRU), entities, conversations=240)
    referent, gender = r.accuracy["referent"][0], r.accuracy["gender"][0]
    assert referent > max(3 * r.chance["referent"][0], 0.25), r
    assert gender > r.chance["gender"][0] + 0.15, r


# -- text drawn and printed as written ----------------------------------------------------------
# Strings that break naive text handling: mathtext ($...$, a stray \frac), rich markup ([/x]),
# characters no shipped font has (emoji, CJK) and the ↵ the figures use for newlines.
ODD_DIR = "a$\\frac{$b [/x] $x^2$"
ODD_QUESTION = "Who is $\\frac{1}{$ Tom? 🙂 漢 ↵ [/x] $"


def _odd_checkpoint(tmp_path, tok, cell="gru"):
    d = tmp_path / ODD_DIR  # "[/x]" takes a "/": two directories, one path with "[/x]" in it
    d.mkdir(parents=True)
    return save_tiny(d / f"{cell}$[bold].safetensors", tok, cell)


@pytest.mark.parametrize("argv", [
    [],  # the conversation figure
    ["--units", "$\\frac{1}{$"],  # the units figure: the phrase is in its title
    ["--units", "[/x]"],
])
def test_plot_draws_paths_and_phrases_as_written_and_warns_nothing(tmp_path, tiny_tokenizer, capsys,
                                                                    monkeypatch, argv):
    monkeypatch.setattr(insp, "MAX_REPLY", 30)
    ckpt = _odd_checkpoint(tmp_path, tiny_tokenizer)
    out_png = tmp_path / ODD_DIR / "trace $x$ [b].png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, out, err = run_cli(capsys, "--checkpoint", ckpt, "--json", "--plot", out_png, *argv,
                               ODD_QUESTION, "Where does he live? $")
    assert rc == 0, err
    assert out_png.read_bytes()[:8] == PNG
    assert err == f"wrote {out_png}\n"  # with --json, the one line on stderr is the plot's
    json.loads(out)
    assert not [w for w in caught if "Glyph" in str(w.message) or "missing from" in str(w.message)]


def test_probe_plot_draws_paths_as_written(tmp_path, tiny_tokenizer, capsys):
    ckpt = _odd_checkpoint(tmp_path, tiny_tokenizer, "rnn")
    out_png = tmp_path / "probe $\\frac{$.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, _, err = run_cli(capsys, "--probe", "--checkpoint", ckpt, "--conversations", 6,
                             "--plot", out_png, "--json")
    assert rc == 0, err
    assert out_png.read_bytes()[:8] == PNG
    assert not [w for w in caught if "Glyph" in str(w.message)]


def test_plain_text_leaves_matplotlib_settings_as_they_were():
    import matplotlib
    before = (matplotlib.rcParams["text.parse_math"], matplotlib.rcParams["text.usetex"])
    with plots.plain_text():
        assert matplotlib.rcParams["text.parse_math"] is False
    assert (matplotlib.rcParams["text.parse_math"], matplotlib.rcParams["text.usetex"]) == before


def test_inspect_plot_prints_nothing_but_its_line_as_a_process(tmp_path, tiny_tokenizer):
    """A real process, where a warning would reach stderr: the plot's line and nothing else."""
    ckpt = _odd_checkpoint(tmp_path, tiny_tokenizer)
    out_png = tmp_path / "emoji 🙂 $x$.png"
    r = run_process("inspect", "--checkpoint", ckpt, "--json", "--plot", out_png, ODD_QUESTION)
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"wrote {out_png}\n"
    assert out_png.read_bytes()[:8] == PNG


# -- output to a file or a pipe: nothing cut --------------------------------------------------------
def _replies(capsys, ckpt, questions) -> list[dict]:
    rc, out, err = run_cli(capsys, "--checkpoint", ckpt, "--json", *questions)
    assert rc == 0, err
    return json.loads(out)["turns"]


@pytest.mark.parametrize("questions", [
    QUESTIONS,
    ["Who is Tom Cruise? " * 8, "Where does he live?"],  # a question longer than 80 columns too
])
def test_piped_table_cuts_nothing(tiny, capsys, monkeypatch, questions):
    monkeypatch.delenv("COLUMNS", raising=False)  # not a terminal, and nothing says how wide
    monkeypatch.setattr(insp, "MAX_REPLY", 120)
    turns = _replies(capsys, tiny, questions)
    assert max(len(t["reply"]) for t in turns) > 80  # long enough that 80 columns would cut it
    rc, out, _ = run_cli(capsys, "--checkpoint", tiny, *questions)
    assert rc == 0
    lines = out.splitlines()
    for t in turns:
        for text in (t["question"], t["reply"], t["reply_zeroed"]):
            assert any(text.strip() in line for line in lines), text  # whole, on one line
    assert "…" not in out
    assert str(tiny) in out  # the title, path and all


def test_piped_units_cut_nothing(tiny, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(insp, "MAX_REPLY", 120)
    rc, out, _ = run_cli(capsys, "--checkpoint", tiny, "--units", "Tom", "--json", *QUESTIONS)
    text = json.loads(out)["text"]
    rc, out, _ = run_cli(capsys, "--checkpoint", tiny, "--units", "Tom", *QUESTIONS)
    assert rc == 0
    lines = out.splitlines()
    conversation = [ln for ln in text.split("\n") if ln]
    assert max(map(len, conversation)) > 80
    for ln in conversation:  # every line of the conversation is one line of the output
        assert any(line.rstrip() == ln.rstrip() for line in lines), ln
    grid = [line for line in lines if "turn 1" in line]
    assert grid and all("turn 3" in line for line in grid)  # the grid's header is not folded


def test_columns_still_sets_the_width(tiny, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr(insp, "MAX_REPLY", 120)
    rc, out, _ = run_cli(capsys, "--checkpoint", tiny, *QUESTIONS)
    assert rc == 0 and max(map(len, out.splitlines())) <= 100


def test_piped_output_as_a_process(tiny, tmp_path):
    """Through a real pipe, with COLUMNS unset, as `contextbot inspect > out.txt` runs."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "contextbot", "inspect", "--checkpoint", str(tiny),
                        QUESTIONS[0]], capture_output=True, text=True, env=env, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "Who is Tom Cruise?" in r.stdout and "…" not in r.stdout
    assert max(map(len, r.stdout.splitlines())) > 80  # laid out wider than the old 80 columns
