"""The training recipe: `TrainOptions`, the cells' own recipes, and the `contextbot train` flags.

Every option is written once, as a field of `TrainOptions`: its default, and in the field's
metadata the help text of its flag. `add_flags` makes the command line from those fields, so the
help shows the defaults the code has, and `from_args` turns the parsed flags back into the same
`TrainOptions` that Python code builds.

Two kinds of default are not written here:

- the model's shape (embed, hidden, layers, dropout, chrono_*) defaults to `ModelConfig`'s own
  field defaults, so that a model built without options and one trained with them agree;
- four options depend on the cell (`CELL_RECIPES`). Their fields default to None, "the cell's
  recipe", and `__post_init__` fills them in: `TrainOptions(cell="lstm").lr` is the LSTM's
  learning rate, and `TrainOptions(cell="lstm", lr=1e-3).lr` is 1e-3.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ContextbotError
from ..model.network import CELLS, ModelConfig
from ..paths import DEFAULT_TRAIN, DEFAULT_VALID, SHIPPED
from ..text.tokenizer import KINDS

# ModelConfig's field defaults, by name: the model options' defaults.
MODEL = {f.name: f.default for f in fields(ModelConfig) if f.default is not MISSING}

# Where a cell trains with other values than the GRU's (the defaults in the fields below).
# LSTM: chrono initialisation ties its input gate shut where it holds the forget gate open
# (network.py), so with chrono on every unit it learns its language model slowly; it gets chrono
# on half the units, a higher learning rate, and shorter chunks, which oneDNN's fused LSTM kernel
# runs faster. RNN: its recipe was found, and its checkpoint trained, at 32 streams of 256
# characters; the GRU's batches are untried on it. docs/experiments.md has the runs behind both.
CELL_RECIPES: dict[str, dict[str, Any]] = {
    "gru": {},
    "lstm": {"lr": 4e-3, "chrono_fraction": 0.5, "seq_len": 128},
    "rnn": {"batch": 32, "seq_len": 256},
}


def option(default: Any, help: str, **flag: Any) -> Any:
    """A field of TrainOptions: its default, and its flag's help text and argparse settings
    (choices, required, type; `flag=False` for an option the command line does not offer).
    `{default}` in the help is where the default goes; without it, it goes at the end."""
    return field(default=default, metadata={"help": help, **flag})


def per_cell(default: Any, help: str, **flag: Any) -> Any:
    """A field whose default depends on the cell: None until __post_init__ puts in the cell's
    value from CELL_RECIPES, or `default` (the GRU's) where the cell's recipe has none."""
    return field(default=None, metadata={"help": help, "per_cell": default, **flag})


@dataclass
class TrainOptions:
    """Everything `contextbot train` can be told. The defaults are the shipped GRU's recipe."""

    # -- data and output ------------------------------------------------------------------------
    corpus: str = option(str(DEFAULT_TRAIN), "training corpus")
    valid: str | None = option(str(DEFAULT_VALID), "validation corpus ({default}; 'none' to skip)")
    out: str = option("checkpoints/model.safetensors", "checkpoint to write (PATH.safetensors)",
                      required=True)
    # -- the model -------------------------------------------------------------------------------
    cell: str = option(MODEL["cell"], "recurrent cell", choices=CELLS)
    hidden: int = option(MODEL["hidden"], "hidden units per layer")
    layers: int = option(MODEL["layers"], "recurrent layers")
    embed: int = option(MODEL["embed"], "embedding size")
    dropout: float = option(MODEL["dropout"], "dropout")
    # -- batches: `batch` streams of `seq_len` characters a step ---------------------------------
    batch: int | None = per_cell(16, "parallel streams per step")
    seq_len: int | None = per_cell(192, "characters per BPTT chunk ({default}; 0 = whole conversations)")
    # -- the optimizer: AdamW, linear warm-up then cosine decay (loop.learning_rate) -------------
    lr: float | None = per_cell(3e-3, "peak learning rate")
    min_lr_ratio: float = option(0.1, "the learning rate at the end, as a share of --lr", flag=False)
    warmup: int = option(30, "steps of linear warm-up", flag=False)
    weight_decay: float = option(0.0, "AdamW's weight decay", flag=False)
    clip: float = option(1.0, "gradient norm clipping", flag=False)
    # -- the loss -------------------------------------------------------------------------------
    answer_weight: float = option(3.0, "loss weight of answer characters")
    referent_weight: float = option(
        1.0, "weight of the auxiliary loss: who 'he' and 'she' mean, read off the state "
        "({default}; 0 = off)")
    facts: str | None = option(
        None, "facts file that names the people for --referent-weight "
        "(default: facts.json beside --corpus)")
    # -- chrono initialisation of the gate biases (network.py) ----------------------------------
    chrono_tmax: float = option(MODEL["chrono_tmax"], "chrono initialisation of the gate biases, "
                                "in characters ({default}; 0 = off)")
    chrono_fraction: float | None = per_cell(MODEL["chrono_fraction"],
                                             "share of units given chrono initialisation")
    chrono_spread: str = option(MODEL["chrono_spread"], "memory times log-uniform over octaves, or "
                                "uniform as in the paper", choices=("log", "uniform"))
    # -- when to stop, evaluate and save --------------------------------------------------------
    steps: int = option(4000, "stop after this many steps")
    minutes: float | None = option(None, "stop after this many minutes, whichever comes first",
                                   type=float)
    seed: int = option(0, "random seed ({default}): same seed, same model on CPU")
    checkpoint_every: int = option(250, "write the checkpoint every N steps")
    eval_every: int = option(500, "validate every N steps")
    resume: bool = option(False, "continue from --out's step, optimizer and RNG")
    # -- the tokenizer --------------------------------------------------------------------------
    tokenizer: str = option("char", "tokenizer", choices=KINDS)
    vocab_size: int = option(2000, "vocabulary size for bpe/unigram")
    json: bool = option(False, "print a JSON summary on stdout at the end")

    # Options that shape the model or the data: a checkpoint saves them, and --resume takes them
    # from it rather than from the command line.
    RECIPE = ("cell", "hidden", "layers", "embed", "dropout", "batch", "seq_len", "lr",
              "min_lr_ratio", "warmup", "weight_decay", "clip", "answer_weight", "referent_weight",
              "chrono_tmax", "chrono_fraction", "chrono_spread", "seed", "tokenizer", "vocab_size")

    def __post_init__(self) -> None:
        recipe = CELL_RECIPES.get(self.cell, {})  # an unknown cell is validate()'s to refuse
        for f in fields(self):
            if "per_cell" in f.metadata and getattr(self, f.name) is None:
                setattr(self, f.name, recipe.get(f.name, f.metadata["per_cell"]))

    def recipe(self) -> dict:
        return {k: getattr(self, k) for k in self.RECIPE}

    def model_config(self, vocab_size: int, referents: int) -> ModelConfig:
        """The network these options train: the model options, plus what the data decides."""
        shape = {name: getattr(self, name) for name in MODEL if name != "referents"}
        return ModelConfig(vocab_size=vocab_size, referents=referents, **shape)

    def validate(self) -> None:
        """Refuse what cannot train, as one line that names the flag."""
        if self.cell not in CELLS:
            raise ContextbotError(f"--cell must be one of {', '.join(CELLS)}")
        if self.seq_len < 0:
            raise ContextbotError("--seq-len must be at least 1, or 0 for whole conversations")
        for name in ("hidden", "layers", "embed", "batch", "steps", "checkpoint_every",
                     "eval_every", "warmup", "vocab_size"):
            if getattr(self, name) < 1:
                raise ContextbotError(f"{flag_name(name)} must be at least 1")
        if not self.lr > 0:
            raise ContextbotError("--lr must be positive")
        if self.minutes is not None and not self.minutes > 0:
            raise ContextbotError("--minutes must be positive")
        if not 0 <= self.dropout < 1:
            raise ContextbotError("--dropout must be in [0, 1)")
        if not self.referent_weight >= 0:
            raise ContextbotError("--referent-weight must be at least 0")


# -- the command line ---------------------------------------------------------------------------

def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    """A default as the help prints it: 0.003 rather than 0.0030, corpus/train.txt rather than
    where the shipped files happen to lie."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and Path(value).is_relative_to(SHIPPED):
        return str(Path(value).relative_to(SHIPPED))
    return str(value)


def help_text(f: Field) -> str:
    """A field's help with its default filled in: the cells' own values for a per-cell field
    ("default 192; LSTM 128, RNN 256"), nothing for a flag with no default to show."""
    help = f.metadata["help"]
    if "per_cell" in f.metadata:
        others = ", ".join(f"{cell.upper()} {_shown(r[f.name])}"
                           for cell, r in CELL_RECIPES.items() if f.name in r)
        default = f"default {_shown(f.metadata['per_cell'])}" + (f"; {others}" if others else "")
    elif f.default is None or isinstance(f.default, bool) or f.metadata.get("required"):
        return help
    else:
        default = f"default {_shown(f.default)}"
    return help.format(default=default) if "{default}" in help else f"{help} ({default})"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of TrainOptions (but those marked flag=False). A flag not given parses
    as None, which `from_args` leaves to TrainOptions' own default."""
    for f in fields(TrainOptions):
        m = f.metadata
        if not m.get("flag", True):
            continue
        default = m.get("per_cell", f.default)
        kw: dict[str, Any] = {"help": help_text(f)}
        if isinstance(default, bool):
            kw["action"] = "store_true"
        elif "choices" in m:
            kw["choices"] = m["choices"]
        else:
            kw["type"] = m.get("type", type(default) if default is not None else str)
        if m.get("required"):
            kw["required"] = True
        parser.add_argument(flag_name(f.name), **kw)


def from_args(args: argparse.Namespace) -> TrainOptions:
    """The TrainOptions that `contextbot train`'s flags ask for: those given, and the defaults
    (the cell's recipe among them) for the rest."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainOptions)
             if getattr(args, f.name, None) is not None}
    if given.get("valid") == "none":
        given["valid"] = None
    return TrainOptions(**given)
