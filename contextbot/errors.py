"""The one exception type that the command line turns into `contextbot: error: ...` and exit code 2.

Anything a user can get wrong (a corpus, a checkpoint, a flag, a question) raises `ContextbotError`
with a message that says what is wrong in one line. Everything else is a bug and may show a traceback.
"""


class ContextbotError(Exception):
    """A problem with the user's input: shown as one line, never as a traceback."""


def read_text(path, what: str) -> str:
    """Read a small UTF-8 file that a user named, turning every failure into one line:
    `read_text("q.txt", "script")` -> "q.txt: no such script file", "...: not UTF-8 text"."""
    from pathlib import Path

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
