"""The run config's `policy` section: which engine serves rollouts (scripted | hf | openai | chat |
vllm), one model per engine, a union discriminated by `type`. `trainers.policy.factory` builds
the engine a config names."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hillclimb.config.models import HFModelConfig, ModelConfig, TinyModelConfig

__all__ = [
    "ChatPolicyConfig",
    "HFPolicyConfig",
    "OpenAIPolicyConfig",
    "PolicyConfig",
    "PublishConfig",
    "ScriptedPolicyConfig",
    "VLLMPolicyConfig",
]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PublishConfig(_Config):
    """How new weights go from the learners to the policy engines (`orchestrator.weight_sync`): cast to
    the engines' dtype, in buckets each engine loads as it arrives."""

    bucket_mb: float = Field(default=512.0, gt=0)
    """Most MiB of weights in one bucket (a single larger tensor travels alone): what the learner
    and each engine hold of a publish at once, beside their models."""
    timeout_s: float = Field(default=600.0, gt=0)
    """Seconds every engine has to load a publish; past it the run stops with an error naming the
    engine that did not answer."""


class ScriptedPolicyConfig(_Config):
    """The task suites' oracles (byte tokenizer): solves every task, for platform tests and benchmarks."""

    type: Literal["scripted"] = "scripted"


class HFPolicyConfig(_Config):
    """A transformers model in this process, batching concurrent episodes."""

    type: Literal["hf"] = "hf"
    model: ModelConfig = TinyModelConfig()
    device: str = "cpu"
    """torch device, e.g. `cpu`, `cuda`, `cuda:1`."""
    batching: Literal["continuous", "static"] = "continuous"
    """`continuous`: a request joins the running decode batch at the next step and leaves it when
    done (Llama-architecture models, on the lean decode path; others fall back to `static` with a
    warning). `static`: requests gather into a batch (`max_wait_ms`, `max_window_ms`) that runs to
    its last token while later requests wait."""
    max_batch: int = Field(default=32, ge=1)
    """Most requests decoded together."""
    max_wait_ms: float = Field(default=2.0, ge=0)
    """`static`: a batch closes once no new request has come for this long; 0 runs whatever is queued at once."""
    max_window_ms: float = Field(default=20.0, ge=0)
    """`static`: ...or once its first request has waited this long (raised to `max_wait_ms` if lower)."""
    max_context: int | None = Field(default=None, ge=2)
    """Prompt + generation limit in tokens; None means the model's max_position_embeddings."""
    gpus: float = Field(default=0.0, ge=0)
    """GPUs Ray reserves for each policy server that runs this engine (with `device: cuda`)."""
    engines: int = Field(default=1, ge=1)
    """Policy servers `hillclimb train` starts, each a copy of the model (data parallel): rollout
    requests are spread over them by episode, and every publish reaches each. (Rollouts and
    evaluations outside training build one engine in each rollout worker instead.)"""
    publish: PublishConfig = PublishConfig()
    cpu_threads: int | None = Field(default=1, ge=1)
    """torch intra-op threads for the policy's forward passes; None keeps torch's default (all cores).
    1 suits small models beside a busy event loop: OpenMP threads spin-wait for each other, and
    on an oversubscribed CPU two threads made the tiny model ~50x slower than one."""


class OpenAIPolicyConfig(_Config):
    """An OpenAI-compatible completions server that accepts token-id prompts (vLLM's `vllm serve`)."""

    type: Literal["openai"] = "openai"
    base_url: str = Field(min_length=1)
    """Up to and including `/v1`, e.g. `http://localhost:8000/v1`."""
    model: str = Field(min_length=1)
    """The name the server serves (`--served-model-name`, by default the path it loaded)."""
    tokenizer: ModelConfig | None = None
    """Whose tokenizer renders prompts; None means the Hugging Face tokenizer of `model`."""
    api_key_env: str | None = None
    """Name of the environment variable holding the bearer token (the key itself never goes in a config)."""
    timeout_s: float = Field(default=300.0, gt=0)
    """Per HTTP request, generation included."""
    max_retries: int = Field(default=4, ge=0)
    """Retries after a 408, 429, 5xx or transport failure; 0 fails on the first. A host that does not
    resolve, or a refused connection before the server ever answered, is never retried."""
    backoff_s: float = Field(default=0.5, ge=0)
    """First retry delay; doubles each retry, up to 10 s (or the server's Retry-After)."""


