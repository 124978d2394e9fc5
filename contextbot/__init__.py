"""contextbot: a character-level recurrent language model that remembers who "he" and "she" mean
from one chat turn to the next, because it carries its hidden state across turns."""

from .errors import ContextbotError
from .model import ModelConfig, RecurrentLM
from .session import ChatSession

__all__ = ["ChatSession", "ContextbotError", "ModelConfig", "RecurrentLM"]
__version__ = "0.1.0"
