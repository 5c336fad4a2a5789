"""Sharded learners build the model on `meta` and fill it after sharding (`trainers.meta_init`):
no rank holds the whole model on its device, yet two such ranks start from the very weights one
rank loads normally (the tiny model, and a model read with from_pretrained), rotary frequencies
and the tied LM head included, and make its first step.

Ranks run in spawned processes over gloo (`ranks.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from learner_data import CONFIG, MODEL
from ranks import Job, run_ranks
from word_tokenizer import word_tokenizer

from hillclimb.config.models import HFModelConfig, ModelConfig
from trainers.models import build_tiny_model

pytestmark = pytest.mark.slow

ONE = CONFIG.model_copy(update={"cpu_threads": 1})
FSDP_2 = ONE.model_copy(update={"num_learners": 2, "strategy": "fsdp"})
HSDP_4 = ONE.model_copy(update={"num_learners": 4, "strategy": "fsdp", "shard_group_size": 2})
TIED = ("lm_head.weight", "model.embed_tokens.weight")


def _saved_pretrained(directory: Path) -> HFModelConfig:
    build_tiny_model(MODEL.model_copy(update={"seed": 3})).save_pretrained(directory)
    word_tokenizer().save_pretrained(directory)
    return HFModelConfig(name_or_path=str(directory))


@pytest.mark.parametrize("pretrained", [False, True], ids=["tiny", "from_pretrained"])
def test_two_sharded_ranks_built_on_meta_start_from_one_ranks_weights_and_make_its_first_step(
    tmp_path: Path, pretrained: bool
) -> None:
    model: ModelConfig = _saved_pretrained(tmp_path / "model") if pretrained else MODEL
    one, two = run_ranks(model, ONE, Job(steps=(0,)), tmp_path), run_ranks(model, FSDP_2, Job(steps=(0,)), tmp_path)
    assert [r.devices_before_join for r in two] == [{"meta"}, {"meta"}]  # no weights on any rank's device
    assert two[0].initial.keys() == one[0].initial.keys()
    for name, weight in one[0].initial.items():  # broadcast from rank 0, resharded: exact
        assert torch.equal(two[0].initial[name], weight), name
    # The first step's loss and update are one rank's: they are not when the rotary frequencies
    # (a buffer no state dict holds) are left as `to_empty` leaves them.
    assert sum(r.losses[0] for r in two) == pytest.approx(one[0].losses[0], rel=1e-5)
    after_one, after_two = one[0].weights, two[0].weights
    for name, weight in after_one.items():  # as in the FSDP tests: Adam magnifies float noise
        torch.testing.assert_close(after_two[name], weight, rtol=1e-3, atol=1e-4)
    # One parameter, trained once: the head and the embedding are still the same tensor.
    assert torch.equal(after_two[TIED[0]], after_two[TIED[1]])
    assert not torch.equal(after_two[TIED[0]], two[0].initial[TIED[0]])


def test_hybrid_sharding_two_groups_of_two_make_one_ranks_step(tmp_path: Path) -> None:
    """HSDP (`shard_group_size`): each pair of ranks shards a copy, the pairs replicate it and
    all-reduce gradients; the update is still the one a single rank makes on the whole batch."""
    job = Job(steps=(0, 1))
    one, four = run_ranks(MODEL, ONE, job, tmp_path), run_ranks(MODEL, HSDP_4, job, tmp_path)
    assert [r.devices_before_join for r in four] == [{"meta"}] * 4
    assert [r.mesh for r in four] == [(2, 2)] * 4  # (replicas, shards)
    for step in (0, 1):
        assert sum(r.losses[step] for r in four) == pytest.approx(one[0].losses[step], rel=1e-5)
    for name, weight in one[0].weights.items():
        torch.testing.assert_close(four[0].weights[name], weight, rtol=1e-3, atol=1e-4)
