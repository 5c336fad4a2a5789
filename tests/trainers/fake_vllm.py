"""A stand-in for the `vllm` package, installed in `sys.modules` where vLLM is missing (no GPU here).

It implements the slice of vLLM's offline API that `VLLMPolicy` calls, over a transformers model
on the CPU, and keeps vLLM's behaviour that matters to weight sync: a prefix cache. The first
token of a prompt seen before comes from the cached result of the earlier run (as vLLM's cached
KV blocks would give it), computed with whatever weights were loaded then, until
`reset_prefix_cache()`. Greedy sampling only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None


class _Model:
    """What `apply_model` hands its function: vLLM's model, whose `load_weights` takes (name, tensor)
    pairs by Hugging Face name and returns the names it loaded."""

    def __init__(self, hf: torch.nn.Module, events: list[Any]) -> None:
        self.hf = hf
        self.events = events

    @torch.no_grad()
    def load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> set[str]:
        state = self.hf.state_dict()
        for name, tensor in weights:
            state[name].copy_(tensor)
        self.events.append(("load", {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in weights}))
        return {name for name, _ in weights}


class LLM:
    def __init__(self, model: str, **engine_args: Any) -> None:
        self.engine_args = engine_args
        self.events: list[Any] = []
        """("load", {name: (dtype, shape)}) per `load_weights`, "reset" per prefix-cache reset, in order."""
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self._model = _Model(hf, self.events)
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(dtype=hf.dtype))
        self._prefix_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._path = model

    def get_tokenizer(self) -> Any:
        return AutoTokenizer.from_pretrained(self._path)

    def apply_model(self, fn: Any) -> list[Any]:
        return [fn(self._model)]  # one worker

    def reset_prefix_cache(self) -> bool:
        self._prefix_cache.clear()
        self.events.append("reset")
        return True

    @torch.no_grad()
    def generate(self, prompts: list[dict[str, Any]], params: list[SamplingParams], use_tqdm: bool = True) -> list[Any]:
        return [self._one(tuple(p["prompt_token_ids"]), sp) for p, sp in zip(prompts, params, strict=True)]

    def _one(self, prompt: tuple[int, ...], params: SamplingParams) -> Any:
        assert params.temperature == 0.0, "the stand-in samples greedily only"
        ids, logprobs, finish = list(prompt), [], "length"
        for step in range(params.max_tokens):
            if step == 0 and prompt in self._prefix_cache:
                logits = self._prefix_cache[prompt]
            else:
                logits = self._model.hf(input_ids=torch.tensor([ids])).logits[0, -1]
                if step == 0:
                    self._prefix_cache[prompt] = logits
            token = int(logits.argmax())
            ids.append(token)
            logprobs.append({token: SimpleNamespace(logprob=float(torch.log_softmax(logits, -1)[token]))})
            if token in params.stop_token_ids:
                finish = "stop"
                break
        completion = SimpleNamespace(token_ids=ids[len(prompt) :], logprobs=logprobs, finish_reason=finish)
        return SimpleNamespace(outputs=[completion])
