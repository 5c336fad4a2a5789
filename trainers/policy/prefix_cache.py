"""`PrefixCache`: an episode's KV cache kept from one turn to the next.

A turn's prompt is the previous turn's prompt, its generation and the environment's reply, so
all but the newest tokens were already through the model. The decode loop stores each
finished row's keys and values (its prompt and every generated token it fed back) under the
episode's request, and the episode's next turn loads them and prefills only what was added:
on the tiny CPU model, turn two of a `toy_terminal` episode prefilled ~60 tokens instead of
~250.

    turn t:   prompt_t ─► prefill ─► decode ─► store(prompt_t + generated[:-1], K, V)
    turn t+1: prompt_t+1 = prompt_t + generated + observation
              take() ─► K, V of the stored tokens ─► prefill only the rest

Entries are found by the episode (env, task, seed), and used only when their tokens begin the
new prompt, so a collision or an edited transcript costs a full prefill, never a wrong cache.
Keys and values depend on the weights: `clear()` on every weight update. At most `max_entries`
are kept, the least recently stored dropped first.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from trainers.policy.base import GenerateRequest

__all__ = ["CachedPrefix", "PrefixCache"]


@dataclass(frozen=True, slots=True)
class CachedPrefix:
    """Keys and values (one [kv_heads, tokens, head_dim] tensor per layer) of these tokens."""

    tokens: tuple[int, ...]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


class PrefixCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[tuple[str, str, int], CachedPrefix] = collections.OrderedDict()
        self.hits = 0
        self.tokens_reused = 0

    def take(self, request: GenerateRequest) -> CachedPrefix | None:
        """The request's episode's stored prefix, if its tokens begin this prompt (leaving at
        least one token to prefill, whose logits the first sample needs)."""
        key = _key(request)
        entry = self._entries.pop(key, None) if key is not None else None
        if entry is None:
            return None
        n = len(entry.tokens)
        if n >= len(request.prompt_ids) or request.prompt_ids[:n] != entry.tokens:
            return None
        self.hits += 1
        self.tokens_reused += n
        return entry

    def store(self, request: GenerateRequest, prefix: CachedPrefix) -> None:
        key = _key(request)
        if key is None:
            return
        self._entries[key] = prefix
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _key(request: GenerateRequest) -> tuple[str, str, int] | None:
    episode = request.episode
    return None if episode is None else (episode.env, episode.task_id, episode.seed)
