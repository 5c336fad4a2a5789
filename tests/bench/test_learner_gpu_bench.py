"""The GPU-lane benchmark's toy run on CPU: the same code path as on a GPU, so it cannot rot unseen.

Its numbers are checked against what they are made of: the tokens the learner reports training
are the batch's trained targets times the timed steps, tokens/s is those over the step time, and
MFU is (6 · N + 12 · L · d · T) · sequence tokens/s over the peak given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bench.common
from bench import learner_gpu
from trainers.batching import StepTotals


def test_toy_run_counts_what_the_learner_trained_and_derives_mfu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "learner_gpu.json"
    run = learner_gpu.main(["--toy", "--device", "cpu", "--peak-tflops", "0.5", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "size toy" in printed and "device cpu" in printed and "skipped: no CUDA device" in printed

    size = learner_gpu.SIZES["toy"]
    learner = run["results"]["learner"]
    totals = StepTotals.of(learner_gpu.agent_samples(size))
    per_step = int(totals.n_action + totals.n_env)
    assert 0 < per_step < size.batch * size.seq_len  # prompt and scaffold tokens are not trained
    assert learner["trained_tokens"] == per_step * size.steps
    assert learner["trained_tokens_per_step"] == per_step
    step_s = learner["step_time_s"]
    assert step_s["n"] == size.steps and step_s["min"] > 0
    assert learner["tokens_per_s"] == pytest.approx(per_step / step_s["median"])
    assert learner["sequence_tokens_per_s"] == pytest.approx(size.batch * size.seq_len / step_s["median"])
    assert all(loss == loss and abs(loss) < 1e3 for loss in learner["losses"])  # finite: it trained

    n_params = run["config"]["n_params"]
    assert n_params == sum(p.numel() for p in _toy_model().parameters())
    # 6 FLOPs per parameter (tied head) plus attention's 12 · layers · width · sequence length, per
    # token the model ran over (prompt and scaffold too): 6 · 361,600 + 12 · 2 · 128 · 64.
    assert learner["flops_per_token"] == 6 * n_params + 12 * 2 * 128 * 64
    assert learner["mfu"] == pytest.approx(learner["flops_per_token"] * learner["sequence_tokens_per_s"] / 0.5e12)
    assert run["results"]["generation"] == {"status": "skipped", "reason": "no CUDA device"}

    written = json.loads(out.read_text())
    assert written["benchmark"] == "learner_gpu" and written["config"]["size"] == "toy"
    assert written["results"]["learner"]["trained_tokens"] == learner["trained_tokens"]


def _toy_model() -> torch.nn.Module:
    from transformers import Qwen2ForCausalLM

    return Qwen2ForCausalLM(learner_gpu.qwen2_config(learner_gpu.SIZES["toy"]))


def test_a_toy_run_writes_no_result_file_and_leaves_mfu_out_without_a_peak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    run = learner_gpu.main(["--device", "cpu"])  # toy: the default without CUDA
    assert run["config"]["size"] == "toy" and run["results"]["learner"]["mfu"] is None
    assert list(tmp_path.iterdir()) == []


def test_the_model_directory_loads_as_the_learner_and_vllm_load_it(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    size = learner_gpu.SIZES["toy"]
    learner_gpu.write_model_dir(tmp_path, size)
    config, tokenizer = AutoConfig.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert config.model_type == "qwen2" and config.tie_word_embeddings
    assert len(tokenizer) == config.vocab_size == size.model["vocab_size"]  # no id past the embedding
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (config.pad_token_id, config.eos_token_id)


def test_the_full_size_is_qwen2_0_5b_and_the_peak_table_knows_its_gpus() -> None:
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):  # shapes only: no 2 GB of weights
        model = Qwen2ForCausalLM(learner_gpu.qwen2_config(learner_gpu.SIZES["full"]))
    assert sum(p.numel() for p in model.parameters()) == 494_032_768  # Qwen2-0.5B's count
    facts = {"name": "NVIDIA H100 80GB HBM3"}
    assert learner_gpu.peak_tflops("cuda", facts, None) == 989.4
    assert learner_gpu.peak_tflops("cuda", {"name": "NVIDIA A100-SXM4-80GB"}, None) == 312.0
    assert learner_gpu.peak_tflops("cuda", {"name": "Some Future GPU"}, None) is None
    assert learner_gpu.peak_tflops("cpu", {"name": "AMD EPYC"}, 2.0) == 2.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_where_there_is_none_says_so() -> None:
    with pytest.raises(SystemExit, match="no CUDA device here"):
        learner_gpu.main(["--device", "cuda"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_toy_run_on_cuda_trains_under_bf16_autocast_and_generates_with_vllm(tmp_path: Path) -> None:
    """What `make test-gpu` adds: the CUDA branches (autocast, memory stats, vLLM) at toy size."""
    size = learner_gpu.SIZES["toy"]
    run = learner_gpu.main(["--toy", "--device", "cuda", "--peak-tflops", "100", "--out", str(tmp_path / "r.json")])
    learner, generation = run["results"]["learner"], run["results"]["generation"]
    assert run["config"]["size"] == "toy" and run["results"]["device"]["type"] == "cuda"
    totals = StepTotals.of(learner_gpu.agent_samples(size))
    assert learner["trained_tokens"] == int(totals.n_action + totals.n_env) * size.steps
    assert learner["peak_memory_gib"] > 0 and learner["mfu"] > 0
    if learner_gpu.generation_unavailable("cuda") is not None:
        assert generation["status"] == "skipped" and "vllm" in generation["reason"]
        return
    assert generation["status"] == "ok" and generation["tokens_per_s"] > 0
    assert len(generation["generated_tokens"]) == size.generation_reps
    assert all(0 < n <= size.prompts * size.new_tokens for n in generation["generated_tokens"])
