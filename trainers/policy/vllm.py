"""`VLLMPolicy`: vLLM's async engine in this process, for GPU machines, with continuous batching.

    generate([request]) × many episodes ─► DrainGate.request ─► one AsyncLLM.generate per request,
        submitted as it arrives (TokensPrompt, SamplingParams(seed, logprobs=0, stop_token_ids),
        FINAL_ONLY): vLLM's scheduler adds it to the running batch at its next step and returns it
        when it is done, whatever else is decoding
    update_weights(_in_buckets) ─► DrainGate.exclusive (no request starts; those in flight finish):
        each bucket as it arrives: collective_rpc("apply_model", model.load_weights(bucket))
        (LoRA adapters: merged first into the pretrained weights, read once on the CPU)
        then reset_prefix_cache(): no prompt reuses KV blocks of the old weights

Written against vLLM's V1 API as of 0.10.2 and later: `AsyncLLMEngine.from_engine_args(AsyncEngineArgs)`
(V1's `AsyncLLM`), `generate(prompt, sampling_params, request_id)` as an async stream of
`RequestOutput`, `collective_rpc("apply_model", args=(fn,))` (what `LLM.apply_model` calls: the
worker runs `fn(model)`), and the coroutine `reset_prefix_cache()`. `logprobs=0` returns the sampled
token's log-prob only; `logprobs_mode="processed_logprobs"` gives log-probs after temperature, as the
learner's importance ratio needs (vLLM also renormalises them over the top-p nucleus).

Loads drain in-flight requests at this call site rather than through vLLM's
`pause_generation(mode="wait")`, which newer releases have (with a changed signature) and 0.10
lacks; draining here also keeps the version tag exact: a request runs wholly before or wholly
after a load. vLLM is an optional dependency (`pip install 'hillclimb[vllm]'`), imported only
when a VLLMPolicy is made. The engine's output loop lives on the event loop that makes the first
request: use one VLLMPolicy from one event loop.

With `tensor_parallel_size` > 1 vLLM shards the model over that many GPUs of this process (the
policy server reserves them); `apply_model` runs `load_weights` in every shard's worker, each
taking its slice of a bucket.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from hillclimb.config.rollout import SamplingParams
from trainers.models.adapters import adapted_weight_names, is_adapter_update, merged_weights
from trainers.policy.base import GenerateRequest, Generation, one_bucket
from trainers.policy.drain import DrainGate
from trainers.policy.errors import EngineNotInstalledError, PolicyResponseError
from trainers.tokenizer import HFTokenizer, Tokenizer

__all__ = ["VLLMPolicy"]


class VLLMPolicy:
    """vLLM's async engine in-process; `engine_args` go to `vllm.AsyncEngineArgs` (dtype,
    gpu_memory_utilization, max_model_len, ...).

    `tokenizer` defaults to the model's own (the one vLLM loads with it)."""

    def __init__(
        self,
        model: str,
        *,
        tokenizer: Tokenizer | None = None,
        max_batch: int = 256,
        **engine_args: Any,
    ) -> None:
        """`max_batch`: the most requests vLLM decodes at once (its `max_num_seqs`); more wait in its queue."""
        try:
            import vllm
            from vllm.sampling_params import RequestOutputKind
        except ImportError as e:
            raise EngineNotInstalledError(
                "the vllm policy needs vLLM, which is not installed here; install it with "
                "`pip install 'hillclimb[vllm]'` on a machine with a CUDA GPU, or use the hf policy"
            ) from e
        # apply_model ships a closure (with the new weights) to vLLM's engine-core process over
        # its local IPC channel, which vLLM only pickles when this is set. The payload is ours.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        self._vllm = vllm
        self._final_only = RequestOutputKind.FINAL_ONLY  # one output a request, when it is done
        self._model_name = model
        self._source = {k: engine_args[k] for k in ("revision", "trust_remote_code") if k in engine_args}
        self._base: dict[str, Any] = {}
        """The pretrained weights LoRA adapters are merged into, by Hugging Face name, on the CPU."""
        args = vllm.AsyncEngineArgs(
            model=model, max_num_seqs=max_batch, **{"logprobs_mode": "processed_logprobs", **engine_args}
        )
        self._engine = vllm.AsyncLLMEngine.from_engine_args(args)
        self._tokenizer = tokenizer or _model_tokenizer(model, self._source)
        self._version = 0
        self._gate = DrainGate()
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]  # request ids unique across policies sharing an engine's logs

    @property
    def version(self) -> int:
        return self._version

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        """Each request goes to vLLM at once, joining whatever it is decoding; results in order."""
        async with self._gate.request():
            version = self._version  # no load runs while a request is inside the gate
            # Every request's outcome before leaving the gate, failures too: a load must not start
            # while a sibling of a failed request still decodes.
            outcomes = await asyncio.gather(
                *(self._complete(request, sampling) for request in requests), return_exceptions=True
            )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [_generation(completion, version) for completion in outcomes]

    @property
    def dtype(self) -> Any:
        """The torch dtype vLLM runs the weights in (`auto` resolved): the one a learner publishes in."""
        return self._engine.model_config.dtype

    async def update_weights(self, version: int, weights: Mapping[str, Any]) -> None:
        """Load a state dict (Hugging Face parameter names; vLLM fuses and shards them itself), or
        LoRA adapters (`trainers.models.lora.adapter_update`): the weights they change, merged."""
        await self.update_weights_in_buckets(version, one_bucket(weights))

    async def update_weights_in_buckets(self, version: int, buckets: AsyncIterator[Mapping[str, Any]]) -> None:
        """Load weights that arrive in buckets, each as it comes, once the requests in flight have
        finished and before any new one starts; then drop the prefix cache, whose blocks hold keys
        and values computed under the old weights."""
        async with self._gate.exclusive():
            async for bucket in buckets:
                await self._load_bucket(bucket)
            # Prompts that share a prefix (a group's episodes, an episode's next turn) would otherwise
            # reuse KV blocks computed under the previous weights. No request is running, so vLLM
            # has no reason to refuse.
            if not await self._engine.reset_prefix_cache():
                raise PolicyResponseError(f"vLLM refused to reset its prefix cache after loading version {version}")
            self._version = version

    async def _complete(self, request: GenerateRequest, sampling: SamplingParams) -> Any:
        prompt = {"prompt_token_ids": list(request.prompt_ids)}  # vllm.inputs.TokensPrompt
        request_id = f"{self._prefix}-{next(self._ids)}"
        final = None
        async for output in self._engine.generate(prompt, self._sampling_params(request, sampling), request_id):
            final = output
        if final is None or not final.finished:
            raise PolicyResponseError(f"vLLM's stream for request {request_id} ended before the request finished")
        return final.outputs[0]

    async def _load_bucket(self, bucket: Mapping[str, Any]) -> None:
        weights = dict(bucket)
        if is_adapter_update(weights):
            weights = merged_weights(await asyncio.to_thread(self._pretrained, adapted_weight_names(weights)), weights)
        named_tensors = list(weights.items())
        await self._engine.collective_rpc("apply_model", args=(lambda model: model.load_weights(named_tensors),))

    def _pretrained(self, names: list[str]) -> dict[str, Any]:
        """The pretrained values of `names`, read from the model's checkpoint once: vLLM's own copies
        are fused (q/k/v as one) and may be sharded, so W0 comes from the source."""
        if not self._base:
            from transformers import AutoModelForCausalLM

            state = AutoModelForCausalLM.from_pretrained(self._model_name, dtype="auto", **self._source).state_dict()
            self._base = {name: state[name] for name in names if name in state}
        return self._base

    def _sampling_params(self, request: GenerateRequest, sampling: SamplingParams) -> Any:
        return self._vllm.SamplingParams(
            n=1,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=request.seed,
            stop_token_ids=list(sampling.stop_token_ids),
            logprobs=0,
            output_kind=self._final_only,
        )


def _model_tokenizer(model: str, source: Mapping[str, Any]) -> Tokenizer:
    """The model's own tokenizer, as vLLM loads it (transformers' AutoTokenizer)."""
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(model, **source))


def _generation(completion: Any, version: int) -> Generation:
    ids = tuple(completion.token_ids)
    # logprobs[i] maps token id -> Logprob for position i; the sampled id is always present.
    logprobs = tuple(float(completion.logprobs[i][token].logprob) for i, token in enumerate(ids))
    if completion.finish_reason not in ("stop", "length"):
        raise PolicyResponseError(f"vLLM finished a request with {completion.finish_reason!r}")
    return Generation(token_ids=ids, logprobs=logprobs, finish_reason=completion.finish_reason, version=version)
