"""The recipe is written once: TrainOptions. The cells' own recipes apply wherever options are
built, the command line is made from the fields, and the shipped checkpoints still resume."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from contextbot.cli import build_parser
from contextbot.errors import ContextbotError
from contextbot.model import checkpoint
from contextbot.model.network import CELLS, ModelConfig
from contextbot.train import resume
from contextbot.train.options import CELL_RECIPES, TrainOptions, from_args

from ..conftest import SHIPPED_GRU


def _cli_options(*argv: str) -> TrainOptions:
    return from_args(build_parser().parse_args(["train", "--out", "x.safetensors", *argv]))


def _train_help() -> str:
    full = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    return " ".join(full.split("options:", 1)[1].split())  # one line: argparse wraps at any width


def test_an_lstm_gets_its_own_recipe_and_an_explicit_value_wins():
    lstm = TrainOptions(cell="lstm")
    assert (lstm.lr, lstm.chrono_fraction, lstm.seq_len, lstm.batch) == (4e-3, 0.5, 128, 16)
    rnn = TrainOptions(cell="rnn")
    assert (rnn.lr, rnn.seq_len, rnn.batch) == (3e-3, 256, 32)  # what its checkpoint was trained at
    gru = TrainOptions()
    assert (gru.lr, gru.chrono_fraction, gru.seq_len, gru.batch) == (3e-3, 1.0, 192, 16)
    mine = TrainOptions(cell="lstm", lr=1e-3, chrono_fraction=1.0, seq_len=0)
    assert (mine.lr, mine.chrono_fraction, mine.seq_len) == (1e-3, 1.0, 0)


@pytest.mark.parametrize("cell", CELLS)
def test_python_and_the_command_line_build_the_same_options(cell):
    assert _cli_options("--cell", cell) == TrainOptions(cell=cell, out="x.safetensors")
    given = ("--lr", "2e-3", "--chrono-fraction", "1", "--seq-len", "64", "--batch", "8")
    assert _cli_options("--cell", cell, *given) == TrainOptions(
        cell=cell, out="x.safetensors", lr=2e-3, chrono_fraction=1.0, seq_len=64, batch=8)


def test_the_command_line_keeps_its_special_values():
    assert _cli_options().cell == "gru"
    assert _cli_options("--valid", "none").valid is None
    assert _cli_options("--valid", "v.txt").valid == "v.txt"
    assert _cli_options("--seq-len", "0").seq_len == 0
    o = _cli_options("--resume", "--json", "--minutes", "1.5")
    assert o.resume and o.json and o.minutes == 1.5
    with pytest.raises(ContextbotError, match="required"):
        build_parser().parse_args(["train"])  # --out has no default on the command line
    with pytest.raises(ContextbotError, match="invalid choice"):
        build_parser().parse_args(["train", "--out", "x", "--cell", "transformer"])


def test_the_model_options_default_to_the_models_defaults():
    o = TrainOptions()
    model = {f.name: f.default for f in fields(ModelConfig) if f.name not in ("vocab_size", "referents")}
    assert {k: getattr(o, k) for k in model} == model
    assert o.model_config(vocab_size=50, referents=3) == ModelConfig(vocab_size=50, referents=3)
    lstm = TrainOptions(cell="lstm", hidden=32).model_config(vocab_size=50, referents=0)
    assert (lstm.cell, lstm.hidden, lstm.chrono_fraction) == ("lstm", 32, 0.5)


def test_train_help_shows_the_defaults_the_code_has():
    help_text = _train_help()
    o, lstm, rnn = TrainOptions(), TrainOptions(cell="lstm"), TrainOptions(cell="rnn")
    assert f"--lr LR peak learning rate (default {o.lr}; LSTM {lstm.lr})" in help_text
    assert (f"(default {o.seq_len}; LSTM {lstm.seq_len}, RNN {rnn.seq_len}; 0 = whole conversations)"
            in help_text)
    assert f"(default {o.batch}; RNN {rnn.batch})" in help_text
    assert f"(default {o.chrono_fraction:g}; LSTM {lstm.chrono_fraction:g})" in help_text
    for f in fields(TrainOptions):  # every field the command line offers, and no other
        flag = "--" + f.name.replace("_", "-")
        assert (flag + " ") in help_text or f.metadata.get("flag") is False, flag
    for flag in ("--min-lr-ratio", "--warmup", "--weight-decay", "--clip"):
        assert flag not in help_text
    m = re.search(r"--cell \{(\S+)\}", help_text)
    assert m and tuple(m.group(1).split(",")) == CELLS


def test_every_cell_recipe_names_only_per_cell_options():
    per_cell = {f.name for f in fields(TrainOptions) if "per_cell" in f.metadata}
    assert set(CELL_RECIPES) == set(CELLS)
    for recipe in CELL_RECIPES.values():
        assert set(recipe) <= per_cell


@pytest.mark.shipped
@pytest.mark.parametrize("cell", CELLS)
def test_a_shipped_checkpoints_recipe_resumes_and_is_its_cells_recipe(cell):
    """`make checkpoints` trains each cell from TrainOptions(cell=...), and --resume accepts the
    recipe it saved: the resolved values, not None."""
    path = SHIPPED_GRU.with_name(f"{cell}.safetensors")
    saved = checkpoint.load(path).train_options
    recipe = resume.saved_recipe(path, saved)
    assert recipe == TrainOptions(cell=cell).recipe()
    o = TrainOptions(resume=True)
    for k, v in recipe.items():
        setattr(o, k, v)
    o.validate()


def test_the_resume_check_refuses_what_is_not_a_recipe():
    good = TrainOptions(cell="lstm").recipe()
    assert resume.saved_recipe(Path("m"), {"recipe": good}) == good
    for bad in ({"out": "x"}, {"lr": "fast"}, {"seq_len": None}, {"batch": 1.5}):
        with pytest.raises(ContextbotError, match="damaged"):
            resume.saved_recipe(Path("m"), {"recipe": good | bad})
