"""The run-config schema: every section of a run config as pydantic models, one module per
concern, importing nothing of the runtime (so `hillclimb --help`, config validation and the
Helm values schema load no env server, provider, torch or Ray).

    run        RunConfig, and the run, env, ray, eval and train sections
    load       load_config: YAML + `--set` overrides → a validated config, errors in the user's spelling
    sandboxes  provider and pool          providers  each provider's options model
    rollout    rollout, episode limits, sampling
    policy     policy engines             models     the models they run
    learner    learner                    losses     GRPO + ECHO loss and λ schedules
    buffer     buffer                     log        W&B, TensorBoard, sampled episodes
    ledger     which ledger URIs are accepted
    chart      the Helm chart's values (`helm/hillclimb/values.schema.json`)
"""

from hillclimb.config.load import load_config
from hillclimb.config.run import RunConfig

__all__ = ["RunConfig", "load_config"]
