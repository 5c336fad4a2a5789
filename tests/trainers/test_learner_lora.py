"""LoRA learners: only adapters train, sync, checkpoint and resume; the engine merges them exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from learner_data import CONFIG, LORA, MODEL, batch_of_step
from learner_data import train_step_of as _step
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from hillclimb.config.learner import LearnerConfig, LoraConfig
from hillclimb.config.models import HFModelConfig
from hillclimb.config.rollout import SamplingParams
from hillclimb.errors import ConfigError
from tests.factories import trajectory
from trainers.batching import Sample, StepTotals, samples_from_groups, to_loss_batch
from trainers.checkpoint import read_weights
from trainers.learner import Learner
from trainers.losses import LossConfig
from trainers.models import build_tiny_model, load_model
from trainers.models.export import export_checkpoint
from trainers.policy.base import GenerateRequest
from trainers.policy.hf import HFPolicy
from trainers.roles import Role
from trainers.tokenizer import ByteTokenizer, Tokenizer
from trainers.trajectory import TrajectoryGroup

SMOLLM2 = "smollm2-135m-instruct"


def _is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def test_only_the_adapters_train_and_the_base_weights_stay() -> None:
    learner = Learner(MODEL, LORA)
    before = {name: p.detach().clone() for name, p in learner.model.named_parameters()}
    for step in range(3):
        _step(learner, step)
    grads = learner.gradients()
    # 7 projections × (A, B) in the one layer; B starts at zero, so A's first gradient is zero too:
    # after three steps every adapter has moved and has a gradient.
    assert sorted(grads) == sorted(n for n in before if _is_adapter(n)) and len(grads) == 14
    assert all(g.abs().sum() > 0 for g in grads.values())
    for name, param in learner.model.named_parameters():
        assert torch.equal(param, before[name]) != _is_adapter(name), name
    assert len(learner.optimizer.state) == 14  # optimizer state for the adapters alone


def test_a_lora_checkpoint_holds_the_adapters_alone(tmp_path: Path) -> None:
    learner = Learner(MODEL, LORA)
    _step(learner, 0)
    learner.save(str(tmp_path / "ck"), step=1, version=1)
    saved = read_weights(tmp_path / "ck")
    assert len(saved) == 14 and all(_is_adapter(name) for name in saved)


def test_a_checkpoint_of_other_adapters_or_none_is_refused(tmp_path: Path) -> None:
    Learner(MODEL, CONFIG).save(str(tmp_path / "full"), step=0, version=0)
    Learner(MODEL, LORA).save(str(tmp_path / "lora"), step=0, version=0)
    with pytest.raises(ConfigError, match="written by full fine-tuning and this learner trains adapters"):
        Learner(MODEL, LORA).load(str(tmp_path / "full"))
    with pytest.raises(ConfigError, match="written by adapters .* and this learner trains full fine-tuning"):
        Learner(MODEL, CONFIG).load(str(tmp_path / "lora"))
    rank_8 = LORA.model_copy(update={"lora": LoraConfig(rank=8, alpha=8)})
    with pytest.raises(ConfigError, match=r"written by adapters \{'rank': 4"):
        Learner(MODEL, rank_8).load(str(tmp_path / "lora"))


def test_the_kl_reference_is_the_model_with_its_adapters_off() -> None:
    kl = LORA.model_copy(update={"loss": LossConfig.model_validate({"grpo": {"kl_coef": 0.1}})})
    learner = Learner(MODEL, kl)
    for step in range(3):
        _step(learner, step)
    assert learner.reference is None  # no second copy of the model
    samples = batch_of_step(9)
    ids, mask, batch = to_loss_batch(samples, StepTotals.of(samples), pad_id=ByteTokenizer().pad_token_id, device="cpu")
    plain = Learner(MODEL, CONFIG.model_copy(update={"loss": kl.loss}))  # its reference: the untrained model
    expected = plain._reference_logprobs(ids, mask, batch)
    torch.testing.assert_close(learner._reference_logprobs(ids, mask, batch), expected, atol=1e-6, rtol=0)
    with torch.no_grad():  # while the adapted policy itself has moved away from it
        assert not torch.allclose(learner.model(ids).logits, plain.model(ids).logits, atol=1e-4)


def _sampled_logprobs(
    model: torch.nn.Module, prompt: tuple[int, ...], tokens: tuple[int, ...], t: float
) -> torch.Tensor:
    ids = torch.tensor([[*prompt, *tokens]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / t
    return torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(prompt) :, None]).squeeze(1)


async def _engine_matches_learner(policy: HFPolicy, learner: Learner, prompt: tuple[int, ...], version: int) -> None:
    await policy.update_weights(version, learner.weights())
    sampling = SamplingParams(max_new_tokens=6, temperature=0.8)
    (generation,) = policy.generate_sync([GenerateRequest(prompt_ids=prompt, seed=5)], sampling)
    assert generation.version == version
    expected = _sampled_logprobs(learner.model, prompt, generation.token_ids, sampling.temperature)
    torch.testing.assert_close(torch.tensor(generation.logprobs), expected, atol=1e-5, rtol=0)


async def test_the_engine_merges_each_sync_into_its_base_weights_and_samples_as_the_learner() -> None:
    learner = Learner(MODEL, LORA)
    engine_model = build_tiny_model(MODEL)
    w0 = engine_model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    policy = HFPolicy(engine_model, ByteTokenizer(), threads=1)
    prompt = tuple(ByteTokenizer().encode("ls -la\n$ "))
    for version in (1, 2):  # the second sync replaces the first delta: no accumulation
        for step in range(2):
            _step(learner, 2 * version + step)
        await _engine_matches_learner(policy, learner, prompt, version)
        q = learner.model.model.layers[0].self_attn.q_proj
        delta = q.scaling["default"] * q.lora_B["default"].weight @ q.lora_A["default"].weight
        merged = engine_model.model.layers[0].self_attn.q_proj.weight
        torch.testing.assert_close(merged, w0 + delta.detach(), atol=1e-7, rtol=0)


def test_export_writes_the_merged_model_as_a_plain_transformers_model(tmp_path: Path) -> None:
    learner = Learner(MODEL, LORA)
    for step in range(3):
        _step(learner, step)
    learner.save(str(tmp_path / "ck"), step=3, version=3)
    export_checkpoint(MODEL, tmp_path / "ck", tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name for name, _ in plain.named_parameters())
    ids = torch.tensor([list(range(40, 60))])
    learner.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, learner.model(ids).logits, atol=1e-5, rtol=0)
    # Another model's adapters do not fit: refused, naming the count.
    other = MODEL.model_copy(update={"num_layers": 2})
    with pytest.raises(ConfigError, match="14 saved tensors do not fit"):
        export_checkpoint(other, tmp_path / "ck", tmp_path / "nothing")


def test_target_modules_the_model_lacks_are_named_with_the_ones_it_has() -> None:
    bad = CONFIG.model_copy(update={"lora": LoraConfig(target_modules=("nonexistent", "q_proj"))})
    with pytest.raises(ConfigError, match=r"\['nonexistent'\] match no module .*'gate_proj', .*'q_proj'"):
        Learner(MODEL, bad)
    head = CONFIG.model_copy(update={"lora": LoraConfig(target_modules=("q_proj", "lm_head"))})
    with pytest.raises(ConfigError, match="names the LM head"):
        Learner(MODEL, head)


@pytest.mark.parametrize(
    ("lora", "problem"),
    [
        ({"rank": 0}, "rank"),
        ({"alpha": 0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"target_modules": "q_proj"}, "target_modules"),
        ({"ranks": 8}, "ranks"),
    ],
)
def test_the_schema_refuses_bad_lora_options(lora: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        LearnerConfig.model_validate({"lora": lora})


def test_lora_with_fsdp_is_refused_by_the_schema() -> None:
    with pytest.raises(ValidationError, match="learner.strategy=ddp"):
        LearnerConfig.model_validate({"lora": {}, "strategy": "fsdp"})


@pytest.mark.slow
async def test_a_lora_step_on_smollm2_moves_only_adapters_and_the_engine_follows() -> None:
    model = HFModelConfig(name_or_path=SMOLLM2)
    learner = Learner(model, LearnerConfig(lr=1e-3, lora=LoraConfig(rank=8, alpha=16)))
    before = {name: p.detach().clone() for name, p in learner.model.named_parameters()}
    tokenizer = learner.tokenizer
    samples = _smollm2_samples(tokenizer)
    for step in range(2):  # two steps: the first moves B alone (it starts at zero), the second A too
        learner.train_step(samples, StepTotals.of(samples), step)
    changed = {name for name, p in learner.model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {name for name in before if _is_adapter(name)}
    engine_model, _ = load_model(model)
    policy = HFPolicy(engine_model, tokenizer, threads=1)
    await _engine_matches_learner(policy, learner, tuple(tokenizer.encode("Print the file notes.txt:")), 1)


def _smollm2_samples(tokenizer: Tokenizer) -> list[Sample]:
    ids = tokenizer.encode("$ cat notes.txt\nhello world\n")
    roles = [int(Role.PROMPT)] * 2 + [int(Role.ACTION)] * 6 + [int(Role.ENV)] * (len(ids) - 8)
    members = [
        trajectory("g", i, task_id="t", token_ids=ids, roles=roles, logprobs=[-1.0] * len(ids), reward=float(i))
        for i in range(2)
    ]
    return samples_from_groups([TrajectoryGroup.of(members)], CONFIG.loss)


def test_model_export_merges_a_runs_latest_checkpoint(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hillclimb.config import load_config
    from orchestrator.cli import app

    run = tmp_path / "run"
    config = load_config(None, ["policy.type=hf", f"policy.model={MODEL.model_dump_json()}"])
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(config.model_dump_json())
    learner = Learner(MODEL, LORA)
    _step(learner, 0)
    learner.save(str(run / "checkpoints" / "step-000001"), step=1, version=1)
    result = CliRunner().invoke(app, ["model", "export", str(run), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    assert "step-000001" in result.output
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([list(range(40, 60))])
    learner.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, learner.model(ids).logits, atol=1e-5, rtol=0)
    empty = CliRunner().invoke(app, ["model", "export", str(tmp_path), "--out", str(tmp_path / "x")])
    assert empty.exit_code == 2 and "is not a run directory" in " ".join(empty.output.split())
