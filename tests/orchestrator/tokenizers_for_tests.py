"""Small real Hugging Face tokenizers, built in code (no downloads), with chat templates written here.

Each is a byte-level BPE trained in memory on a tiny shell-flavoured corpus, wrapped in
`PreTrainedTokenizerFast` with a model family's special tokens: ChatML (Qwen style) and
Llama 3 style. The pathological templates are ones an append-only renderer must refuse.
"""

from __future__ import annotations

from functools import cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from trainers.tokenizer import HFTokenizer

CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

# Qwen 2.5 style: a default system prompt when none is given; tool replies wrapped in a user turn.
CHATML_TEMPLATE = r"""
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' or message.role == 'assistant' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Llama 3 style: bos first, every content trimmed, tool replies under the `ipython` header.
LLAMA3_TEMPLATE = r"""
{{- bos_token }}
{%- for message in messages %}
    {%- set role = 'ipython' if message.role == 'tool' else message.role %}
    {{- '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + message.content | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

_CHATML_TURN = r"{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
_CHATML_GENERATION = r"{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"


def _chatml_variant(turn: str = _CHATML_TURN, generation: str = _CHATML_GENERATION) -> str:
    return "{%- for message in messages %}" + turn + "{%- endfor %}" + generation


PATHOLOGICAL_TEMPLATES = {
    # Reasoning-model style: only the final assistant message keeps its content.
    "rewrites_earlier_assistant_turns": _chatml_variant(
        r"{%- set content = message.content if message.role != 'assistant' or loop.last else '' %}"
        r"{{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}"
    ),
    # Numbers the non-assistant turns: each turn's markup is well formed but differs from the last one's.
    "numbers_turns": _chatml_variant(
        r"{%- set tag = message.role if message.role == 'assistant' else message.role + ' ' + loop.index0 | string %}"
        r"{{- '<|im_start|>' + tag + '\n' + message.content + '<|im_end|>\n' }}"
    ),
    # Qwen 3 with thinking off: the generation prompt opens an empty think block history never shows.
    "thinks_only_in_generation_prompt": _chatml_variant(
        generation=r"{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n<think>\n' }}{%- endif %}"
    ),
    "uppercases_content": _chatml_variant(
        r"{{- '<|im_start|>' + message.role + '\n' + message.content | upper + '<|im_end|>\n' }}"
    ),
    # Strips one side only: neither verbatim nor `trim`, so the renderer cannot reproduce it.
    "rstrips_content": _chatml_variant(
        r"{{- '<|im_start|>' + message.role + '\n' + message.content.rstrip() + '<|im_end|>\n' }}"
    ),
    # No special token ends a turn, so nothing can stop sampling at the end of one.
    "plain_text_turns": _chatml_variant(
        r"{{- message.role + ': ' + message.content + '\n\n' }}",
        r"{%- if add_generation_prompt %}{{- 'assistant: ' }}{%- endif %}",
    ),
}

CORPUS = [
    "cat app.log",
    "ls -la /srv/app",
    "pytest -q tests/test_app.py",
    "total 8\n-rw-r--r-- 1 root root 12 app.log\n",
    "ERROR: disk full\nTraceback (most recent call last):\n",
    "You are a terminal agent. Fix the failing test.",
    "system user assistant tool ipython",
]


def build_tokenizer(family: str) -> HFTokenizer:
    """A new byte-level BPE for `family` ("chatml" or "llama3"), with the family's template set."""
    specials = {"chatml": CHATML_SPECIALS, "llama3": LLAMA3_SPECIALS}[family]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 20, trainer=trainer)
    if family == "chatml":
        hf = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            additional_special_tokens=["<|im_start|>", "<|im_end|>"],
            clean_up_tokenization_spaces=False,
        )
        hf.chat_template = CHATML_TEMPLATE
    else:
        hf = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token="<|begin_of_text|>",
            eos_token="<|end_of_text|>",
            additional_special_tokens=["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            clean_up_tokenization_spaces=False,
        )
        hf.chat_template = LLAMA3_TEMPLATE
    return HFTokenizer(hf)


bpe_tokenizer = cache(build_tokenizer)
"""Shared per family: build it once per test session (renderers never mutate it)."""


def with_template(family: str, chat_template: str | None) -> HFTokenizer:
    """A new tokenizer of `family` whose chat template is `chat_template`."""
    tokenizer = build_tokenizer(family)
    tokenizer.hf.chat_template = chat_template
    return tokenizer
