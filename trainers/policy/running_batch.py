"""`RunningBatch`: the continuous decode batch of a Llama model on the lean path (`ContinuousBatcher`'s
`Decode` for `HFPolicy`).

    step():  admitted requests ─► their own left-padded prefill (episode prefixes loaded, as in a
                 static batch) ─► first token sampled ─► unfinished rows join the running cache
             running rows ─► one token each ─► finished rows leave (prefixes stored for their episodes)

The cache is one left-padded tensor per layer, every row's latest token in the last written slot.
Rows joining are right-aligned with the rows running (`LeanLlamaForward.join`: the shorter side
shifts right, zeros before it masked as padding); when rows leave, slots that are padding in every
row left are trimmed from the front, so the cache spans the longest row running, not the age of
the batch. Position ids count real tokens only, so a row's positions, and its tokens, are those
of the same request decoded alone, up to floating-point differences between batch shapes (see
`trainers.policy.hf`). A request decoded alone computes exactly what a static batch of one does.
"""

from __future__ import annotations

from typing import Any

import torch

from hillclimb.config.rollout import SamplingParams
from trainers.policy.base import GenerateRequest, Generation
from trainers.policy.decode_rows import DecodeRow, LiveBatch, finished_prefix, load_prefixes
from trainers.policy.lean_llama import LeanLlamaForward
from trainers.policy.prefix_cache import PrefixCache
from trainers.policy.sampling import sample_next

__all__ = ["RunningBatch"]

_Item = tuple[GenerateRequest, SamplingParams]


