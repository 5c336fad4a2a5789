"""The learner applies the LM head itself: heads with a bias are trained with it, and models that
transform their logits after the head are refused, by what the model computes, not by name."""

from __future__ import annotations

import pytest
import torch
import transformers
from learner_data import CONFIG, MODEL, groups_of_seed

from trainers.batching import StepTotals, samples_from_groups
from trainers.learner import Learner
from trainers.models.head import UnsupportedModelError, check_lm_head
from trainers.models.tiny import build_tiny_model
from trainers.roles import Role

SMALL = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}


def _tiny(config_class: str, model_class: str, **fields: object) -> torch.nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**SMALL, num_attention_heads=2, num_key_value_heads=2, **fields)
    return getattr(transformers, model_class)(config).eval()


@pytest.mark.parametrize(
    ("config_class", "model_class", "fields", "named"),
    [
        (
            "Gemma2Config",
            "Gemma2ForCausalLM",
            {"final_logit_softcapping": 0.5, "head_dim": 16},
            "final_logit_softcapping=0.5",
        ),
        ("CohereConfig", "CohereForCausalLM", {"logit_scale": 0.25}, "logit_scale=0.25"),
        ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 4.0}, "logits_scaling=4.0"),
    ],
)
def test_models_that_transform_their_logits_are_refused(
    config_class: str, model_class: str, fields: dict[str, object], named: str
) -> None:
    with pytest.raises(UnsupportedModelError, match=f"transforms its logits after the LM head \\({named}\\)"):
        check_lm_head(_tiny(config_class, model_class, **fields))


def test_the_same_architectures_without_a_transform_pass() -> None:
    check_lm_head(_tiny("Gemma2Config", "Gemma2ForCausalLM", final_logit_softcapping=None, head_dim=16))
    check_lm_head(_tiny("GraniteConfig", "GraniteForCausalLM", logits_scaling=1.0))
    check_lm_head(build_tiny_model(MODEL))


def test_a_transform_no_config_key_names_is_caught_too() -> None:
    model = build_tiny_model(MODEL)
    forward = model.forward

    def squashed(*args: object, **kwargs: object) -> object:
        out = forward(*args, **kwargs)
        out.logits = torch.tanh(out.logits)  # a transform with no config key at all
        return out

    model.forward = squashed  # type: ignore[method-assign]
    with pytest.raises(UnsupportedModelError, match=r"LlamaForCausalLM transforms its logits after the LM head:"):
        check_lm_head(model)


def test_a_head_with_a_bias_is_trained_and_evaluated_with_it() -> None:
    learner = Learner(MODEL, CONFIG)
    old = learner.model.lm_head
    learner.model.lm_head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        learner.model.lm_head.weight.copy_(old.weight)
        learner.model.lm_head.bias.uniform_(-2.0, 2.0)  # large enough to move every token's log-prob
    learner.optimizer = torch.optim.AdamW(learner.model.parameters(), lr=CONFIG.lr)
    check_lm_head(learner.model)
    samples = samples_from_groups(groups_of_seed(0), CONFIG.loss)

    # Evaluation: the env-token CE is the model's own, from its full logits (bias included).
    ids = torch.tensor([samples[0].token_ids])
    with torch.no_grad():
        logp = learner.model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    targets, roles = ids[0, 1:], torch.tensor(samples[0].roles[1:])
    env = roles == Role.ENV
    expected = -logp[env].gather(1, targets[env][:, None]).mean().item()
    assert learner.env_cross_entropy([samples[0]]) == pytest.approx(expected, rel=1e-5)

    # Training: the bias is in the loss, so it gets a gradient and moves.
    before = learner.model.lm_head.bias.detach().clone()
    learner.train_step(samples, StepTotals.of(samples), step=0)
    assert learner.model.lm_head.bias.grad is not None and learner.model.lm_head.bias.grad.abs().sum() > 0
    assert not torch.equal(before, learner.model.lm_head.bias.detach())
