"""A small word-level Hugging Face tokenizer, saved beside a tiny model so that the directory
loads through the `hf` model path (`AutoTokenizer`) with no download."""

from __future__ import annotations

from tokenizers import Tokenizer as RawTokenizer
from tokenizers import models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def word_tokenizer() -> PreTrainedTokenizerFast:
    words = ["<pad>", "<eos>", "<unk>", "user", "assistant", ":", "ls", "cat", "app", ".", "log", "answer", "5"]
    raw = RawTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template="{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}",
    )
