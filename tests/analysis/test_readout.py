"""`contextbot inspect --readout`: the referent head read per character, carried and zeroed, on
tiny models with a head (tests/conftest.py, `save_with_referent_head`); and the one-line error for a checkpoint without one."""

from __future__ import annotations

import json

import pytest
import torch

from contextbot.analysis import trace as insp
from contextbot.cli import main
from contextbot.model import checkpoint
from contextbot.model.network import RecurrentLM
from contextbot.text.turns import turn_ids

from ..conftest import assert_one_line_error, save_with_referent_head

PNG = b"\x89PNG\r\n\x1a\n"
QUESTIONS = ["Who is Tom Cruise?", "Where does he live?", "Who is Megan Fox?"]
NAMES = ["Tom Cruise", "Megan Fox", "Ada Byron"]
LABELS = ["nobody", "a stranger", *NAMES]


def run_cli(capsys, *argv):
    rc = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def expected_readout(model: RecurrentLM, tok, turns: list[tuple[str, str]], carry: bool):
    """softmax(referent_head(h_top)) after every token of the conversation, computed with the
    network's own forward pass (PyTorch's kernel, not the trace's reference step): per turn,
    (tokens, 2, classes)."""
    out, state = [], None
    with torch.no_grad():
        for question, reply in turns:
            prompt_ids, reply_ids = turn_ids(tok, question, reply)
            ids = torch.tensor([prompt_ids + reply_ids])
            _, new, who = model(ids, None if not carry else state, referents=True)
            state = new
            out.append(who[0].softmax(-1))
    return out


def assert_readout_matches(characters: list[dict], probs: torch.Tensor) -> None:
    assert len(characters) == len(probs)
    for c, p in zip(characters, probs):
        for row, pronoun in enumerate(("he", "she")):
            label, prob = c["readout"][pronoun]
            best, k = p[row].max(-1)
            assert label == LABELS[int(k)], (c, p[row])
            assert prob == pytest.approx(float(best), abs=1e-4)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
@pytest.mark.parametrize("cell,layers", [("gru", 1), ("lstm", 2)])
def test_readout_json_is_the_head_on_the_top_layer_per_character(tmp_path, tiny_tokenizer, capsys,
                                                                 monkeypatch, cell, layers):
    monkeypatch.setattr(insp, "MAX_REPLY", 30)  # random weights talk for 300 characters
    path = save_with_referent_head(tmp_path / "head.safetensors", tiny_tokenizer, NAMES, cell, layers)
    with torch.backends.mkldnn.flags(enabled=False):
        rc, out, err = run_cli(capsys, "--checkpoint", path, "--readout", "--json", *QUESTIONS)
    assert rc == 0, err
    trace = json.loads(out)
    assert trace["readout_labels"] == LABELS
    model = checkpoint.load(path).model
    carried = expected_readout(model, tiny_tokenizer, [(t["question"], t["reply"]) for t in trace["turns"]], True)
    for t, probs in zip(trace["turns"], carried):
        assert set(t["characters"][0]) >= {"char", "part", "norms", "gates", "top5", "readout"}
        assert_readout_matches(t["characters"], probs)
    # The stateless run: every turn from a zeroed state, and its replies are the zeroed replies.
    stateless = trace["stateless"]
    assert [s["question"] for s in stateless] == QUESTIONS
    assert [s["reply"] for s in stateless] == [t["reply_zeroed"] for t in trace["turns"]]
    zeroed = expected_readout(model, tiny_tokenizer, [(s["question"], s["reply"]) for s in stateless], False)
    for s, probs in zip(stateless, zeroed):
        assert_readout_matches(s["characters"], probs)
    # The first turn starts from zeros either way.
    assert stateless[0]["characters"] == [{"char": c["char"], "part": c["part"], "readout": c["readout"]}
                                          for c in trace["turns"][0]["characters"]]


def test_plain_json_has_the_readout_too_and_none_without_a_head(tmp_path, tiny_tokenizer, capsys, monkeypatch):
    monkeypatch.setattr(insp, "MAX_REPLY", 30)
    path = save_with_referent_head(tmp_path / "head.safetensors", tiny_tokenizer, NAMES)
    rc, out, _ = run_cli(capsys, "--checkpoint", path, "--json", QUESTIONS[0])
    trace = json.loads(out)
    assert rc == 0 and "stateless" not in trace
    assert all(set(c["readout"]) == {"he", "she"} for c in trace["turns"][0]["characters"])
    bare = save_with_referent_head(tmp_path / "bare.safetensors", tiny_tokenizer, None)
    rc, out, _ = run_cli(capsys, "--checkpoint", bare, "--json", QUESTIONS[0])
    trace = json.loads(out)
    assert rc == 0 and "readout_labels" not in trace
    assert all("readout" not in c for c in trace["turns"][0]["characters"])


