"""A stand-in for the `vllm` package, installed in `sys.modules` where vLLM is missing (no GPU here).

It implements the slice of vLLM's V1 async API that `VLLMPolicy` calls — `AsyncEngineArgs`,
`AsyncLLMEngine.from_engine_args`, `generate(prompt, sampling_params, request_id)` as an async stream
of `RequestOutput`s, `collective_rpc("apply_model", args=(fn,))`, `reset_prefix_cache()` — over a
transformers model on the CPU, with the behaviour of vLLM's that the policy depends on:

- Continuous batching: a scheduler task runs steps on the event loop; each step admits waiting
  requests (up to `max_num_seqs`) and gives every running request one token, so a request that
  arrives while others decode starts at the next step and leaves when it is done.
- Streaming: `CUMULATIVE` (vLLM's default) yields the output so far after every step, `DELTA` the
  new tokens, `FINAL_ONLY` one output when the request finishes.
- Request ids: one running request per id (vLLM refuses a duplicate); closing a stream early aborts it.
- A prefix cache: the first token of a prompt seen before comes from the earlier run's result (as
  vLLM's cached KV blocks would give it), computed under whatever weights were loaded then, until
  `reset_prefix_cache()` — which, like vLLM's, refuses (returns False) while requests are running.
- Unknown engine or sampling arguments raise `TypeError` (dataclasses, as vLLM's are).

Greedy sampling only. `events` records what happened, in order, for tests to read.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoModelForCausalLM

STEP_S = 0.002
"""Pause between scheduler steps, so requests can arrive mid-decode."""


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE


@dataclass
class AsyncEngineArgs:
    model: str
    dtype: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    seed: int = 0
    logprobs_mode: str = "raw_logprobs"


class _Model:
    """What `apply_model` hands its function: vLLM's model, whose `load_weights` takes (name, tensor)
    pairs by Hugging Face name and returns the names it loaded."""

    def __init__(self, hf: torch.nn.Module, engine: AsyncLLMEngine) -> None:
        self.hf = hf
        self._engine = engine

    @torch.no_grad()
    def load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> set[str]:
        state = self.hf.state_dict()
        for name, tensor in weights:
            state[name].copy_(tensor)
        shapes = {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in weights}
        self._engine.events.append(("load", shapes, len(self._engine.running)))
        return {name for name, _ in weights}


@dataclass
class _Request:
    id: str
    prompt: tuple[int, ...]
    params: SamplingParams
    outputs: asyncio.Queue[Any]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Any]] = field(default_factory=list)
    finish: str | None = None
    sent: int = 0
    """Tokens already streamed (DELTA)."""


class AsyncLLMEngine:
    """V1's `AsyncLLM` (which `vllm.AsyncLLMEngine` names)."""

    def __init__(self, args: AsyncEngineArgs) -> None:
        self.args = args
        self.events: list[Any] = []
        """("start"|"finish", request_id, step); ("load", {name: (dtype, shape)}, requests running); "reset"."""
        hf = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        self._model = _Model(hf, self)
        self.model_config = SimpleNamespace(dtype=hf.dtype)
        self._prefix_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.waiting: list[_Request] = []
        self.running: dict[str, _Request] = {}
        self._scheduler: asyncio.Task[None] | None = None
        self.step = 0

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs) -> AsyncLLMEngine:
        return cls(engine_args)

    async def generate(
        self, prompt: dict[str, Any], sampling_params: SamplingParams, request_id: str
    ) -> AsyncIterator[Any]:
        assert sampling_params.temperature == 0.0, "the stand-in samples greedily only"
        known = {r.id for r in self.waiting} | set(self.running)
        if request_id in known:
            raise ValueError(f"Request id {request_id} already running.")
        request = _Request(request_id, tuple(prompt["prompt_token_ids"]), sampling_params, asyncio.Queue())
        self.waiting.append(request)
        if self._scheduler is None or self._scheduler.done():
            self._scheduler = asyncio.get_running_loop().create_task(self._schedule())
        try:
            while True:
                output = await request.outputs.get()
                yield output
                if output.finished:
                    return
        finally:  # a stream closed early aborts its request, as vLLM's does
            self.running.pop(request_id, None)
            if request in self.waiting:
                self.waiting.remove(request)

    async def collective_rpc(
        self,
        method: str,
        timeout: float | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> list[Any]:
        if method != "apply_model":
            raise AttributeError(f"the stand-in's worker has no method {method!r}")
        (fn,) = args
        return [fn(self._model)]  # one worker

    async def reset_prefix_cache(self) -> bool:
        if self.running:  # vLLM cannot free blocks that running requests hold
            return False
        self._prefix_cache.clear()
        self.events.append("reset")
        return True

    async def _schedule(self) -> None:
        while self.waiting or self.running:
            limit = self.args.max_num_seqs or len(self.waiting) + len(self.running)
            while self.waiting and len(self.running) < limit:
                request = self.waiting.pop(0)
                self.running[request.id] = request
                self.events.append(("start", request.id, self.step))
            for request in list(self.running.values()):
                self._advance(request)
            self.step += 1
            await asyncio.sleep(STEP_S)

    @torch.no_grad()
    def _advance(self, request: _Request) -> None:
        if not request.tokens and request.prompt in self._prefix_cache:
            logits = self._prefix_cache[request.prompt]
        else:
            logits = self._model.hf(input_ids=torch.tensor([[*request.prompt, *request.tokens]])).logits[0, -1]
            if not request.tokens:
                self._prefix_cache[request.prompt] = logits
        token = int(logits.argmax())
        request.tokens.append(token)
        request.logprobs.append({token: SimpleNamespace(logprob=float(torch.log_softmax(logits, -1)[token]))})
        if token in request.params.stop_token_ids:
            request.finish = "stop"
        elif len(request.tokens) >= request.params.max_tokens:
            request.finish = "length"
        finished = request.finish is not None
        if finished:
            del self.running[request.id]
            self.events.append(("finish", request.id, self.step))
        kind = request.params.output_kind
        if kind is RequestOutputKind.FINAL_ONLY and not finished:
            return
        first = request.sent if kind is RequestOutputKind.DELTA else 0
        request.sent = len(request.tokens)
        completion = SimpleNamespace(
            index=0,
            token_ids=request.tokens[first:],
            logprobs=request.logprobs[first:],
            finish_reason=request.finish,
        )
        request.outputs.put_nowait(SimpleNamespace(request_id=request.id, outputs=[completion], finished=finished))
