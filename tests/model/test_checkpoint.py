import builtins
import io
import json
import os
import pickle
import struct
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import save_file

from contextbot.model import checkpoint
from contextbot.errors import ContextbotError
from contextbot.text.turns import prompt

from ..conftest import assert_one_line_error, cli, make_model


def test_round_trip_gives_identical_logits(tmp_path, tiny_tokenizer):
    for cell in ("rnn", "gru", "lstm"):
        m = make_model(tiny_tokenizer, cell, layers=2)
        p = tmp_path / f"{cell}.safetensors"
        checkpoint.save(p, m, tiny_tokenizer, step=7, corpus_sha256="abc")
        ck = checkpoint.load(p)
        x = torch.tensor([tiny_tokenizer.encode(prompt("Who is Tom Cruise?"))])
        torch.testing.assert_close(ck.model(x)[0], m(x)[0], rtol=0, atol=0)
        assert ck.step == 7 and ck.metadata["corpus_sha256"] == "abc"
        assert ck.tokenizer.encode("Who") == tiny_tokenizer.encode("Who")
        assert len(ck.sha256) == 64


def test_interrupted_save_leaves_previous_file_intact(tmp_path, tiny_tokenizer, monkeypatch):
    p = tmp_path / "m.safetensors"
    m = make_model(tiny_tokenizer)
    checkpoint.save(p, m, tiny_tokenizer, step=1)
    before = p.read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt  # as if killed between writing and renaming

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(p, make_model(tiny_tokenizer, seed=1), tiny_tokenizer, step=2)
    assert p.read_bytes() == before
    assert checkpoint.load(p).step == 1
    assert [f.name for f in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt", "evil.ckpt"])
def test_pickle_is_refused_and_never_run(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _write(tmp_path, name, pickle.dumps(Payload()))
    with pytest.raises(ContextbotError, match="not a safetensors checkpoint"):
        checkpoint.load(p)
    assert not (tmp_path / "PWNED").exists()


def test_damaged_files_are_one_line_errors(tmp_path, tiny_tokenizer):
    good = tmp_path / "good.safetensors"
    checkpoint.save(good, make_model(tiny_tokenizer), tiny_tokenizer, step=0)
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "absurd_header": struct.pack("<Q", 1 << 60) + b"{}",
        "empty": b"",
    }
    for name, blob in cases.items():
        with pytest.raises(ContextbotError) as e:
            checkpoint.load(_write(tmp_path, name, blob))
        assert "\n" not in str(e.value)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, other)
    with pytest.raises(ContextbotError, match="not a contextbot checkpoint"):
        checkpoint.load(other)
    with pytest.raises(ContextbotError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing.safetensors")
    with pytest.raises(ContextbotError, match="directory"):
        checkpoint.load(tmp_path)


def test_future_version_wrong_shapes_and_nan_are_refused(tmp_path, tiny_tokenizer, monkeypatch):
    m = make_model(tiny_tokenizer)
    p = tmp_path / "m.safetensors"
    monkeypatch.setattr(checkpoint, "VERSION", 99)
    checkpoint.save(p, m, tiny_tokenizer, step=0)
    monkeypatch.setattr(checkpoint, "VERSION", 1)
    with pytest.raises(ContextbotError, match="newer"):
        checkpoint.load(p)

    m.config.hidden = 32  # the config now disagrees with the weights
    checkpoint.save(p, m, tiny_tokenizer, step=0)
    with pytest.raises(ContextbotError, match="shape"):
        checkpoint.load(p)

    m = make_model(tiny_tokenizer)
    with torch.no_grad():
        m.head.weight[0, 0] = float("nan")
    checkpoint.save(p, m, tiny_tokenizer, step=0)
    with pytest.raises(ContextbotError, match="NaN"):
        checkpoint.load(p)


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path):
    p = _write(tmp_path, "evil.pt", pickle.dumps(Payload()))
    r = subprocess.run([sys.executable, "-m", "contextbot", "ask", "--checkpoint", str(p), "Hi"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("contextbot: error: ") and r.stderr.count("\n") == 1
    assert not (tmp_path / "PWNED").exists()


# -- hostile files: bounded reads, deep nesting, offsets past the end ----------------------------

BIG = 2**31  # a sparse 2 GB file: f.truncate makes it without using disk


class _CountingFile:
    """A file object that adds every byte read from it to `counter[0]`."""

    def __init__(self, f, counter):
        self._f, self._counter = f, counter

    def read(self, *args):
        data = self._f.read(*args)
        self._counter[0] += len(data)
        return data

    def readinto(self, b):
        n = self._f.readinto(b)
        self._counter[0] += n or 0
        return n

    def __enter__(self):
        self._f.__enter__()
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __getattr__(self, name):  # fileno, seek, close, ...: the real file's
        return getattr(self._f, name)


def _proc_rchar() -> int | None:
    """Bytes this process has read through read(2) so far (Linux), else None."""
    try:
        with builtins.open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
    except (OSError, StopIteration, ValueError):
        return None


@contextmanager
def count_reads(path):
    """Count the bytes read from `path` (through open, io.open or Path.read_bytes) inside the block,
    and, on Linux, every byte the process read at all: yields a list whose [0] holds the larger."""
    counter = [0]
    real_open = io.open
    target = os.path.realpath(path)

    def counting_open(file, *args, **kwargs):
        f = real_open(file, *args, **kwargs)
        if isinstance(file, (str, bytes, os.PathLike)) and os.path.realpath(file) == target:
            return _CountingFile(f, counter)
        return f

    mp = pytest.MonkeyPatch()
    mp.setattr(builtins, "open", counting_open)
    mp.setattr(io, "open", counting_open)
    before = _proc_rchar()
    try:
        yield counter
    finally:
        mp.undo()
        after = _proc_rchar()
        if before is not None and after is not None:
            counter[0] = max(counter[0], after - before)


def _header_of(path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _raw(header, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _big(tmp_path, name: str, head: bytes):
    p = tmp_path / name
    with open(p, "wb") as f:
        f.write(head)
        f.truncate(BIG)  # sparse: no disk used
    return p


def test_a_huge_file_is_refused_after_reading_at_most_its_header(tmp_path, tiny_checkpoint, capsys):
    header, data = _header_of(tiny_checkpoint)
    meta = header["__metadata__"]
    cases = {  # every kind of start a 2 GB file might have, each refused before its data is read
        "pickle.pt": (pickle.dumps(Payload()), "not a safetensors checkpoint"),
        "zeros.bin": (b"", "not a safetensors checkpoint"),  # a header length of 0
        "text.txt": (b"Q: Who is Tom Cruise?\nA: He is an American actor.\n", "header claims"),
        "huge-claim.safetensors": (struct.pack("<Q", 1 << 62), "header claims"),
        "under-limit-junk.safetensors": (struct.pack("<Q", 1 << 20) + b"\xff" * 64, "unreadable"),
        "other.safetensors": (_raw({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}),
                              "not a contextbot checkpoint"),
        "future.safetensors": (_raw(header | {"__metadata__": meta | {"version": "99"}}), "newer"),
        # a real contextbot header and its real tensors, then 2 GB nobody declared
        "trailing.safetensors": (_raw(header, data), "cover"),
    }
    for name, (head, match) in cases.items():
        p = _big(tmp_path, name, head)
        assert p.stat().st_size == BIG
        with count_reads(p) as read, pytest.raises(ContextbotError, match=match) as e:
            checkpoint.load(p)
        assert "\n" not in str(e.value)
        assert read[0] < 4 * 2**20, (name, read[0])  # a few MB at most, never the 2 GB
    rc, _, err = cli(capsys, "ask", "--checkpoint", tmp_path / "pickle.pt", "Hi")
    assert_one_line_error(rc, err, "not a safetensors checkpoint")


def test_a_normal_checkpoint_is_read_once(tiny_checkpoint):
    size = tiny_checkpoint.stat().st_size
    with count_reads(tiny_checkpoint) as read:
        checkpoint.load(tiny_checkpoint)
    assert size <= read[0] < size + 4 * 2**20


def _nested(depth: int, kind: str = "list") -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_deeply_nested_json_is_one_line(tmp_path, tiny_checkpoint, capsys, kind):
    header, data = _header_of(tiny_checkpoint)
    meta = header["__metadata__"]
    deep = _nested(100_000, kind)
    files = {
        "header": deep.encode(),  # the header itself
        "in-header": json.dumps(header).encode()[:-1] + b', "x": ' + deep.encode() + b"}",
        "metadata": _raw(header | {"__metadata__": None})[8:].replace(
            b'"__metadata__": null', b'"__metadata__": ' + deep.encode()),
        "config": _raw(header | {"__metadata__": meta | {"config": deep}})[8:],
        "train": _raw(header | {"__metadata__": meta | {"train": deep}})[8:],
        "config-value": _raw(header | {"__metadata__": meta | {  # parses, but nests in a field
            "config": json.dumps(json.loads(meta["config"]) | {"hidden": None}).replace(
                '"hidden": null', '"hidden": ' + _nested(900, kind))}})[8:],
    }
    for name, raw in files.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
        with pytest.raises(ContextbotError) as e:
            checkpoint.load(p)
        assert "\n" not in str(e.value), name
        rc, _, err = cli(capsys, "ask", "--checkpoint", p, "Hi")
        assert_one_line_error(rc, err)
    with pytest.raises(ContextbotError, match="nested too deeply"):
        checkpoint.load(tmp_path / "header.safetensors")
    with pytest.raises(ContextbotError, match="nested too deeply"):
        checkpoint.load(tmp_path / "config.safetensors")


def test_offsets_past_the_end_are_refused_before_the_data_is_read(tmp_path, tiny_checkpoint, capsys):
    header, data = _header_of(tiny_checkpoint)
    tensor = next(k for k in header if k != "__metadata__")
    begin, end = header[tensor]["data_offsets"]

    def with_offsets(offsets):
        return header | {tensor: header[tensor] | {"data_offsets": offsets}}

    cases = {
        "past-end": (with_offsets([begin, len(data) + 1]), "past the end"),
        "far-past-end": (with_offsets([begin, 2**62]), "past the end"),
        "begins-past-end": (with_offsets([len(data) + 8, len(data) + 16]), "past the end"),
        "reversed": (with_offsets([end, begin]), "data_offsets"),
        "negative": (with_offsets([-8, end]), "data_offsets"),
        "not-ints": (with_offsets(["0", end]), "data_offsets"),
        "float": (with_offsets([begin, float(end)]), "data_offsets"),
        "missing": (header | {tensor: {"dtype": "F32", "shape": [1]}}, "data_offsets"),
        "not-a-dict": (header | {tensor: [begin, end]}, "data_offsets"),
    }
    for name, (h, match) in cases.items():
        p = tmp_path / f"{name}.safetensors"
        head = _raw(h)
        p.write_bytes(head + data)
        with count_reads(p) as read, pytest.raises(ContextbotError, match=match) as e:
            checkpoint.load(p)
        assert "\n" not in str(e.value)
        assert read[0] < len(head) + 2**20, name  # the header, not the tensors
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:-1])
    with pytest.raises(ContextbotError, match="past the end"):
        checkpoint.load(truncated)
    rc, _, err = cli(capsys, "ask", "--checkpoint", tmp_path / "past-end.safetensors", "Hi")
    assert_one_line_error(rc, err, "past the end")
