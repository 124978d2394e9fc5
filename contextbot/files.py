"""Reading and writing the files a user names, safely: every failure is one `ContextbotError` line.

- `read_text`: a small UTF-8 file (a script, a facts file);
- `write_atomic`: replace a file so that a reader, or a crash, only ever sees the old or the new
  content (temporary file, fsync, rename, fsync the folder) — checkpoints, corpora, figures and
  tables are all written this way;
- `check_writable` and `remove_stale_temporaries`: the checks around a long-running writer.

Nothing here imports PyTorch: `contextbot corpus` uses it without loading the model code.
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from pathlib import Path

from .errors import ContextbotError


def read_text(path, what: str) -> str:
    """Read a small UTF-8 file that a user named, turning every failure into one line:
    `read_text("q.txt", "script")` -> "q.txt: no such script file", "...: not UTF-8 text"."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ContextbotError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise ContextbotError(f"{path}: is a directory, not a {what} file") from None
    except UnicodeDecodeError:
        raise ContextbotError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ContextbotError(f"{path}: cannot read ({exc.strerror})") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers only ever see the old or the new content.

    A path that cannot be written (a directory, a parent that is a file, a full disk) is a
    one-line `ContextbotError`.
    """
    try:
        _write_atomic(path, data)
    except OSError as exc:
        raise ContextbotError(f"{path}: cannot write ({exc.strerror or exc})") from None


def check_writable(path: str | Path) -> None:
    """Fail at once, not after hours of training, if `path` cannot take a checkpoint: it is a
    directory, its folder cannot be created (a part of it is a file) or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ContextbotError(f"{path}: is a directory; give a file, e.g. {path / 'model.safetensors'}")
    folder = next(p for p in path.parents if p.exists())  # the deepest part that exists
    if not folder.is_dir():
        raise ContextbotError(f"{path}: cannot write ({folder} is a file, not a folder)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise ContextbotError(f"{path}: cannot write ({exc.strerror or exc})") from None


STALE_AFTER = 60.0  # seconds; writing a checkpoint takes well under one


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporaries that killed writers of `path` left beside it; return them.

    `write_atomic` writes `.NAME.XXXX.tmp` and renames it over NAME. A process killed between
    the two (kill -9, a power cut) leaves the temporary: harmless, since NAME is still the last
    complete checkpoint, but a few MB each, hidden, and piling up. Training calls this before its
    first save. Only temporaries untouched for a minute go: a younger one may belong to a
    writer that is still alive."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_AFTER:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue  # gone already, or not ours to delete: leave it
    return removed


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename itself is still atomic


def replace_block(path: Path, start: str, end: str, block: str, write=None) -> bool:
    """Put `block` between the markers `start` and `end` of a text file (a generated table in a
    Markdown page), writing atomically (or with `write(path, data)`); False, writing nothing, if
    the file or a marker is missing."""
    path = Path(path)
    if not path.exists():
        return False
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        return False
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    (write or write_atomic)(path, f"{before}{start}\n{block}\n{end}{after}".encode("utf-8"))
    return True