class RunningBatch:
    """Rows decoding together on one version's weights; requests join and leave between steps."""

    def __init__(self, model: Any, *, pad_id: int, eos_id: int, prefixes: PrefixCache, version: int) -> None:
        self._model = model
        self._pad_id, self._eos_id = pad_id, eos_id
        self._device = next(model.parameters()).device
        self._prefixes = prefixes
        self._version = version
        self._waiting: list[tuple[object, _Item]] = []
        self._forward: LeanLlamaForward | None = None
        self._keys: list[object] = []
        self._requests: list[GenerateRequest] = []
        self._rows: list[DecodeRow] = []
        self._first: list[int] = []
        """The cache slot where each row's prompt begins."""
        self._mask_BL = torch.zeros((0, 0), dtype=torch.long, device=self._device)

    def admit(self, entries: list[tuple[object, _Item]]) -> None:
        self._waiting.extend(entries)

    def keys(self) -> list[object]:
        return [*self._keys, *(key for key, _ in self._waiting)]

    @torch.inference_mode()
    def step(self) -> list[tuple[object, Generation]]:
        finished = self._prefill() if self._waiting else []
        if self._rows:
            finished += self._decode()
        return finished

    def _prefill(self) -> list[tuple[object, Generation]]:
        """The waiting requests' prompts and first tokens; the unfinished join the running rows."""
        entries, self._waiting = self._waiting, []
        requests = [request for _, (request, _) in entries]
        rows = [DecodeRow.start(request, sampling, self._eos_id) for _, (request, sampling) in entries]
        live = LiveBatch.prefill(rows, self._pad_id, self._device)
        width = live.input_ids.shape[1]
        capacity = width + max(row.sampling.max_new_tokens for row in rows)
        forward = (
            self._forward.sibling(len(rows), capacity)
            if self._forward is not None
            else LeanLlamaForward(self._model, len(rows), capacity)
        )
        start = load_prefixes(self._prefixes, forward, requests, width)
        logits_BV = forward(live.input_ids[:, start:], live.mask, live.positions[:, start:])
        tokens_B, logprobs_B = sample_next(logits_BV, live.temperature, live.top_p, live.generators(rows))
        first = [width - len(row.prompt) for row in rows]
        done = [
            row.append(token, lp) for row, token, lp in zip(rows, tokens_B.tolist(), logprobs_B.tolist(), strict=True)
        ]
        finished = self._leave(forward, rows, requests, first, [key for key, _ in entries], done)
        keep = [b for b, is_done in enumerate(done) if not is_done]
        if keep:
            if len(keep) < len(rows):
                forward.select(torch.tensor(keep, device=self._device))
            self._join(
                forward,
                live.mask[keep],
                [entries[b][0] for b in keep],
                [requests[b] for b in keep],
                [rows[b] for b in keep],
                [first[b] for b in keep],
            )
        return finished

    def _join(
        self,
        forward: LeanLlamaForward,
        mask_BL: torch.Tensor,
        keys: list[object],
        requests: list[GenerateRequest],
        rows: list[DecodeRow],
        first: list[int],
    ) -> None:
        if self._forward is None or not self._rows:
            self._forward, self._mask_BL = forward, mask_BL
            self._keys, self._requests, self._rows, self._first = keys, requests, rows, first
            return
        # Room for every row's remaining tokens, each fed back at one slot a step.
        remaining = max(row.sampling.max_new_tokens - len(row.tokens) for row in [*self._rows, *rows])
        length = max(self._forward.length, forward.length)
        mine, theirs = self._forward.join(forward, capacity=length + remaining)
        self._mask_BL = torch.cat(
            [
                torch.nn.functional.pad(self._mask_BL, (mine, 0)),
                torch.nn.functional.pad(mask_BL, (theirs, 0)),
            ]
        )
        self._keys += keys
        self._requests += requests
        self._rows += rows
        self._first = [f + mine for f in self._first] + [f + theirs for f in first]

    def _decode(self) -> list[tuple[object, Generation]]:
        """Every running row's latest token in, its next token out."""
        assert self._forward is not None
        rows = self._rows
        ids_B1 = torch.tensor([[row.tokens[-1]] for row in rows], device=self._device)
        positions_B1 = torch.tensor([[len(row.prompt) + len(row.tokens) - 1] for row in rows], device=self._device)
        self._mask_BL = torch.cat([self._mask_BL, self._mask_BL.new_ones((len(rows), 1))], dim=1)
        logits_BV = self._forward(ids_B1, self._mask_BL, positions_B1)
        temperature_B = torch.tensor([row.sampling.temperature for row in rows], device=self._device)
        top_p_B = torch.tensor([row.sampling.top_p for row in rows], device=self._device)
        tokens_B, logprobs_B = sample_next(logits_BV, temperature_B, top_p_B, [row.generator for row in rows])
        done = [
            row.append(token, lp) for row, token, lp in zip(rows, tokens_B.tolist(), logprobs_B.tolist(), strict=True)
        ]
        finished = self._leave(self._forward, rows, self._requests, self._first, self._keys, done)
        if finished:
            self._drop([b for b, is_done in enumerate(done) if not is_done])
        return finished

    def _leave(
        self,
        forward: LeanLlamaForward,
        rows: list[DecodeRow],
        requests: list[GenerateRequest],
        first: list[int],
        keys: list[object],
        done: list[bool],
    ) -> list[tuple[object, Generation]]:
        """The finished rows' results, their caches stored for their episodes' next turns."""
        finished = []
        for b, is_done in enumerate(done):
            if is_done:
                self._prefixes.store(requests[b], finished_prefix(forward, b, first[b], rows[b]))
                finished.append((keys[b], rows[b].generation(self._version)))
        return finished

    def _drop(self, keep: list[int]) -> None:
        """Keep only these rows, and trim the slots that are padding in all of them."""
        assert self._forward is not None
        self._keys = [self._keys[b] for b in keep]
        self._requests = [self._requests[b] for b in keep]
        self._rows = [self._rows[b] for b in keep]
        self._first = [self._first[b] for b in keep]
        if not keep:
            return
        self._forward.select(torch.tensor(keep, device=self._device))
        slots = min(self._first)
        self._mask_BL = self._mask_BL[keep, slots:]
        if slots:
            self._forward.trim(slots)
            self._first = [f - slots for f in self._first]
