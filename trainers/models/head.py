"""The LM head as learners apply it: logits = final hidden states · Wᵀ (+ b), and nothing after.

The losses take the head's weight and bias and apply them themselves, a chunk of tokens at a
time, so that no [B, T, V] logits tensor ever exists. A model whose logits are something
else (soft-capped, as Gemma 2's `final_logit_softcapping`; scaled, as Cohere's `logit_scale`
or Granite's `logits_scaling`) would then be trained on a distribution it does not sample
from. `check_lm_head` compares the model's own logits with the head applied by hand on a few
probe tokens, so it catches such transforms whether or not their config key is known here,
and refuses the model with what it found.
"""

from __future__ import annotations

from typing import Any

import torch

from hillclimb.errors import HillclimbError

__all__ = ["UnsupportedModelError", "check_lm_head", "lm_head"]

# Config keys of logit transforms in transformers' architectures, named in the error when set.
_TRANSFORM_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class UnsupportedModelError(HillclimbError, ValueError):
    """The model's structure is one the learner cannot train faithfully."""


def lm_head(model: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output projection's (weight_VH, bias_V or None)."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise UnsupportedModelError(
            f"{type(model).__name__}'s output layer is a {type(head).__name__}, not a linear LM head; "
            "the learner applies the head itself and supports only a torch.nn.Linear"
        )
    return head.weight, head.bias


@torch.no_grad()
def check_lm_head(model: Any, probe_tokens: int = 8) -> None:
    """Raise `UnsupportedModelError` unless the model's logits are exactly its hidden states
    through `lm_head(model)`, up to floating-point rounding."""
    weight, bias = lm_head(model)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.arange(probe_tokens, device=weight.device).mul_(7919).remainder_(vocab)[None]
    was_training = model.training
    model.eval()
    try:
        hidden = model.base_model(input_ids=ids).last_hidden_state
        own = model(input_ids=ids).logits.float()
    finally:
        model.train(was_training)
    by_hand = torch.nn.functional.linear(hidden, weight, bias).float()
    error = (own - by_hand).abs().max().item() / max(own.abs().max().item(), 1e-6)
    tolerance = 1e-4 if weight.dtype == torch.float32 else 2e-2
    if error > tolerance:
        config = getattr(model, "config", None)
        found = {k: getattr(config, k) for k in _TRANSFORM_KEYS if getattr(config, k, None) not in (None, 1, 1.0)}
        named = f" ({', '.join(f'{k}={v}' for k, v in found.items())})" if found else ""
        raise UnsupportedModelError(
            f"{type(model).__name__} transforms its logits after the LM head{named}: its logits differ from "
            f"hidden · Wᵀ + b by {error:.2g} (relative). The learner applies the head itself, so it would train "
            "a distribution the policy does not sample from; models with logit soft-capping or scaling are not "
            "supported yet"
        )
