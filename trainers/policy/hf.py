"""`HFPolicy`: a transformers causal LM as a batched policy engine, on CPU or one GPU.

    generate([request]) × many episodes
      continuous (Llama models, the default) ─► ContinuousBatcher ─► worker thread: RunningBatch,
         each request prefilled and joined to the running decode batch at the next step, returned
         when it finishes (`trainers.policy.running_batch`)
      static ─► MicroBatcher (a few ms, ≤ max_batch) ─► worker thread: left-padded prefill
         ─► KV-cached decode loop, the whole batch to its last token ─► Generation per request
      (Llama models: `LeanLlamaForward`, the same modules without transformers' per-call
       overhead; any other model: transformers' forward with a `DynamicCache`, batched statically)

transformers' own continuous batching (`generate_batch`, paged attention) is not used: it samples
with its own logits processors, without a seed per request or log-probs under the tempered
distribution, which the decode loop below exists to give.

The decode loop is ours, not `model.generate`, because a policy needs what `generate` does
not give together: a seed per request, log-probs under the tempered distribution for each
sampled token, per-request stop sets and limits inside one batch, and the weight version
that produced each token.

Left padding and positions: prompts are right-aligned so every row's next token sits in the
last column. Position ids are counted over real tokens only (`cumsum(mask) - 1`), so a
prompt's tokens get positions 0..n-1 however much padding precedes them, exactly as when
the prompt runs alone; the 2-D attention mask hides the padding from every query. Passing
position ids matters for models with absolute position embeddings (GPT-2): transformers'
default `arange` would shift a padded row's positions. Rotary models are invariant to
the shift in exact arithmetic, but not in floating point.

Reproducibility: a request's tokens are a function of (weights, prompt, sampling params,
seed) — not of the other requests in its batch, their padding, or arrival order — up to
floating-point differences between batch shapes (~1e-6 in the logits): a token can differ
only if the request's uniform draw lands that close to a boundary of its CDF (or, greedy,
if two logits tie that closely). Log-probs agree to ~1e-5. A request without a seed gets a
fresh random one and is not reproducible.

Weights are swapped on the worker thread between batches (whole, or bucket by bucket as they
arrive, in one job; a continuous batch stops admitting and finishes its running rows first), so
a batch never mixes versions and every `Generation` carries the version
that produced all of its tokens; the episodes' cached prefixes go with the old weights. A learner training
LoRA adapters sends the adapters alone: they are merged into the weights (W0 + scale · B · A,
from the W0 kept at the first such update), so decoding runs on a plain model.
"""

from __future__ import annotations

import collections
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal, Protocol

import torch
from transformers import DynamicCache, PreTrainedModel

from hillclimb.config.rollout import SamplingParams
from trainers.models.adapters import adapted_weight_names, is_adapter_update, merged_weights
from trainers.policy.base import GenerateRequest, Generation, one_bucket
from trainers.policy.batching import MicroBatcher
from trainers.policy.continuous import ContinuousBatcher
from trainers.policy.decode_rows import DecodeRow, LiveBatch, finished_prefix, load_prefixes
from trainers.policy.errors import ContextOverflowError, PolicyRequestError
from trainers.policy.lean_llama import LeanLlamaForward, unsupported_reason
from trainers.policy.prefix_cache import PrefixCache
from trainers.policy.running_batch import RunningBatch
from trainers.policy.sampling import sample_next
from trainers.tokenizer import Tokenizer

__all__ = ["HFPolicy"]

log = logging.getLogger("hillclimb.trainers.policy")

_Item = tuple[GenerateRequest, SamplingParams]