class ChatPolicyConfig(_Config):
    """Any OpenAI-compatible chat API (`/v1/chat/completions`: hosted, or `vllm serve`); the episode
    goes out as chat messages (`rollout.renderer: messages`)."""

    type: Literal["chat"] = "chat"
    base_url: str = Field(default="https://api.openai.com/v1", min_length=1)
    """Up to and including `/v1`, e.g. `http://localhost:8000/v1`."""
    model: str = Field(min_length=1)
    """The model name the server knows (`gpt-4.1-mini`, or vLLM's `--served-model-name`)."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Name of the environment variable holding the bearer key (the key itself never goes in a
    config); None sends no key (a local server)."""
    max_concurrency: int = Field(default=8, ge=1)
    """Requests in flight at once from each rollout worker."""
    return_token_ids: bool = False
    """Ask for the server's token ids and log-probs (vLLM's `return_token_ids`) so episodes can be
    trained on; false: text only, and episodes are marked untrainable."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Per HTTP request, generation included; a timeout is retried."""
    max_retries: int = Field(default=4, ge=0)
    """Retries after a 408, 429, 5xx, timeout or transport failure; 0 fails on the first. A host that
    does not resolve, or a refused connection before the server ever answered, is never retried."""
    backoff_s: float = Field(default=1.0, ge=0)
    """First retry delay; doubles each retry, up to 30 s (or the server's Retry-After)."""


class VLLMPolicyConfig(_Config):
    """vLLM in this process (CUDA; `pip install 'hillclimb[vllm]'`)."""

    type: Literal["vllm"] = "vllm"
    model: HFModelConfig
    gpus: float = Field(default=0.0, ge=0)
    """GPUs Ray reserves for each policy server that runs this engine (a fraction to share one with
    a learner: Ray then shows both the same GPU); 0 reserves none and leaves every GPU visible.
    With `tensor_parallel` > 1, exactly `tensor_parallel`."""
    engines: int = Field(default=1, ge=1)
    """Policy servers `hillclimb train` starts, each a copy of the model on its own `gpus` (data
    parallel): rollout requests are spread over them by episode, and every publish reaches each."""
    tensor_parallel: int = Field(default=1, ge=1)
    """GPUs one engine shards its model over (vLLM's `tensor_parallel_size`); 1: unsharded."""
    publish: PublishConfig = PublishConfig()
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)
    """Fraction of GPU memory vLLM may take (weights + KV cache); leave room for a colocated learner."""
    max_model_len: int | None = Field(default=None, ge=16)
    """Context length in tokens; None means the model's own."""
    enforce_eager: bool = False
    """Skip CUDA graph capture: slower decoding, faster start and less memory."""
    seed: int = 0
    """Engine seed for requests that carry none."""
    max_batch: int = Field(default=256, ge=1)
    """Most requests vLLM decodes at once (its `max_num_seqs`); it batches continuously, each
    request joining the running batch as it arrives, and more wait in its queue."""

    @model_validator(mode="after")
    def _gpus_hold_the_shards(self) -> VLLMPolicyConfig:
        if self.tensor_parallel > 1 and self.gpus != self.tensor_parallel:
            raise ValueError(
                f"policy.tensor_parallel is {self.tensor_parallel}, so each engine needs that many whole GPUs: "
                f"set policy.gpus={self.tensor_parallel} (it is {self.gpus:g})"
            )
        return self


PolicyConfig = Annotated[
    ScriptedPolicyConfig | HFPolicyConfig | OpenAIPolicyConfig | ChatPolicyConfig | VLLMPolicyConfig,
    Field(discriminator="type"),
]
