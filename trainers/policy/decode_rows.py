"""The decode loop's per-request state, shared by the static and the continuous batch.

DecodeRow: one request's seed, stops, limit, and the tokens and log-probs sampled so far
LiveBatch: a static batch's rows still generating and their tensors (left-padded prefill,
           then one token a step)
load_prefixes / finished_prefix: the lean path's episode prefixes in and out of a KV cache
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Literal

import torch

from hillclimb.config.rollout import SamplingParams
from trainers.policy.base import GenerateRequest, Generation
from trainers.policy.lean_llama import LeanLlamaForward
from trainers.policy.prefix_cache import CachedPrefix, PrefixCache

__all__ = ["DecodeRow", "LiveBatch", "finished_prefix", "load_prefixes"]


@dataclass(slots=True)
class DecodeRow:
    """One request's decoding state."""

    prompt: tuple[int, ...]
    sampling: SamplingParams
    generator: torch.Generator
    stops: frozenset[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: Literal["stop", "length"] | None = None

    @classmethod
    def start(cls, request: GenerateRequest, sampling: SamplingParams, eos_token_id: int) -> DecodeRow:
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        # Like vLLM (without ignore_eos), EOS always ends a generation: nothing follows it.
        stops = frozenset((*sampling.stop_token_ids, eos_token_id))
        return cls(request.prompt_ids, sampling, torch.Generator().manual_seed(seed % 2**64), stops)

    def append(self, token: int, logprob: float) -> bool:
        """Record a sampled token; True once this row is finished."""
        self.tokens.append(token)
        self.logprobs.append(logprob)
        if token in self.stops:
            self.finish = "stop"
        elif len(self.tokens) >= self.sampling.max_new_tokens:
            self.finish = "length"
        return self.finish is not None

    def generation(self, version: int) -> Generation:
        assert self.finish is not None
        return Generation(
            token_ids=tuple(self.tokens), logprobs=tuple(self.logprobs), finish_reason=self.finish, version=version
        )


@dataclass(slots=True)
class LiveBatch:
    """The rows still generating and their tensors (the KV cache drops finished rows too)."""

    rows: list[int]
    """Index into the batch's `DecodeRow` list of each tensor row."""
    input_ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    temperature: torch.Tensor
    top_p: torch.Tensor

    @classmethod
    def prefill(cls, rows: list[DecodeRow], pad_id: int, device: torch.device) -> LiveBatch:
        """Prompts right-aligned (left-padded), positions counted over real tokens only."""
        width = max(len(row.prompt) for row in rows)
        ids_BL = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask_BL = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            ids_BL[b, width - len(row.prompt) :] = torch.tensor(row.prompt, dtype=torch.long)
            mask_BL[b, width - len(row.prompt) :] = 1
        ids_BL, mask_BL = ids_BL.to(device), mask_BL.to(device)
        return cls(
            rows=list(range(len(rows))),
            input_ids=ids_BL,
            mask=mask_BL,
            positions=(mask_BL.cumsum(dim=-1) - 1).clamp_(min=0),
            temperature=torch.tensor([r.sampling.temperature for r in rows], dtype=torch.float32, device=device),
            top_p=torch.tensor([r.sampling.top_p for r in rows], dtype=torch.float32, device=device),
        )

    def generators(self, rows: list[DecodeRow]) -> list[torch.Generator]:
        return [rows[i].generator for i in self.rows]

    def step(self, tokens_B: torch.Tensor, keep: list[int]) -> None:
        """Inputs for the next forward pass: the kept rows' new tokens at their next positions."""
        next_positions_B = self.positions[:, -1] + 1
        if len(keep) < len(self.rows):
            index = torch.tensor(keep, device=tokens_B.device)
            self.rows = [self.rows[k] for k in keep]
            tokens_B, next_positions_B = tokens_B[index], next_positions_B[index]
            self.mask, self.temperature, self.top_p = self.mask[index], self.temperature[index], self.top_p[index]
        self.input_ids = tokens_B[:, None]
        self.positions = next_positions_B[:, None]
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)


def load_prefixes(prefixes: PrefixCache, forward: LeanLlamaForward, requests: list[GenerateRequest], width: int) -> int:
    """Load each row's stored prefix (rows are right-aligned at `width`); the first slot the
    prefill must compute: where the longest uncached remainder of any row begins."""
    uncached = 0
    for b, request in enumerate(requests):
        prefix = prefixes.take(request)
        first = width - len(request.prompt_ids)
        if prefix is not None:
            forward.load(b, first, prefix)
        uncached = max(uncached, len(request.prompt_ids) - (len(prefix.tokens) if prefix else 0))
    start = width - uncached
    forward.skip_to(start)
    return start


def finished_prefix(forward: LeanLlamaForward, b: int, first: int, row: DecodeRow) -> CachedPrefix:
    """Row `b`'s keys and values, its prompt starting at slot `first`: its prompt and every token
    it fed back (the last sampled token never was), for its episode's next turn."""
    return forward.prefix(b, first, row.prompt + tuple(row.tokens[:-1]))
