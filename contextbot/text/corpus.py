"""The corpus files: building `train.txt`/`valid.txt` from facts, and reading any corpus.

Format (turns.py): a question line `Q: ...` then its answer line `A: ...`; a blank line between
conversations. Reading streams the file line by line, so checking a large corpus takes little
memory.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ContextbotError
from ..files import check_writable, write_atomic
from ..paths import CHECKPOINTS, CORPUS, DEFAULT_FACTS, SHIPPED
from .dialogue import format_conversation, training_conversation
from .facts import load_facts
from .turns import ANSWER, QUESTION, TURN_EXTRA, parse_line

MAX_LINE = 10_000  # characters; a longer line is not a chat turn

# How many conversations `corpus build` writes: about 3 M characters of training text.
TRAIN_CONVERSATIONS = 6000
VALID_CONVERSATIONS = 300


def build(facts: str | Path | None = None, seed: int = 1, out_dir: str | Path | None = None,
          train_conversations: int = TRAIN_CONVERSATIONS,
          valid_conversations: int = VALID_CONVERSATIONS) -> tuple[Path, Path]:
    """Write train.txt and valid.txt, deterministically for a seed, and return their full paths.
    Validation uses a different random stream, so its conversations are new ones.

    Where: into `out_dir` if given; else beside `facts` if given; else (the shipped facts) into
    the current folder (`output_folder`). Everything is checked before anything is written: the
    facts, both texts, and that both files can be written; each file is then replaced atomically,
    so a failure leaves the old corpus as it was."""
    out = output_folder(facts, out_dir)
    facts = facts if facts is not None else DEFAULT_FACTS
    entities = load_facts(facts)
    texts = []
    for name, count, stream in (("train.txt", train_conversations, 0),
                                ("valid.txt", valid_conversations, 1)):
        rng = random.Random(f"contextbot-corpus-{seed}-{stream}")
        text = "\n".join(format_conversation(training_conversation(rng, entities))
                         for _ in range(count))
        longest = max((len(line) for line in text.split("\n")), default=0)
        if longest > MAX_LINE:  # load_facts bounds every value: not expected to happen
            raise ContextbotError(f"{facts}: a generated line of {longest} characters (at most {MAX_LINE})")
        texts.append((out / name, text.encode("utf-8")))
    for path, _ in texts:
        if path.is_dir():
            raise ContextbotError(f"{path}: is a directory; nothing was written")
        check_writable(path)
    for path, data in texts:
        write_atomic(path, data)
    return texts[0][0], texts[1][0]


def output_folder(facts: str | Path | None, out_dir: str | Path | None) -> Path:
    """Where `build` writes, as a full path: `out_dir`; else the facts file's folder; else the
    current folder. Without either, it refuses to write into contextbot's own files (the shipped
    corpus, the checkpoints, the package): rebuilding the shipped corpus is asked for by name,
    `--facts corpus/facts.json` or `--out-dir corpus`."""
    if out_dir is not None:
        return Path(out_dir).resolve()
    if facts is not None:
        return Path(facts).resolve().parent
    here = Path.cwd().resolve()
    package = Path(__file__).resolve().parent.parent
    if here == SHIPPED.resolve() or any(here.is_relative_to(p.resolve()) for p in (CORPUS, CHECKPOINTS, package)):
        raise ContextbotError(f"{here} holds contextbot's shipped files; corpus build without --facts "
                              f"writes into the current folder: run it elsewhere, or say where with "
                              f"--out-dir (or --facts {DEFAULT_FACTS} to rebuild the shipped corpus)")
    return here


@dataclass
class Conversation:
    """A conversation as (question, answer) pairs."""

    turns: list[tuple[str, str]]


@dataclass
class CorpusStats:
    conversations: int = 0
    turns: int = 0
    characters: int = 0
    alphabet: Counter = field(default_factory=Counter)
    sha256: str = ""


def _open_lines(path: Path) -> Iterator[tuple[int, str]]:
    if path.is_dir():
        raise ContextbotError(f"{path}: is a directory, not a corpus file")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ContextbotError(f"{path}: no such corpus file") from None
    except OSError as exc:
        raise ContextbotError(f"{path}: cannot read ({exc.strerror})") from None
    # At most this many bytes a read: MAX_LINE characters of up to 4 UTF-8 bytes, and "\r\n".
    # `for raw in f` would read a whole line however long it is: one gigantic line (or /dev/zero)
    # would fill the memory before we could refuse it.
    limit = 4 * MAX_LINE + 2
    with f:
        n = 0
        while raw := f.readline(limit):
            n += 1
            if b"\x00" in raw:
                raise ContextbotError(f"{path}: line {n} contains a NUL byte (a binary file?)")
            if len(raw) == limit and not raw.endswith(b"\n"):
                raise ContextbotError(f"{path}: line {n} is longer than {MAX_LINE} characters")
            try:
                line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
            except UnicodeDecodeError:
                raise ContextbotError(f"{path}: line {n} is not UTF-8 text") from None
            if len(line) > MAX_LINE:
                raise ContextbotError(f"{path}: line {n} is longer than {MAX_LINE} characters")
            yield n, line


def read_conversations(path: str | Path, stats: CorpusStats | None = None) -> Iterator[Conversation]:
    """Yield the conversations of a corpus file, checking its format as it goes.

    Errors name the line: a line that is neither a question nor an answer (turns.parse_line), an
    answer without a question, a question without an answer. A file with no turns at all is an
    error too.
    """
    path = Path(path)
    stats = stats if stats is not None else CorpusStats()
    sha = hashlib.sha256()
    turns: list[tuple[str, str]] = []
    question: str | None = None
    for n, line in _open_lines(path):
        sha.update(line.encode("utf-8") + b"\n")
        if not line.strip():
            if question is not None:
                raise ContextbotError(f"{path}: line {n - 1}: a question without an answer")
            if turns:
                stats.conversations += 1
                yield Conversation(turns)
                turns = []
            continue
        parsed = parse_line(line)
        if parsed is None:
            raise ContextbotError(f"{path}: line {n}: expected a line starting with {QUESTION!r} or "
                                  f"{ANSWER!r}, got {line[:30]!r}")
        kind, text = parsed
        if kind == "Q":
            if question is not None:
                raise ContextbotError(f"{path}: line {n}: a question follows a question without an answer")
            question = text
        else:
            if question is None:
                raise ContextbotError(f"{path}: line {n}: an answer without a question")
            turns.append((question, text))
            stats.turns += 1
            stats.characters += len(question) + len(text) + TURN_EXTRA  # len(turn(question, text))
            stats.alphabet.update(question)
            stats.alphabet.update(line)
            question = None
    if question is not None:
        raise ContextbotError(f"{path}: the last question has no answer")
    if turns:
        stats.conversations += 1
        yield Conversation(turns)
    stats.sha256 = sha.hexdigest()
    if stats.turns == 0:
        raise ContextbotError(f"{path}: no Q/A turns (expected lines '{QUESTION}...' then '{ANSWER}...')")


def check(path: str | Path) -> CorpusStats:
    """Validate a corpus file and return its statistics, reading it in one streaming pass."""
    stats = CorpusStats()
    for _ in read_conversations(path, stats):
        pass
    return stats
