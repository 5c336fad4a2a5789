"""`hillclimb train --dry-run`'s placement plan: the parameter count read from a config.json alone,
the memory per GPU it implies, and the verdict, for a 7B model on two 8-GPU nodes and on one GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hillclimb.config import load_config
from hillclimb.errors import ModelNotFoundError
from orchestrator.placement_plan import placement_plan
from trainers.models.shape import ModelShape, model_shape

REPO = Path(__file__).resolve().parents[2]

# Qwen2.5-7B-Instruct's published dimensions: its config.json (e.g. the mirror at
# https://huggingface.co/osllmai-community/Qwen2.5-7B-Instruct/blob/main/config.json), and its
# model card's "Number of Parameters: 7.61B". Qwen2 puts biases on Q, K and V (its module tree:
# q_proj Linear(3584, 3584, bias=True)); the card's count includes them.
QWEN_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "max_position_embeddings": 32768,
    "torch_dtype": "bfloat16",
}
PUBLISHED_PARAMETERS = 7.61e9


@pytest.fixture
def qwen_7b(tmp_path: Path) -> Path:
    directory = tmp_path / "qwen2.5-7b"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(QWEN_7B))  # the shape only: no weights anywhere
    return directory


def test_the_parameter_count_of_a_7b_config_is_the_published_one(qwen_7b: Path) -> None:
    shape = ModelShape.from_hf_config(QWEN_7B)
    # by hand, per layer: Q and O 3584², K and V 3584·512 each (4 KV heads of 128), QKV biases
    # 3584 + 2·512, MLP 3·3584·18944, two norms 2·3584  = 233,057,792; ×28 layers = 6,525,618,176;
    # untied embeddings and head 2·152064·3584 = 1,089,994,752; final norm 3584
    assert shape.layer_parameters == 233_057_792
    assert shape.parameters == 7_615_616_512
    assert abs(shape.parameters / PUBLISHED_PARAMETERS - 1) < 0.01
    load = load_config(None, ["policy.type=vllm", "policy.model.type=hf", f"policy.model.name_or_path={qwen_7b}"])
    assert model_shape(load.policy.model) == shape  # read from the directory's config.json


def _config(model: Path, *settings: str) -> object:
    base = ["policy.type=vllm", "policy.model.type=hf", f"policy.model.name_or_path={model}", "policy.gpus=1"]
    return load_config(None, [*base, "policy.gpu_memory_utilization=0.9", "policy.max_model_len=8192", *settings])


TWO_NODES = ["learner.device=cuda", "learner.gpus_per_learner=1", "learner.strategy=fsdp", "learner.precision=bf16"]


def test_a_7b_run_on_two_nodes_of_8_h100s_fits(qwen_7b: Path) -> None:
    cfg = _config(qwen_7b, *TWO_NODES, "learner.num_learners=16", "learner.micro_batch_tokens=8192")
    plan = placement_plan(cfg, gpu_gib=80, gpus_per_node=8)
    learners = plan["learners"]
    assert (learners["ranks"], learners["nodes"], learners["ranks_per_node"], learners["gpus"]) == (16, 2, 8, 16)
    # 16 bytes a parameter (fp32 weight, gradient, two AdamW moments) over 16 shards: 7,615,616,512 B = 7.09 GiB
    assert learners["gpu_memory"]["states_gib"] == pytest.approx(7.09, abs=0.01)
    # FSDP ranks start on `meta`: no GPU holds the whole model; rank 0 reads it on the host in fp32,
    # 4 · 7.6 G = 28.37 GiB, beside 4 GiB of runtime for each of a pod's eight ranks
    assert learners["gpu_memory"]["load_peak_gib"] == 0
    assert learners["host_memory_per_pod_gib"] == pytest.approx(28.37 + 8 * 4, abs=0.1)
    assert learners["gpu_memory"]["fits"] and learners["gpu_memory"]["total_gib"] < 80
    with_checkpointing = learners["gpu_memory_with_activation_checkpointing"]
    assert with_checkpointing["activations_gib"] < learners["gpu_memory"]["activations_gib"] / 5
    engine = plan["engines"]
    assert (engine["count"], engine["gpus_each"], engine["tensor_parallel"]) == (1, 1, 1)
    assert engine["host_memory_per_pod_gib"] == pytest.approx(14.19 + 4, abs=0.1)  # the bf16 weights, loaded once
    # vLLM's 0.9 of 80 GiB less 14.19 GiB of bf16 weights and 2 GiB for its passes: 55.8 GiB of KV cache at
    # 2 (K, V) · 28 layers · 4 heads · 128 · 2 bytes = 57,344 B a token
    assert engine["kv_cache_tokens"] == pytest.approx(55.81 * 2**30 / 57_344, rel=1e-3)
    assert plan["fits"] is True


def test_a_7b_full_fine_tune_on_one_gpu_is_said_not_to_fit(qwen_7b: Path, tmp_path: Path) -> None:
    (config := tmp_path / "one-gpu.yaml").write_text(
        yaml.safe_dump(
            {
                "env": {"name": "toy_terminal"},
                "policy": {"type": "vllm", "model": {"type": "hf", "name_or_path": str(qwen_7b)}},
            }
        )
    )
    command = [sys.executable, "-m", "orchestrator", "train", str(config), "--dry-run", "--set", "learner.device=cuda"]
    done = subprocess.run([*command, "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["config"]["learner"]["num_learners"] == 1  # the resolved config rides along
    memory = out["plan"]["learners"]["gpu_memory"]
    assert memory["states_gib"] == pytest.approx(16 * 7_615_616_512 / 2**30, abs=0.01)  # 113.5 GiB unsharded
    assert out["plan"]["fits"] is False and memory["fits"] is False
    plain = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert json.loads(plain.stdout)["learner"]["device"] == "cuda"  # stdout: the resolved config alone
    assert "does NOT fit in 80 GiB GPUs" in plain.stderr and "per GPU: ≈ " in plain.stderr


def test_a_hub_model_is_planned_from_the_local_cache_and_never_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = tmp_path / "models--Qwen--Qwen2.5-7B-Instruct" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(QWEN_7B))  # the layout huggingface_hub caches in
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")

    def model(name: str) -> object:
        return load_config(None, ["policy.type=vllm", "policy.model.type=hf", f"policy.model.name_or_path={name}"])

    assert model_shape(model("Qwen/Qwen2.5-7B-Instruct").policy.model).parameters == 7_615_616_512
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        model_shape(model("nobody/no-such-7b").policy.model)


def test_a_catalog_model_is_planned_from_its_converted_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pulled catalog model's config.json is the one its first load converted; before that there
    is none, and the error says to pull it (the GGUF's weights are never read to plan)."""
    from trainers.models.catalog import CATALOG
    from trainers.models.resolve import models_dir, pulled_path

    monkeypatch.setenv("HILLCLIMB_HOME", str(tmp_path))
    smol = CATALOG["smollm2-135m-instruct"]
    pulled_path(smol).parent.mkdir(parents=True)
    pulled_path(smol).write_bytes(b"GGUF")  # present, never read
    cfg = load_config(None, ["policy.type=vllm", "policy.model.type=hf", f"policy.model.name_or_path={smol.name}"])
    with pytest.raises(ModelNotFoundError, match="hillclimb model pull smollm2-135m-instruct"):
        model_shape(cfg.policy.model)
    converted = models_dir() / "converted" / f"{Path(smol.filename).stem}-0123456789abcdef"
    converted.mkdir(parents=True)
    # SmolLM2-135M's dimensions, as its conversion writes them
    smol_config = {
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
        "num_hidden_layers": 30, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True,
    }  # fmt: skip
    (converted / "config.json").write_text(json.dumps(smol_config))
    # per layer 2·576² + 2·576·192 + 3·576·1536 + 2·576 = 3,540,096; ×30, + 49152·576 tied, + 576:
    # 134,515,008, the catalog's "134.5 M parameters"
    assert model_shape(cfg.policy.model).parameters == 134_515_008
