"""What a learner publishes: its weights in bounded buckets, cast to the engines' dtype, a snapshot an
engine loads to equal the learner."""

from __future__ import annotations

import asyncio

import pytest
import torch
from learner_data import CONFIG, MODEL
from learner_data import train_step_of as _step

from trainers.learner import Learner
from trainers.models import build_tiny_model
from trainers.policy.errors import PolicyRequestError
from trainers.policy.hf import HFPolicy
from trainers.tokenizer import ByteTokenizer


def _nbytes(bucket: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in bucket.values())


def test_buckets_stay_within_their_bytes_in_the_engines_dtype() -> None:
    learner = Learner(MODEL, CONFIG)
    _step(learner, 0)
    state = learner.model.state_dict()
    largest = max(t.numel() * 2 for t in state.values())  # bf16: two bytes an element
    limit = 2 * largest
    buckets = list(learner.weight_buckets(torch.bfloat16, limit))

    assert len(buckets) > 1 and all(_nbytes(b) <= limit for b in buckets)
    names = [name for bucket in buckets for name in bucket]
    assert names == list(state)  # every tensor once, in the model's order
    for bucket in buckets:
        for name, tensor in bucket.items():
            assert tensor.dtype == torch.bfloat16 and tensor.device.type == "cpu", name
            assert torch.equal(tensor, state[name].to(torch.bfloat16)), name
    # A tensor larger than the limit travels alone, whole.
    alone = list(learner.weight_buckets(None, 1))
    assert [list(b) for b in alone] == [[name] for name in state]


def test_an_engine_refuses_a_publish_that_lacks_tensors() -> None:
    learner = Learner(MODEL, CONFIG)
    engine = HFPolicy(build_tiny_model(MODEL.model_copy(update={"seed": 7})), ByteTokenizer())
    first = next(learner.weight_buckets(None, 4096))  # the first bucket alone

    async def arriving():  # type: ignore[no-untyped-def]
        yield first

    with pytest.raises(PolicyRequestError, match=r"weight update of version 1 lacked \['lm_head.weight', .*\(of 11\)"):
        asyncio.run(engine.update_weights_in_buckets(1, arriving()))
    assert engine.version == 0


def test_an_engine_loads_a_bucketed_publish_to_equal_the_learner() -> None:
    learner = Learner(MODEL, CONFIG)
    _step(learner, 0)
    engine = HFPolicy(build_tiny_model(MODEL.model_copy(update={"seed": 7})).to(torch.bfloat16), ByteTokenizer())
    snapshot = list(learner.weight_buckets(engine.dtype, 4096))
    expected = {name: t.to(torch.bfloat16) for name, t in learner.model.state_dict().items()}
    _step(learner, 1)  # the buckets are copies: a later step does not reach them

    async def arriving():  # type: ignore[no-untyped-def]
        for bucket in snapshot:
            yield bucket

    asyncio.run(engine.update_weights_in_buckets(3, arriving()))
    loaded = engine._model.state_dict()
    assert engine.version == 3 and len(snapshot) > 1
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)
