"""`export_checkpoint`: a learner's checkpoint as a plain transformers model (`save_pretrained`),
what vLLM, `hillclimb model serve` and `from_pretrained` load.

    checkpoint (sharded, DCP) ──read_weights (one process)──► the trained tensors
    model config ──load_model──► the base model ──► with LoRA: adapters loaded, merged (peft)
                                                    else: the weights loaded ──► save_pretrained

A checkpoint holds shards in torch.distributed.checkpoint's form (`trainers.checkpoint`), which
no inference engine reads: this is the way out.
"""

from __future__ import annotations

from pathlib import Path

from hillclimb.config.learner import LoraConfig
from hillclimb.config.models import ModelConfig
from hillclimb.errors import ConfigError
from trainers.checkpoint import read_info, read_weights
from trainers.models.load import load_model
from trainers.models.lora import add_adapters

__all__ = ["export_checkpoint"]


def export_checkpoint(model_config: ModelConfig, checkpoint: str | Path, out: str | Path) -> Path:
    """Write the model of `checkpoint` to `out` with `save_pretrained`: fully fine-tuned weights
    as they are, or the base model of `model_config` with the checkpoint's adapters (those of
    `learner.lora`, which its trainer.json records) merged in. A pretrained model's tokenizer
    goes beside it."""
    recorded = read_info(checkpoint).get("lora")
    model, tokenizer = load_model(model_config)
    trained = read_weights(checkpoint)
    wrapped = add_adapters(model, LoraConfig.model_validate(recorded)) if recorded is not None else None
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(trained) - set(model.state_dict()) or (wrapped is not None and set(trained) != expected):
        raise ConfigError(
            f"{checkpoint}'s {len(trained)} saved tensors do not fit {model_config}: "
            "export with the model the run trained"
        )
    model.load_state_dict(trained, strict=wrapped is None)
    plain = wrapped.merge_and_unload() if wrapped is not None else model
    plain.save_pretrained(str(out))
    if hasattr(tokenizer, "hf"):
        tokenizer.hf.save_pretrained(str(out))
    return Path(out)
