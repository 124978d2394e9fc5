"""Checkpoints: one safetensors file, written atomically, read without ever unpickling.

Layout of `model.safetensors`:

- tensors named `model.*` are the weights (`RecurrentLM.state_dict()`);
- tensors named `train.*` are what `contextbot train --resume` needs to continue exactly
  (Adam's moments, the carried training state, the RNG state); chat ignores them;
- `__metadata__` (strings only) holds `format` = "contextbot", `version`, `config` (the model
  config as JSON), `tokenizer` (the sentencepiece model, base64), `step`, `corpus_sha256`, and
  `train` (the training options as JSON).

Safetensors is a JSON header plus raw little-endian tensor bytes: loading it cannot run code, unlike
`torch.load` on a pickle. We still check everything a damaged or hostile file could get wrong and
turn it into a one-line `ContextbotError`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import ContextbotError
from ..files import write_atomic
from ..text.tokenizer import Tokenizer
from .network import ModelConfig, RecurrentLM

FORMAT = "contextbot"
VERSION = 1
MAX_HEADER = 16 * 1024 * 1024  # a real header is a few kilobytes; refuse absurd claims early


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (in eval mode), its tokenizer and what training left."""

    model: RecurrentLM
    tokenizer: Tokenizer
    step: int
    metadata: dict[str, str]
    train_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None
    sha256: str = ""

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def train_options(self) -> dict:
        return _json(self.metadata.get("train", "{}"))


def save(path: str | Path, model: RecurrentLM, tokenizer: Tokenizer, *, step: int,
         corpus_sha256: str = "", train_options: dict | None = None,
         train_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write a checkpoint atomically: temporary file, fsync, rename, fsync the directory.

    A kill at any moment leaves either the previous complete file or the new complete file.
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for k, v in (train_tensors or {}).items():
        tensors[f"train.{k}"] = v.detach().cpu().contiguous()
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "config": json.dumps(model.config.to_dict()),
        "tokenizer": base64.b64encode(tokenizer.proto).decode("ascii"),
        "step": str(step),
        "corpus_sha256": corpus_sha256,
        "train": json.dumps(train_options or {}),
    }
    data = st_save(tensors, metadata=metadata)
    write_atomic(Path(path), data)


