"""The one exception type that the command line turns into `contextbot: error: ...` and exit code 2.

Anything a user can get wrong (a corpus, a checkpoint, a flag, a question) raises `ContextbotError`
with a message that says what is wrong in one line. Everything else is a bug and may show a traceback.
"""


class ContextbotError(Exception):
    """A problem with the user's input: shown as one line, never as a traceback."""