class HFPolicy:
    """Serves many concurrent episodes from one transformers model by batching their calls."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Tokenizer,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        max_window_s: float = 0.02,
        max_context: int | None = None,
        threads: int | None = None,
        lean: bool = True,
        batching: Literal["continuous", "static"] = "continuous",
    ) -> None:
        """`batching="continuous"`: requests join the running decode batch at the next step and
        leave it when done (`ContinuousBatcher`; Llama models on the lean path, others batch
        statically). `"static"`: batches close `max_wait_s` after their last request, or
        `max_window_s` after their first, and run to their last token (`MicroBatcher`).
        `max_context` defaults to the model's `max_position_embeddings`. `threads` sets torch's
        intra-op threads for this policy's forward passes only (None keeps torch's setting).
        `lean=False` runs Llama models through transformers' forward too."""
        self._model = model.eval()
        self._tokenizer = tokenizer
        self._device = next(model.parameters()).device
        self._vocab_size = model.get_input_embeddings().num_embeddings
        limit = max_context or getattr(model.config, "max_position_embeddings", None)
        if not limit:
            raise ValueError(f"{type(model).__name__} does not declare max_position_embeddings; pass max_context")
        self.max_context: int = limit
        self._cache_kwarg = _cache_kwarg(model)
        # Llama models decode through the lean path (half the time a token on a CPU); the rest,
        # and Llama too when `lean=False`, through transformers' forward.
        self._lean = lean and unsupported_reason(model) is None
        self._state_names = set(model.state_dict())
        """What a full weight update must hold, every name once."""
        self._prefixes = PrefixCache(max_entries=2 * max_batch)
        """The lean path's caches of finished turns, for each episode's next turn."""
        self._version = 0
        self._base: dict[str, torch.Tensor] = {}
        """The weights adapters were merged into, as they were before the first adapter update."""
        # torch.set_num_threads applies to the calling thread's OpenMP pool: run it on the worker.
        init = functools.partial(torch.set_num_threads, threads) if threads else None
        if batching == "continuous" and not self._lean:
            log.warning(
                "%s batches statically: continuous batching needs the lean Llama path (%s)",
                type(model).__name__,
                "lean=False" if not lean else unsupported_reason(model),
            )
        self.batching: Literal["continuous", "static"] = (
            "continuous" if batching == "continuous" and self._lean else "static"
        )
        """How requests are batched: `continuous` only where asked and the model takes the lean path."""
        self._batcher: MicroBatcher[_Item, Generation] | ContinuousBatcher[_Item, Generation]
        if self.batching == "continuous":
            self._batcher = ContinuousBatcher(
                self._running_batch, max_batch=max_batch, thread_name="hf-policy", thread_init=init
            )
        else:
            self._batcher = MicroBatcher(
                self._decode,
                max_batch=max_batch,
                max_wait_s=max_wait_s,
                max_window_s=max_window_s,
                thread_name="hf-policy",
                thread_init=init,
            )

    @property
    def version(self) -> int:
        return self._version

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def batch_sizes(self) -> collections.Counter[int]:
        """Batches prefilled so far, by size: static batches, or the groups of requests that joined
        the running batch together (continuous); either way the sizes sum to the requests served."""
        return self._batcher.batch_sizes

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        return await self._batcher.submit(self._items(requests, sampling))

    def generate_sync(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        """`generate` as one batch, blocking, for scripts and evaluation outside an event loop."""
        return self._batcher.run_now(self._items(requests, sampling))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the engine's weights: the one a learner publishes in."""
        return next(self._model.parameters()).dtype

    async def update_weights(self, version: int, weights: Mapping[str, Any]) -> None:
        """Load a full state dict, or merge LoRA adapters (`trainers.models.lora.adapter_update`),
        between batches; generations after it carry `version`."""
        await self.update_weights_in_buckets(version, one_bucket(weights))

    async def update_weights_in_buckets(self, version: int, buckets: AsyncIterator[Mapping[str, Any]]) -> None:
        """Load weights that arrive in buckets (parts of one state dict, or LoRA adapters whole),
        each as it comes, as one job on the worker thread: no batch decodes half-loaded weights."""
        loaded: set[str] = set()
        await self._batcher.call_over(
            functools.partial(self._load_bucket, loaded), buckets, functools.partial(self._finish_load, version, loaded)
        )

    @torch.no_grad()
    def _load_bucket(self, loaded: set[str], bucket: Mapping[str, Any]) -> None:
        if is_adapter_update(bucket):
            params = dict(self._model.named_parameters())
            for name in adapted_weight_names(bucket):
                if name not in self._base and name in params:
                    self._base[name] = params[name].detach().clone()
            for name, merged in merged_weights(self._base, bucket).items():
                params[name].copy_(merged)
            return
        unknown = sorted(bucket.keys() - self._state_names)
        if unknown:
            raise PolicyRequestError(f"weights for {unknown[:5]} are not this model's: was another model published?")
        self._model.load_state_dict(bucket, strict=False)  # copies, casting to the engine's dtype
        loaded.update(bucket)

    def _finish_load(self, version: int, loaded: set[str]) -> None:
        if loaded:  # full weights: every tensor must have come
            missing = sorted(self._state_names - loaded)
            if missing:
                raise PolicyRequestError(
                    f"a weight update of version {version} lacked {missing[:5]} (of {len(missing)})"
                )
            self._base.clear()  # new base weights: a later adapter update merges into these
        self._prefixes.clear()  # keys and values computed with the old weights
        self._version = version

    def _items(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[_Item]:
        for request in requests:
            self._check(request, sampling)
        return [(request, sampling) for request in requests]

    def _check(self, request: GenerateRequest, sampling: SamplingParams) -> None:
        n = len(request.prompt_ids)
        if n == 0:
            raise PolicyRequestError("the prompt is empty: a causal LM needs a token to condition on", status=None)
        if n + sampling.max_new_tokens > self.max_context:
            raise ContextOverflowError(
                f"prompt of {n} tokens + max_new_tokens {sampling.max_new_tokens} exceeds the model's context of "
                f"{self.max_context} tokens; end episodes earlier (smaller max_context_tokens) or lower max_new_tokens",
                prompt_tokens=n,
                max_new_tokens=sampling.max_new_tokens,
                max_context=self.max_context,
                status=None,
            )
        low, high = min(request.prompt_ids), max(request.prompt_ids)
        if low < 0 or high >= self._vocab_size:
            bad = low if low < 0 else high
            raise PolicyRequestError(
                f"prompt token id {bad} is outside the model's vocabulary [0, {self._vocab_size}); "
                "was the prompt encoded with another tokenizer?",
                status=None,
            )

    @torch.inference_mode()
    def _decode(self, items: list[_Item]) -> list[Generation]:
        """One static batch, start to finish, on the worker thread."""
        version = self._version  # only this thread changes it, and only between batches
        rows = [DecodeRow.start(request, sampling, self._tokenizer.eos_token_id) for request, sampling in items]
        live = LiveBatch.prefill(rows, self._tokenizer.pad_token_id, self._device)
        width = live.input_ids.shape[1]
        longest = max(row.sampling.max_new_tokens for row in rows)
        if self._lean:
            forward: _CachedForward = LeanLlamaForward(self._model, len(rows), capacity=width + longest)
            start = load_prefixes(self._prefixes, forward, [request for request, _ in items], width)
        else:
            forward, start = _TransformersForward(self._model, self._cache_kwarg), 0
        logits_BV = forward(live.input_ids[:, start:], live.mask, live.positions[:, start:])
        while True:
            tokens_B, logprobs_B = sample_next(logits_BV, live.temperature, live.top_p, live.generators(rows))
            sampled = zip(live.rows, tokens_B.tolist(), logprobs_B.tolist(), strict=True)
            keep = [k for k, (i, token, logprob) in enumerate(sampled) if not rows[i].append(token, logprob)]
            if self._lean:  # the finished rows' caches, for their episodes' next turns
                for k in sorted(set(range(len(live.rows))) - set(keep)):
                    i = live.rows[k]
                    prefix = finished_prefix(forward, k, width - len(rows[i].prompt), rows[i])
                    self._prefixes.store(items[i][0], prefix)
            if not keep:
                return [row.generation(version) for row in rows]
            if len(keep) < len(live.rows):
                forward.select(torch.tensor(keep, device=self._device))
            live.step(tokens_B, keep)
            logits_BV = forward(live.input_ids, live.mask, live.positions)

    def _running_batch(self) -> RunningBatch:
        """A continuous decode batch on the current weights (made on the worker thread, between loads)."""
        return RunningBatch(
            self._model,
            pad_id=self._tokenizer.pad_token_id,
            eos_id=self._tokenizer.eos_token_id,
            prefixes=self._prefixes,
            version=self._version,
        )


class _CachedForward(Protocol):
    """A decode batch's forward passes over a KV cache it keeps: the prompt block first, then a
    token a step; logits (float32) at the last new position of each row."""

    def __call__(self, ids_BN: torch.Tensor, mask_BL: torch.Tensor, positions_BN: torch.Tensor) -> torch.Tensor: ...

    def select(self, index_K: torch.Tensor) -> None:
        """Keep only these rows of the cache."""


class _TransformersForward:
    """Any causal LM, through transformers' own forward and `DynamicCache`."""

    def __init__(self, model: PreTrainedModel, cache_kwarg: str) -> None:
        self._model = model
        self._cache_kwarg = cache_kwarg
        self._cache = DynamicCache(config=model.config)  # the config tells it which layers use sliding windows

    def __call__(self, ids_BN: torch.Tensor, mask_BL: torch.Tensor, positions_BN: torch.Tensor) -> torch.Tensor:
        out = self._model(
            input_ids=ids_BN,
            attention_mask=mask_BL,
            position_ids=positions_BN,
            use_cache=True,
            **{self._cache_kwarg: self._cache},
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    def select(self, index_K: torch.Tensor) -> None:
        self._cache.batch_select_indices(index_K)


def _cache_kwarg(model: PreTrainedModel) -> str:
    """What the model's forward calls its KV cache: `cache` from transformers 5.24 on (where
    `past_key_values` is deprecated), `past_key_values` before, and in models that kept it."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
