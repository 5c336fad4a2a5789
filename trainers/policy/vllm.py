"""`VLLMPolicy`: vLLM's offline `LLM` engine in this process, for GPU machines.

    generate([request]) × many episodes ─► MicroBatcher ─► worker thread:
        LLM.generate([TokensPrompt], [SamplingParams(seed, logprobs=0, stop_token_ids)])
    update_weights(_in_buckets) ─► worker thread, between batches, one job:
        each bucket as it arrives: LLM.apply_model(model.load_weights(bucket))
        (LoRA adapters: merged first into the pretrained weights, read once on the CPU)
        then LLM.reset_prefix_cache(): no prompt reuses KV blocks of the old weights

Written against vLLM's V1 `LLM` API as of 0.10.2 and later: `TokensPrompt` prompts, one
`SamplingParams` per prompt (so each request keeps its own seed), `logprobs=0` (the
sampled token's log-prob only), `logprobs_mode="processed_logprobs"` (log-probs after
temperature, as the learner's importance ratio needs; vLLM also renormalises them over
the top-p nucleus) and `LLM.apply_model` to reach the model in each worker. vLLM is an
optional dependency (`pip install 'hillclimb[vllm]'`), imported only when a VLLMPolicy is
made. Batches are static: `LLM.generate` schedules one batch's requests continuously, but a
request that arrives meanwhile waits for the whole batch; `AsyncLLM` would add continuous
batching across batches at the cost of a second event loop inside vLLM (not done).

With `tensor_parallel_size` > 1 vLLM shards the model over that many GPUs of this process (the
policy server reserves them); `apply_model` runs `load_weights` in every shard's worker, each
taking its slice of a bucket.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from hillclimb.config.rollout import SamplingParams
from trainers.models.adapters import adapted_weight_names, is_adapter_update, merged_weights
from trainers.policy.base import GenerateRequest, Generation, one_bucket
from trainers.policy.batching import MicroBatcher
from trainers.policy.errors import EngineNotInstalledError, PolicyResponseError
from trainers.tokenizer import HFTokenizer, Tokenizer

__all__ = ["VLLMPolicy"]

_Item = tuple[GenerateRequest, SamplingParams]


class VLLMPolicy:
    """vLLM in-process; `engine_args` go to `vllm.LLM` (dtype, gpu_memory_utilization, max_model_len, ...).

    `tokenizer` defaults to the one vLLM loads with the model."""

    def __init__(
        self,
        model: str,
        *,
        tokenizer: Tokenizer | None = None,
        max_batch: int = 256,
        max_wait_s: float = 0.005,
        **engine_args: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as e:
            raise EngineNotInstalledError(
                "the vllm policy needs vLLM, which is not installed here; install it with "
                "`pip install 'hillclimb[vllm]'` on a machine with a CUDA GPU, or use the hf policy"
            ) from e
        # apply_model ships a closure (with the new weights) to vLLM's engine-core process over
        # its local IPC channel, which vLLM only pickles when this is set. The payload is ours.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        self._vllm = vllm
        self._model_name = model
        self._source = {k: engine_args[k] for k in ("revision", "trust_remote_code") if k in engine_args}
        self._base: dict[str, Any] = {}
        """The pretrained weights LoRA adapters are merged into, by Hugging Face name, on the CPU."""
        self._llm = vllm.LLM(model=model, **{"logprobs_mode": "processed_logprobs", **engine_args})
        # By default, the very tokenizer vLLM loaded for the model (a transformers tokenizer).
        self._tokenizer = tokenizer or HFTokenizer(self._llm.get_tokenizer())
        self._version = 0
        self._batcher: MicroBatcher[_Item, Generation] = MicroBatcher(
            self._generate_batch, max_batch=max_batch, max_wait_s=max_wait_s, thread_name="vllm-policy"
        )

    @property
    def version(self) -> int:
        return self._version

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        return await self._batcher.submit([(request, sampling) for request in requests])

    @property
    def dtype(self) -> Any:
        """The torch dtype vLLM runs the weights in (`auto` resolved): the one a learner publishes in."""
        return self._llm.llm_engine.model_config.dtype

    async def update_weights(self, version: int, weights: Mapping[str, Any]) -> None:
        """Load a state dict (Hugging Face parameter names; vLLM fuses and shards them itself), or
        LoRA adapters (`trainers.models.lora.adapter_update`): the weights they change, merged."""
        await self.update_weights_in_buckets(version, one_bucket(weights))

    async def update_weights_in_buckets(self, version: int, buckets: AsyncIterator[Mapping[str, Any]]) -> None:
        """Load weights that arrive in buckets, each as it comes, between batches; then drop the
        prefix cache, whose blocks hold keys and values computed under the old weights."""
        await self._batcher.call_over(self._load_bucket, buckets, functools.partial(self._finish_load, version))

    def _load_bucket(self, bucket: Mapping[str, Any]) -> None:
        weights = dict(bucket)
        if is_adapter_update(weights):
            weights = merged_weights(self._pretrained(adapted_weight_names(weights)), weights)
        named_tensors = list(weights.items())
        self._llm.apply_model(lambda model: model.load_weights(named_tensors))

    def _finish_load(self, version: int) -> None:
        # Prompts that share a prefix (a group's episodes, an episode's next turn) would otherwise
        # reuse KV blocks computed under the previous weights. No request runs between batches,
        # so vLLM has no reason to refuse.
        if not self._llm.reset_prefix_cache():
            raise PolicyResponseError(f"vLLM refused to reset its prefix cache after loading version {version}")
        self._version = version

    def _pretrained(self, names: list[str]) -> dict[str, Any]:
        """The pretrained values of `names`, read from the model's checkpoint once: vLLM's own copies
        are fused (q/k/v as one) and may be sharded, so W0 comes from the source."""
        if not self._base:
            from transformers import AutoModelForCausalLM

            state = AutoModelForCausalLM.from_pretrained(self._model_name, dtype="auto", **self._source).state_dict()
            self._base = {name: state[name] for name in names if name in state}
        return self._base

    def _generate_batch(self, items: list[_Item]) -> list[Generation]:
        version = self._version
        prompts = [{"prompt_token_ids": list(request.prompt_ids)} for request, _ in items]  # vllm.inputs.TokensPrompt
        params = [self._sampling_params(request, sampling) for request, sampling in items]
        outputs = self._llm.generate(prompts, params, use_tqdm=False)
        return [_generation(output.outputs[0], version) for output in outputs]

    def _sampling_params(self, request: GenerateRequest, sampling: SamplingParams) -> Any:
        return self._vllm.SamplingParams(
            n=1,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=request.seed,
            stop_token_ids=list(sampling.stop_token_ids),
            logprobs=0,
        )


def _generation(completion: Any, version: int) -> Generation:
    ids = tuple(completion.token_ids)
    # logprobs[i] maps token id -> Logprob for position i; the sampled id is always present.
    logprobs = tuple(float(completion.logprobs[i][token].logprob) for i, token in enumerate(ids))
    if completion.finish_reason not in ("stop", "length"):
        raise PolicyResponseError(f"vLLM finished a request with {completion.finish_reason!r}")
    return Generation(token_ids=ids, logprobs=logprobs, finish_reason=completion.finish_reason, version=version)
