"""Sharded checkpoints: every rank writes its part, any world size and strategy reads them back
with the optimizer state intact, one process reads the model with no process group, and a
checkpoint leaves as a plain transformers model.

The ranks run in spawned processes over gloo (`ranks.py`); rank 0 reports the full weights and
optimizer state, gathered after the save or the load, which must equal the writer's bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from learner_data import CONFIG, MODEL
from learner_data import train_step_of as _step
from ranks import Job, RankResult, run_ranks
from transformers import AutoModelForCausalLM

from hillclimb.config.learner import LearnerConfig
from trainers.checkpoint import CheckpointError, read_weights
from trainers.learner import Learner
from trainers.models.export import export_checkpoint

ONE = CONFIG.model_copy(update={"cpu_threads": 1})
FSDP_2 = ONE.model_copy(update={"num_learners": 2, "strategy": "fsdp"})
DDP_2 = ONE.model_copy(update={"num_learners": 2, "strategy": "ddp"})
HSDP_4 = ONE.model_copy(update={"num_learners": 4, "strategy": "fsdp", "shard_group_size": 2})  # 2 groups of 2


def _assert_same_state(got: RankResult, want: RankResult) -> None:
    assert got.weights.keys() == want.weights.keys()
    for name in want.weights:
        assert torch.equal(got.weights[name], want.weights[name]), name
    assert got.optimizer["state"].keys() == want.optimizer["state"].keys()
    for name, fields in want.optimizer["state"].items():
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(got.optimizer["state"][name][field], fields[field]), (name, field)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("writer", "reader"),
    [(FSDP_2, ONE), (ONE, FSDP_2), (DDP_2, FSDP_2), (FSDP_2, DDP_2), (HSDP_4, FSDP_2)],
    ids=["fsdp2-to-one", "one-to-fsdp2", "ddp2-to-fsdp2", "fsdp2-to-ddp2", "hsdp4-to-fsdp2"],
)
def test_a_checkpoint_resumes_on_another_world_size_and_strategy_with_its_optimizer_state(
    tmp_path: Path, writer: LearnerConfig, reader: LearnerConfig
) -> None:
    checkpoint = tmp_path / "ck"
    written = run_ranks(MODEL, writer, Job(steps=(0, 1), save=str(checkpoint)), tmp_path)
    # Every writing rank wrote a file of its own (under DDP at least its RNG states), nobody all of it.
    assert {p.name for p in (checkpoint / "state").glob("*.distcp")} == {
        f"__{rank}_0.distcp" for rank in range(writer.num_learners)
    }
    if writer.num_learners > 1:  # no rank wrote the whole state: its shards (FSDP), its share of the replicas (DDP)
        sizes = [p.stat().st_size for p in (checkpoint / "state").glob("*.distcp")]
        assert max(sizes) < 0.75 * sum(sizes), sizes
    assert not list(tmp_path.glob("ck.tmp"))
    read = run_ranks(MODEL, reader, Job(load=str(checkpoint)), tmp_path)
    _assert_same_state(read[0], written[0])


def test_one_process_reads_the_model_and_exports_a_full_fine_tune(tmp_path: Path) -> None:
    learner = Learner(MODEL, ONE)
    for step in range(2):
        _step(learner, step)
    learner.save(str(tmp_path / "ck"), step=2, version=2)
    weights = read_weights(tmp_path / "ck")
    for name, param in learner.model.named_parameters():
        assert torch.equal(weights[name], param.detach()), name
    export_checkpoint(MODEL, tmp_path / "ck", tmp_path / "plain")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    ids = torch.tensor([list(range(40, 60))])
    learner.model.eval()
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, learner.model(ids).logits)


def test_a_checkpoint_of_the_layout_before_sharding_is_refused_with_what_to_do(tmp_path: Path) -> None:
    old = tmp_path / "step-000003"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"")
    (old / "trainer.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"before sharded checkpoints.*run\.resume=false"):
        Learner(MODEL, ONE).load(str(old))