def _json(text: str | bytes):
    """`json.loads`, with nesting too deep for Python's recursion limit turned into ValueError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _read_header(f: BinaryIO, size: int, name: str) -> tuple[bytes, dict]:
    """Read the 8-byte length and the JSON header, and nothing more: (their raw bytes, header).

    The length is checked against MAX_HEADER and the file's size before a byte of the header is
    read, so a file that is not a checkpoint costs at most 8 bytes plus a bounded header.
    """
    if size < 8:
        raise ContextbotError(f"{name}: not a contextbot checkpoint (file too short)")
    prefix = f.read(8)
    if len(prefix) < 8:
        raise ContextbotError(f"{name}: not a contextbot checkpoint (file too short)")
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER or n > size - 8:
        raise ContextbotError(f"{name}: not a safetensors checkpoint (header claims {n} bytes; "
                              "the file may be a pickle, truncated or damaged)")
    raw = f.read(n)
    if len(raw) < n:
        raise ContextbotError(f"{name}: not a safetensors checkpoint (truncated header)")
    try:
        header = _json(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ContextbotError(f"{name}: not a safetensors checkpoint (unreadable header)") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError; so is too deep a nesting
        what = "header nested too deeply" if "nested" in str(exc) else "unreadable header"
        raise ContextbotError(f"{name}: not a safetensors checkpoint ({what})") from None
    if not isinstance(header, dict):
        raise ContextbotError(f"{name}: not a safetensors checkpoint (header is not an object)")
    return prefix + raw, header


def _check_offsets(name: str, header: dict, data_size: int) -> None:
    """Check every tensor's declared byte range against the data the file holds, before reading it.

    Safetensors requires the ranges to cover the data exactly; a file whose ranges reach past
    its end (or leave gigabytes unclaimed after them) is refused without reading its data.
    """
    end_max = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise ContextbotError(f"{name}: damaged tensor data (tensor {key[:60]!r} has no valid "
                                  "data_offsets)")
        if offsets[1] > data_size:
            raise ContextbotError(f"{name}: damaged tensor data (tensor {key[:60]!r} ends at byte "
                                  f"{offsets[1]}, past the end of the file's {data_size} bytes of "
                                  "data; truncated?)")
        end_max = max(end_max, offsets[1])
    if end_max != data_size:
        raise ContextbotError(f"{name}: damaged tensor data (the tensors cover {end_max} of the "
                              f"file's {data_size} bytes of data)")


def _check_metadata(name: str, header: dict) -> tuple[dict[str, str], ModelConfig, int, Tokenizer]:
    """Validate `__metadata__` (format, version, config, step, tokenizer, train): (meta, config,
    step, tokenizer). Needs only the header."""
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ContextbotError(f"{name}: not a safetensors checkpoint (metadata is not an object)")
    if meta.get("format") != FORMAT:
        raise ContextbotError(f"{name}: a safetensors file, but not a contextbot checkpoint "
                              "(no 'format: contextbot' in its metadata)")
    bad = next((k for k, v in meta.items() if not isinstance(v, str)), None)
    if bad is not None:  # safetensors metadata is strings only
        raise ContextbotError(f"{name}: checkpoint metadata is damaged ({str(bad)[:60]!r} is not a string)")
    try:
        version = int(meta.get("version", ""))
    except ValueError:
        raise ContextbotError(f"{name}: checkpoint has no valid format version") from None
    if version > VERSION:
        raise ContextbotError(f"{name}: checkpoint format version {version} is newer than this "
                              f"contextbot reads (up to {VERSION}); upgrade contextbot")
    for key in ("config", "tokenizer", "step"):
        if key not in meta:
            raise ContextbotError(f"{name}: checkpoint metadata lacks '{key}'")
    try:
        config_dict = _json(meta["config"])
        if not isinstance(config_dict, dict):
            raise ValueError("'config' is not a JSON object")
        config = ModelConfig.from_dict(config_dict)
        step = int(meta["step"])
        proto = base64.b64decode(meta["tokenizer"], validate=True)
        if not isinstance(_json(meta.get("train", "{}")), dict):  # read by `train --resume`
            raise ValueError("'train' is not a JSON object")
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:  # JSONDecodeError: a ValueError
        raise ContextbotError(f"{name}: checkpoint metadata is damaged ({exc})") from None
    except ContextbotError as exc:
        raise ContextbotError(f"{name}: {exc}") from None
    tokenizer = Tokenizer(proto)
    if tokenizer.vocab_size != config.vocab_size:
        raise ContextbotError(f"{name}: tokenizer has {tokenizer.vocab_size} pieces but the model "
                              f"expects {config.vocab_size}")
    return meta, config, step, tokenizer


def load(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint. Every problem is a one-line `ContextbotError`.

    The order bounds what a bad file costs: the 8-byte length, then the header (at most
    MAX_HEADER), then the metadata and every tensor's byte range are checked against the file's
    size; only then is the tensor data read.
    """
    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise ContextbotError(f"{name}: is a directory, not a checkpoint file")
    if path.exists() and not path.is_file():  # /dev/zero or a pipe would be read forever
        raise ContextbotError(f"{name}: not a regular file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head, header = _read_header(f, size, name)
            meta, config, step, tokenizer = _check_metadata(name, header)
            _check_offsets(name, header, size - len(head))
            data = head + f.read()
    except FileNotFoundError:
        raise ContextbotError(f"{name}: no such checkpoint") from None
    except IsADirectoryError:
        raise ContextbotError(f"{name}: is a directory, not a checkpoint file") from None
    except OSError as exc:
        raise ContextbotError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if len(data) != size:
        raise ContextbotError(f"{name}: the file changed while it was read")
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError on bad offsets/dtypes
        raise ContextbotError(f"{name}: damaged tensor data ({str(exc).splitlines()[0]})") from None
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    train = {k[6:]: v for k, v in tensors.items() if k.startswith("train.")}
    _check_sizes(name, config, weights)
    model = RecurrentLM(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        what = f"missing {', '.join(missing)}" if missing else f"unexpected {', '.join(extra)}"
        raise ContextbotError(f"{name}: weights do not match the config ({what})")
    for k, v in weights.items():
        if v.shape != expected[k].shape:
            raise ContextbotError(f"{name}: weight {k} has shape {tuple(v.shape)}, the config "
                                  f"needs {tuple(expected[k].shape)}")
        if not v.is_floating_point():
            raise ContextbotError(f"{name}: weight {k} is not floating point")
        if not torch.isfinite(v).all():
            raise ContextbotError(f"{name}: weight {k} contains NaN or infinite values")
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    model.to(device).eval()
    return Checkpoint(model=model, tokenizer=tokenizer, step=step, metadata=meta,
                      train_tensors=train, path=path, sha256=hashlib.sha256(data).hexdigest())


def _check_sizes(name: str, config: ModelConfig, weights: dict[str, torch.Tensor]) -> None:
    """Check the config's sizes against the file's own tensors *before* building the model.

    Building first would let a hostile config (hidden = 10**9, layers = 10**6) make us allocate
    terabytes or spin for minutes. The embedding (vocab, embed), the head (vocab, hidden), the
    referent head if any, and the number of layers pin every size, so once they agree the model is no bigger than the file.
    """
    pinned = [("embedding.weight", (config.vocab_size, config.embed)),
              ("head.weight", (config.vocab_size, config.hidden))]
    if config.referents:  # the training-only referent head (referents.py) is sized by the config too
        pinned.append(("referent_head.weight", (2 * config.referents, config.hidden)))
    for key, shape in pinned:
        if key not in weights:
            raise ContextbotError(f"{name}: weights do not match the config (missing {key})")
        if tuple(weights[key].shape) != shape:
            raise ContextbotError(f"{name}: weight {key} has shape {tuple(weights[key].shape)}, "
                                  f"the config needs {shape}")
    layers = sum(k.startswith("rnn.weight_hh_l") for k in weights)
    if layers != config.layers:
        raise ContextbotError(f"{name}: weights do not match the config ({layers} layers, "
                              f"the config says {config.layers})")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
