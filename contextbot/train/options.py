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
import math
import os
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ContextbotError
from ..model.network import CELLS, ModelConfig
from ..paths import DEFAULT_TRAIN, SHIPPED
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

# Bounds on what one run may ask for, far above any recipe here (16 x 192 tokens a step, 256 units)
# but below what would allocate tens of GB: a typo (--seq-len 1920000) or a hostile checkpoint's
# recipe is one line of error before any allocation, not an out-of-memory crash minutes later.
MAX_BATCH = 1 << 16
MAX_SEQ_LEN = 1 << 16
MAX_TOKENS_PER_STEP = 1 << 20  # batch x seq_len
MAX_PARAMETERS = 1 << 28  # about 268 million: 1 GB of weights, 3 GB with AdamW's moments
MAX_LAYERS = 256
MAX_SIZE = 1 << 16  # --hidden, --embed
MAX_VOCAB = 1 << 20
MAX_STEPS = 10 ** 12
# AdamW steps by lr / (1 - beta1) in float32 (at most 3.4e38): a larger --lr is an overflow error
# inside the optimizer, not a divergence. Loss weights beyond a million only scale the loss to inf.
MAX_LR = 1e30
MAX_WEIGHT = 1e6
GATES = {"gru": 3, "lstm": 4, "rnn": 1}  # weight matrices per layer and input
CHAR_VOCAB = 1024  # a char tokenizer's pieces at most, for the parameter estimate: 256 bytes + characters


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
    valid: str | None = option("", "validation corpus ({default}; 'none' to skip)",
                               shown="valid.txt beside --corpus, if there is one")
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

    # The options the user gave, by name: `from_args` sets the flags given on the command line;
    # for options built in Python, __post_init__ takes those set to other than their default.
    # `--resume` refuses a given recipe option that differs from the checkpoint's (resume.load).
    given = frozenset()  # not annotated: not a field, so not an option
    # The note to print when --valid was left to its default and no valid.txt lies beside --corpus.
    valid_note = None  # str | None

    def __post_init__(self) -> None:
        for name in ("corpus", "valid", "out", "facts"):  # a Path from Python is as good as a str
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        recipe = CELL_RECIPES.get(self.cell, {})  # an unknown cell is validate()'s to refuse
        given = set()
        for f in fields(self):
            value = getattr(self, f.name)
            if "per_cell" in f.metadata:
                if value is None:
                    setattr(self, f.name, recipe.get(f.name, f.metadata["per_cell"]))
                    continue
                given.add(f.name)
            elif not _same(value, f.default):
                given.add(f.name)
        self.given = frozenset(given)
        if self.valid == "":  # the default: the valid.txt that `corpus build` writes beside the corpus
            beside = Path(self.corpus).with_name("valid.txt") if isinstance(self.corpus, str) else None
            if beside is not None and beside.is_file():
                self.valid = str(beside)
            else:
                self.valid = None
                self.valid_note = (f"note: no valid.txt beside {self.corpus} (pass --valid FILE): "
                                   "training without validation")

    def recipe(self) -> dict:
        return {k: getattr(self, k) for k in self.RECIPE}

    def model_config(self, vocab_size: int, referents: int) -> ModelConfig:
        """The network these options train: the model options, plus what the data decides."""
        shape = {name: getattr(self, name) for name in MODEL if name != "referents"}
        return ModelConfig(vocab_size=vocab_size, referents=referents, **shape)

    def validate(self) -> None:
        """Refuse what cannot train, as one line that names the flag: before any allocation, any
        step, and any file is written."""
        self.validate_types()
        self.validate_recipe()
        for name in ("steps", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ContextbotError(f"{flag_name(name)} must be at least 1")
        if self.steps > MAX_STEPS:
            raise ContextbotError(f"--steps must be at most {MAX_STEPS:,}")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise ContextbotError("--minutes must be a positive number")
        self.validate_paths()

    def validate_types(self) -> None:
        """Every option of its field's type: a whole number where one is needed (not True), any
        number for a float, text for a path or a choice; None only where the field allows it."""
        for f in fields(self):
            value = getattr(self, f.name)
            kinds = {k.strip() for k in str(f.type).split("|")}
            if value is None and "None" in kinds and "per_cell" not in f.metadata:
                continue
            if "bool" in kinds:
                ok, what = type(value) is bool, "True or False"
            elif "int" in kinds:
                ok, what = type(value) is int, "a whole number"
            elif "float" in kinds:
                ok, what = type(value) in (int, float) and _fits_float(value), "a number"
            else:
                ok, what = type(value) is str, "text"
            if not ok:
                raise ContextbotError(f"{flag_name(f.name)} must be {what}, not {value!r}")

    def validate_recipe(self) -> None:
        """The recipe's own rules (TrainOptions.RECIPE): what `--resume` also checks in the
        recipe a checkpoint saved (resume.saved_recipe). Assumes validate_types has passed."""
        if self.cell not in CELLS:
            raise ContextbotError(f"--cell must be one of {', '.join(CELLS)}")
        if self.tokenizer not in KINDS:
            raise ContextbotError(f"--tokenizer must be one of {', '.join(KINDS)}")
        if self.chrono_spread not in ("log", "uniform"):
            raise ContextbotError("--chrono-spread must be log or uniform")
        for name in ("hidden", "layers", "embed", "batch", "warmup", "vocab_size"):
            if getattr(self, name) < 1:
                raise ContextbotError(f"{flag_name(name)} must be at least 1")
        if self.seq_len < 0:
            raise ContextbotError("--seq-len must be at least 1, or 0 for whole conversations")
        if not 0 <= self.seed < 2 ** 64:
            raise ContextbotError("--seed must be in 0 .. 2**64 - 1")
        for name, bounds, ok in (
                ("lr", f"a positive number up to {MAX_LR:g}", lambda v: 0 < v <= MAX_LR),
                ("clip", "a positive number", lambda v: v > 0),
                ("dropout", "in [0, 1)", lambda v: 0 <= v < 1),
                ("chrono_fraction", "in [0, 1]", lambda v: 0 <= v <= 1),
                ("min_lr_ratio", "in [0, 1]", lambda v: 0 <= v <= 1),
                ("weight_decay", "in [0, 1]", lambda v: 0 <= v <= 1),
                ("chrono_tmax", "a number at least 0", lambda v: v >= 0),
                ("answer_weight", f"a number from 0 to {MAX_WEIGHT:g}", lambda v: 0 <= v <= MAX_WEIGHT),
                ("referent_weight", f"a number from 0 to {MAX_WEIGHT:g}", lambda v: 0 <= v <= MAX_WEIGHT)):
            v = getattr(self, name)
            if not (math.isfinite(v) and ok(v)):  # NaN fails every comparison; inf fails isfinite
                raise ContextbotError(f"{flag_name(name)} must be {bounds}, not {v!r}")
        # Sizes: refused here, before anything is allocated, rather than by the out-of-memory killer.
        for name, high in (("batch", MAX_BATCH), ("seq_len", MAX_SEQ_LEN), ("layers", MAX_LAYERS),
                           ("hidden", MAX_SIZE), ("embed", MAX_SIZE), ("vocab_size", MAX_VOCAB)):
            if getattr(self, name) > high:
                raise ContextbotError(f"{flag_name(name)} {getattr(self, name)} is too large "
                                      f"(at most {high:,})")
        if self.batch * self.seq_len > MAX_TOKENS_PER_STEP:
            raise ContextbotError(f"--batch {self.batch} x --seq-len {self.seq_len} is "
                                  f"{self.batch * self.seq_len:,} tokens a step, too many to hold "
                                  f"(at most {MAX_TOKENS_PER_STEP:,})")
        if (n := self.parameters()) > MAX_PARAMETERS:
            raise ContextbotError(f"--hidden {self.hidden}, --layers {self.layers}, --embed "
                                  f"{self.embed} make about {n / 1e6:,.0f} million parameters, "
                                  f"too many to hold (at most {MAX_PARAMETERS / 1e6:,.0f} million)")

    def parameters(self) -> int:
        """About how many parameters the model has (the vocabulary is not known until the
        tokenizer is trained): embedding, recurrent layers, output head."""
        vocab = self.vocab_size if self.tokenizer != "char" else CHAR_VOCAB
        g, h, e = GATES.get(self.cell, 4), self.hidden, self.embed
        layers = g * h * (e + h + 2) + (self.layers - 1) * g * h * (2 * h + 2)
        return vocab * (e + h) + layers

    def validate_paths(self) -> None:
        """--out must not be one of the files training reads: the checkpoint would replace it."""
        out = Path(self.out)
        facts = self.facts or Path(self.corpus).with_name("facts.json")
        for name, path in (("--corpus", self.corpus), ("--valid", self.valid),
                           ("--facts" if self.facts else "the facts file beside --corpus", facts)):
            if path is not None and _same_file(out, Path(path)):
                raise ContextbotError(f"--out {self.out} is {name} ({path}): training would replace "
                                      "it with a checkpoint; give another --out")


def _fits_float(v: int | float) -> bool:
    try:
        float(v)
    except OverflowError:  # an int beyond 1e308, from Python or a checkpoint's JSON
        return False
    return True


def _same(a: Any, b: Any) -> bool:
    """Equal values, NaN included (a NaN given is not the default)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _same_file(a: Path, b: Path) -> bool:
    """Whether two spellings name one file: relative or absolute, `./`, `..`, symlinks, or hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_batch(o: TrainOptions, conversations: int) -> None:
    """--batch streams each hold whole conversations: more streams than the corpus has
    conversations would be only padding (and, far beyond, memory that never fills)."""
    if o.batch > conversations:
        raise ContextbotError(f"--batch {o.batch} is more streams than {o.corpus} has conversations "
                              f"({conversations}): give --batch {conversations} or less, or a larger corpus")


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
    if "shown" in f.metadata:
        default = f"default: {f.metadata['shown']}"
    elif "per_cell" in f.metadata:
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
    o = TrainOptions(**given)
    o.given = frozenset(given)  # what was typed, even where it equals the default
    return o