def test_readout_prints_a_row_per_turn_and_writes_the_figure(tmp_path, tiny_tokenizer, capsys, monkeypatch):
    monkeypatch.setattr(insp, "MAX_REPLY", 30)
    path = save_with_referent_head(tmp_path / "head.safetensors", tiny_tokenizer, NAMES)
    out_png = tmp_path / "readout.png"
    rc, out, err = run_cli(capsys, "--checkpoint", path, "--readout", "--plot", out_png, *QUESTIONS)
    assert rc == 0, err
    assert "he / she (carried)" in out and "he / she (zeroed)" in out
    assert all(q in out for q in QUESTIONS)
    assert out.count("he → ") >= 2 * len(QUESTIONS)
    assert f"wrote {out_png}" in out
    assert out_png.read_bytes()[:8] == PNG
    # --json with --plot: the JSON alone on stdout, the figure still written.
    out_png.unlink()
    rc, out, err = run_cli(capsys, "--checkpoint", path, "--readout", "--json", "--plot", out_png, QUESTIONS[0])
    assert rc == 0 and json.loads(out)["stateless"]
    assert out_png.read_bytes()[:8] == PNG


def test_readout_figure_draws_names_as_written(tmp_path, tiny_tokenizer, monkeypatch):
    """People's names come from the checkpoint: `$...$` and `[/x]` are text, not math or markup."""
    from contextbot.analysis import plots
    from contextbot.analysis.readout import Readout

    monkeypatch.setattr(insp, "MAX_REPLY", 20)
    names = ["$\\frac{a$", "[/bold]Megan", "Ada"]
    path = save_with_referent_head(tmp_path / "head.safetensors", tiny_tokenizer, names)
    ckpt = checkpoint.load(path)
    readout = Readout.of(ckpt)
    turns = insp.trace_conversation(ckpt, QUESTIONS[:1], zeroed=False)
    stateless = insp.trace_conversation(ckpt, QUESTIONS[:1], carry=False)
    hidden = ckpt.config.hidden
    labels = ["nobody", "a stranger", *names]
    probs = [insp.readout_probabilities(readout, t, hidden) for t in turns]
    # A reading of every class in turn, so that every name is in the legend.
    steps = len(probs[0])
    one_hot = torch.nn.functional.one_hot(torch.arange(steps) % len(labels), len(labels)).float()
    probs = [one_hot.unsqueeze(1).expand(steps, 2, len(labels))]
    fig = plots.readout_figure(turns, stateless, readout.labels, probs,
                               [insp.readout_probabilities(readout, t, hidden) for t in stateless],
                               "title")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == labels
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig).draw()  # mathtext would fail on "$\\frac{a$": the names draw as written


@pytest.mark.parametrize("argv,message", [
    (["--plot", "{tmp}/no/such/dir/out.png"], "cannot write the plot"),
    (["--plot", "{tmp}/out.bmpx"], "a plot must end in"),
    (["--units", "Tom"], "not allowed with argument"),
    (["--probe"], "not allowed with argument"),
])
def test_readout_bad_input_is_one_line(tmp_path, tiny_tokenizer, capsys, argv, message):
    path = save_with_referent_head(tmp_path / "head.safetensors", tiny_tokenizer, NAMES)
    argv = [a.format(tmp=tmp_path) for a in argv]
    rc, out, err = run_cli(capsys, "--checkpoint", path, "--readout", *argv)
    assert out == ""
    assert_one_line_error(rc, err, message)


def test_readout_of_a_checkpoint_without_the_head_is_a_one_line_error(tmp_path, tiny_tokenizer, capsys):
    bare = save_with_referent_head(tmp_path / "bare.safetensors", tiny_tokenizer, None)
    out_png = tmp_path / "readout.png"
    for extra in ([], ["--json"], ["--plot", out_png]):
        rc, out, err = run_cli(capsys, "--checkpoint", bare, "--readout", *extra, QUESTIONS[0])
        assert out == ""
        assert_one_line_error(rc, err, "trained without the referent signal")
    assert not out_png.exists()
