"""Tokenizers: a byte-level one for the tiny CPU model, and an adapter for Hugging Face's.

Both map text to ids without adding special tokens on their own: the renderer decides
where special tokens go, and tokenizes each piece exactly once.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_token_id(self) -> int: ...

    @property
    def pad_token_id(self) -> int: ...

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, with no special tokens added."""
        ...

    def decode(self, ids: list[int] | tuple[int, ...]) -> str: ...


class ByteTokenizer:
    """One token per UTF-8 byte, then special tokens: a tokenizer that needs no download."""

    SPECIALS = ("<pad>", "<bos>", "<eos>")

    def __init__(self) -> None:
        self.special_ids = {name: 256 + i for i, name in enumerate(self.SPECIALS)}

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.SPECIALS)

    @property
    def pad_token_id(self) -> int:
        return self.special_ids["<pad>"]

    @property
    def bos_token_id(self) -> int:
        return self.special_ids["<bos>"]

    @property
    def eos_token_id(self) -> int:
        return self.special_ids["<eos>"]

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A `transformers` tokenizer behind the `Tokenizer` protocol (it keeps `.hf` for chat templates)."""

    def __init__(self, hf: Any) -> None:
        self.hf = hf

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def eos_token_id(self) -> int:
        return int(self.hf.eos_token_id)

    @property
    def pad_token_id(self) -> int:
        pad = self.hf.pad_token_id
        return int(pad if pad is not None else self.hf.eos_token_id)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)
