"""A sentencepiece tokenizer configured for an *exact* round trip: `decode(encode(t)) == t`.

sentencepiece's defaults are made for sentences of natural language, not for a character-level
language model that must reproduce every space and newline:

- it reads its training text line by line, so "\\n" never enters the vocabulary
  (we declare it a user-defined symbol instead);
- it adds a dummy-prefix "▁" and collapses repeated spaces (`add_dummy_prefix`,
  `remove_extra_whitespaces`: both off);
- it rewrites characters with NFKC (`normalization_rule_name="identity"` keeps them);
- it decodes an unseen character as " ⁇ " (`byte_fallback=True` spells any character as its
  UTF-8 bytes, so nothing is ever unknown and the round trip is exact for all of Unicode).

With `model_type="char"` (the default) every character seen in training is one token. BPE and
unigram models (`kind="bpe"|"unigram"`) serve larger corpora; their pieces span several characters.
The trained model is a few kilobytes of protobuf and travels inside the checkpoint.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import sentencepiece as spm

from ..errors import ContextbotError

KINDS = ("char", "bpe", "unigram")


class Tokenizer:
    """Text <-> token ids, plus the per-token facts that generation and scoring need."""

    def __init__(self, model_proto: bytes):
        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except Exception as exc:  # sentencepiece raises RuntimeError / OSError on garbage
            raise ContextbotError(f"the tokenizer inside the checkpoint is damaged ({exc})") from None
        n = self.sp.get_piece_size()
        self.vocab_size = n
        self.newline_id = self.sp.piece_to_id("\n")
        # Ids that end a reply line: the newline piece, and the byte piece <0x0A> that an
        # undertrained model could emit instead.
        self.line_end_ids = {self.newline_id} | {i for i in range(n) if self.sp.is_byte(i)
                                                 and self.sp.id_to_piece(i) == "<0x0A>"}
        # What each id spells, for streaming one token at a time. Byte pieces ("<0xE2>") hold one
        # UTF-8 byte each and are joined by `Decoder`; every other piece is text.
        self.piece_text: list[str | None] = []
        self.piece_byte: list[int | None] = []
        for i in range(n):
            if self.sp.is_byte(i):
                self.piece_text.append(None)
                self.piece_byte.append(int(self.sp.id_to_piece(i)[1:-1], 16))
            elif self.sp.is_control(i) or self.sp.is_unknown(i):
                self.piece_text.append("")
                self.piece_byte.append(None)
            else:
                self.piece_text.append(self.sp.id_to_piece(i).replace("\u2581", " "))
                self.piece_byte.append(None)

    # -- training -----------------------------------------------------------------------------
    @classmethod
    def train(cls, lines: Iterable[str], kind: str = "char", vocab_size: int = 2000) -> "Tokenizer":
        """Train on an iterable of lines (without their newlines) and return the tokenizer.

        `vocab_size` matters only for bpe and unigram; in char mode the vocabulary is simply
        every character seen, plus the 256 byte pieces and "<unk>".
        """
        if kind not in KINDS:
            raise ContextbotError(f"unknown tokenizer {kind!r} (choose from {', '.join(KINDS)})")
        lines = [ln for ln in lines if ln]
        if not lines:
            raise ContextbotError("cannot train a tokenizer on an empty corpus")
        options = dict(
            model_type=kind,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            split_by_whitespace=False,
            allow_whitespace_only_pieces=True,
            user_defined_symbols=["\n"],
            character_coverage=1.0,
            byte_fallback=True,
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            minloglevel=2,
            num_threads=1,  # deterministic, and the corpora are small
        )
        if kind == "char":
            options["vocab_size"] = 1 << 16  # char mode keeps every character seen; this is only a cap
            options["hard_vocab_limit"] = False
        else:
            options["vocab_size"] = vocab_size
            options["hard_vocab_limit"] = False
            options["max_sentence_length"] = 1 << 16
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, **options)
        except RuntimeError as exc:
            raise ContextbotError(f"sentencepiece could not train a tokenizer: {exc}") from None
        return cls(model.getvalue())

    # -- use ----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode(list(ids))

    def char_count(self, token_id: int) -> int:
        """How many characters a token adds to the text (0 for a UTF-8 continuation byte)."""
        b = self.piece_byte[token_id]
        if b is None:
            return len(self.piece_text[token_id])
        return 0 if 0x80 <= b < 0xC0 else 1

    def decoder(self) -> "Decoder":
        return Decoder(self)


class Decoder:
    """Turns a stream of token ids into text as soon as each character is complete.

    A character outside the tokenizer's alphabet arrives as two to four byte tokens; it is held
    back until its last byte arrives, so a streaming UI never shows half a character.
    """

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.pending = bytearray()

    def push(self, token_id: int) -> str:
        byte = self.tok.piece_byte[token_id]
        if byte is None:
            flushed = self.flush()
            return flushed + self.tok.piece_text[token_id]
        self.pending.append(byte)
        try:
            text = self.pending.decode("utf-8")
        except UnicodeDecodeError:
            if len(self.pending) >= 4:
                return self.flush()
            return ""
        self.pending.clear()
        return text

    def flush(self) -> str:
        text = self.pending.decode("utf-8", errors="replace")
        self.pending.clear()
        return text
