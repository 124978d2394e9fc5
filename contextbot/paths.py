"""Where the shipped corpus and checkpoints are, in a source checkout and in an installed wheel.

In a clone of the repository they are the top-level folders `corpus/` and `checkpoints/`, beside
this package. A wheel carries the same files as package data under `contextbot/shipped/`
(pyproject.toml maps the repository's root onto that package), so a non-editable
`pip install .` can chat and build a corpus from any folder. `SHIPPED` is whichever of the two
holds them.

`$CONTEXTBOT_CHECKPOINT`, if set, replaces the default checkpoint everywhere a command takes one.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _shipped_root() -> Path:
    installed = _PACKAGE / "shipped"
    if (installed / "checkpoints").is_dir():
        return installed
    return _PACKAGE.parent  # a source checkout (or an editable install of one)


SHIPPED = _shipped_root()
CORPUS = SHIPPED / "corpus"
CHECKPOINTS = SHIPPED / "checkpoints"
DEFAULT_FACTS = CORPUS / "facts.json"
DEFAULT_TRAIN = CORPUS / "train.txt"
DEFAULT_VALID = CORPUS / "valid.txt"
DEFAULT_CHECKPOINT = CHECKPOINTS / "gru.safetensors"


def default_checkpoint() -> Path:
    """`$CONTEXTBOT_CHECKPOINT` if set, else the shipped checkpoints/gru.safetensors."""
    env = os.environ.get("CONTEXTBOT_CHECKPOINT")
    return Path(env) if env else DEFAULT_CHECKPOINT
