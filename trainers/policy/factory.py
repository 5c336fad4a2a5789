"""Build the policy engine a run config names.

    PolicyConfig (scripted | hf | openai | chat | vllm) ─► make_policy ─► Policy
                                                 ─► load_policy_tokenizer ─► Tokenizer (no model)

Each engine (and torch, transformers, httpx, vllm) is imported when `make_policy` builds it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hillclimb.config.models import HFModelConfig
from hillclimb.config.policy import (
    ChatPolicyConfig,
    HFPolicyConfig,
    OpenAIPolicyConfig,
    PolicyConfig,
    ScriptedPolicyConfig,
)

if TYPE_CHECKING:
    from trainers.policy.base import Policy
    from trainers.tokenizer import Tokenizer

__all__ = ["load_policy_tokenizer", "make_policy"]


def make_policy(config: PolicyConfig) -> Policy:
    """Build the engine `config` names (loading its model: this can take a while)."""
    if isinstance(config, ScriptedPolicyConfig):
        from trainers.policy.scripted import ScriptedPolicy

        return ScriptedPolicy()
    if isinstance(config, HFPolicyConfig):
        from trainers.models.load import load_model
        from trainers.policy.hf import HFPolicy

        model, tokenizer = load_model(config.model, config.device)
        return HFPolicy(
            model,
            tokenizer,
            max_batch=config.max_batch,
            max_wait_s=config.max_wait_ms / 1000,
            max_window_s=max(config.max_window_ms, config.max_wait_ms) / 1000,
            max_context=config.max_context,
            threads=config.cpu_threads,
            batching=config.batching,
        )
    if isinstance(config, OpenAIPolicyConfig):
        from trainers.policy.openai import OpenAIPolicy

        return OpenAIPolicy(
            config.base_url,
            config.model,
            load_policy_tokenizer(config),
            api_key=_api_key(config.api_key_env),
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            backoff_s=config.backoff_s,
        )
    if isinstance(config, ChatPolicyConfig):
        from trainers.policy.chat import ChatPolicy

        return ChatPolicy(
            config.base_url,
            config.model,
            api_key=_api_key(config.api_key_env),
            api_key_env=config.api_key_env,
            return_token_ids=config.return_token_ids,
            max_concurrency=config.max_concurrency,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            backoff_s=config.backoff_s,
        )
    from trainers.models.load import model_location
    from trainers.policy.vllm import VLLMPolicy

    return VLLMPolicy(
        model_location(config.model),
        max_batch=config.max_batch,
        revision=config.model.revision,
        dtype=config.model.dtype,
        trust_remote_code=config.model.trust_remote_code,
        gpu_memory_utilization=config.gpu_memory_utilization,
        tensor_parallel_size=config.tensor_parallel,
        max_model_len=config.max_model_len,
        enforce_eager=config.enforce_eager,
        seed=config.seed,
    )


def load_policy_tokenizer(config: PolicyConfig) -> Tokenizer:
    """The tokenizer the engine `config` names uses, without loading any model weights."""
    if isinstance(config, ScriptedPolicyConfig | ChatPolicyConfig):  # chat: the transcript is the text's bytes
        from trainers.tokenizer import ByteTokenizer

        return ByteTokenizer()
    from trainers.models.load import load_model_tokenizer

    if isinstance(config, OpenAIPolicyConfig):
        return load_model_tokenizer(config.tokenizer or HFModelConfig(name_or_path=config.model))
    return load_model_tokenizer(config.model)


def _api_key(variable: str | None) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable)
    if not key:
        from hillclimb.errors import ConfigError

        raise ConfigError(
            f"policy.api_key_env names {variable!r}, but that environment variable is not set: export it, "
            "or set policy.api_key_env=null for a server that needs no key"
        )
    return key
