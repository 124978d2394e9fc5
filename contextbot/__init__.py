"""contextbot: a character-level recurrent language model that remembers who "he" and "she" mean
from one chat turn to the next, because it carries its hidden state across turns.

The names below are imported lazily, so `contextbot --help` and the terminal UI's first frame do
not wait for PyTorch to load.
"""

__all__ = ["ChatSession", "ContextbotError", "ModelConfig", "RecurrentLM"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "ChatSession":
        from .chat import ChatSession
        return ChatSession
    if name in ("ModelConfig", "RecurrentLM"):
        from . import model
        return getattr(model, name)
    if name == "ContextbotError":
        from .errors import ContextbotError
        return ContextbotError
    raise AttributeError(f"module 'contextbot' has no attribute {name!r}")
