"""Policy configs parse as a tagged union, import nothing heavy, and build working engines."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import TypeAdapter, ValidationError

from hillclimb.config.policy import (
    HFPolicyConfig,
    OpenAIPolicyConfig,
    PolicyConfig,
    ScriptedPolicyConfig,
)
from hillclimb.config.rollout import SamplingParams
from hillclimb.errors import ConfigError
from trainers.models import TinyModelConfig
from trainers.policy.base import GenerateRequest
from trainers.policy.factory import load_policy_tokenizer, make_policy
from trainers.policy.hf import HFPolicy
from trainers.policy.openai import OpenAIPolicy
from trainers.policy.scripted import ScriptedPolicy
from trainers.tokenizer import ByteTokenizer

ADAPTER = TypeAdapter(PolicyConfig)


def test_configs_import_no_engine_or_framework() -> None:
    code = (
        "import sys, hillclimb.config.policy, trainers.models\n"
        "heavy = {'torch', 'transformers', 'httpx', 'vllm'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_type_tag_picks_the_engine_and_unknown_keys_fail() -> None:
    hf = ADAPTER.validate_python({"type": "hf", "model": {"type": "tiny", "num_layers": 3}, "max_batch": 8})
    assert hf == HFPolicyConfig(model=TinyModelConfig(num_layers=3), max_batch=8)
    assert ADAPTER.validate_python({"type": "scripted"}) == ScriptedPolicyConfig()
    with pytest.raises(ValidationError, match="does not match any of the expected tags: 'scripted', 'hf', 'openai'"):
        ADAPTER.validate_python({"type": "tgi"})
    with pytest.raises(ValidationError, match=r"hf\.model\.tiny\.layers\s+Extra inputs are not permitted"):
        ADAPTER.validate_python({"type": "hf", "model": {"type": "tiny", "layers": 3}})
    with pytest.raises(ValidationError, match=r"openai\.base_url\s+Field required"):
        ADAPTER.validate_python({"type": "openai", "model": "m"})


def test_make_policy_builds_each_local_engine() -> None:
    assert isinstance(make_policy(ScriptedPolicyConfig()), ScriptedPolicy)
    tiny = TinyModelConfig(hidden_size=32, intermediate_size=64, max_positions=128)
    config = HFPolicyConfig(model=tiny, max_context=100)
    policy = make_policy(config)
    assert isinstance(policy, HFPolicy) and isinstance(policy.tokenizer, ByteTokenizer)
    assert policy.max_context == 100
    request = GenerateRequest(prompt_ids=(72, 105), seed=1)
    (generation,) = policy.generate_sync([request], SamplingParams(max_new_tokens=3))
    assert len(generation.token_ids) == 3
    assert isinstance(load_policy_tokenizer(config), ByteTokenizer)
    assert isinstance(load_policy_tokenizer(ScriptedPolicyConfig()), ByteTokenizer)


def test_openai_policy_takes_its_key_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    config = OpenAIPolicyConfig(
        base_url="http://127.0.0.1:8000/v1", model="tiny", tokenizer=TinyModelConfig(), api_key_env="HC_TEST_KEY"
    )
    monkeypatch.delenv("HC_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="'HC_TEST_KEY', but that environment variable is not set"):
        make_policy(config)
    monkeypatch.setenv("HC_TEST_KEY", "secret")
    policy = make_policy(config)
    assert isinstance(policy, OpenAIPolicy) and isinstance(policy.tokenizer, ByteTokenizer)
    assert policy._http._client_args["headers"] == {"Authorization": "Bearer secret"}
