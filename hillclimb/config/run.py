"""`RunConfig`: the whole run config, one section per concern, and the checks across sections.

    run, env, ray, eval, train        here
    provider, pool                    hillclimb.config.sandboxes
    policy                            hillclimb.config.policy (its models: hillclimb.config.models)
    rollout                           hillclimb.config.rollout
    buffer                            hillclimb.config.buffer
    learner                           hillclimb.config.learner (its loss: hillclimb.config.losses)
    log                               hillclimb.config.log

Nothing heavy is imported, so validating a config takes a fraction of a second
(`hillclimb.config.load` reads one from YAML and `--set` overrides).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hillclimb.config.buffer import BufferConfig
from hillclimb.config.learner import LearnerConfig
from hillclimb.config.ledger import check_ledger_uri
from hillclimb.config.log import LogSection
from hillclimb.config.policy import PolicyConfig, ScriptedPolicyConfig
from hillclimb.config.rollout import RolloutSection
from hillclimb.config.sandboxes import PoolConfig, ProviderSection
from hillclimb.splits import Split


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(_Section):
    name: str = "run"
    """Run id prefix; the run directory is `<dir>/<name>`."""
    dir: Path = Path("runs")
    seed: int = 0
    """Seeds task order, episode seeds and sampling: the same config repeats the same run."""
    resume: bool = True
    """Continue the run in `<dir>/<name>` if it exists (its ledger and checkpoints) — refused, naming
    the keys, if its config differed in anything that changes results (orchestrator/fingerprint.py).
    False: move an existing `<dir>/<name>` aside (`<name>.replaced-<time>`) and start fresh."""
    ledger_uri: str | None = None
    """Where the trajectory ledger lives. None: `<dir>/<name>/ledger`, on the driver's disk, where
    the buffer actor then runs too. Else an absolute path, `file:///abs/path`, or shared storage
    (`s3://bucket/prefix`, with pyarrow's query options such as
    `?endpoint_override=host:9000&scheme=http`; `gs://bucket/prefix`), used as given: give each
    run its own. Credentials come from the environment, never the URI."""
    metrics_port: int | None = Field(default=0, ge=0)
    """Prometheus /metrics of the whole run (driver and every Ray actor's figures): 0 picks a free
    port, None serves none."""
    metrics_host: str = "127.0.0.1"
    """The address /metrics listens on: this machine only by default; 0.0.0.0 in a pod that
    Prometheus scrapes (the chart sets it)."""

    @field_validator("ledger_uri")
    @classmethod
    def _ledger_uri(cls, uri: str | None) -> str | None:
        return None if uri is None else check_ledger_uri(uri)


class EnvSection(_Section):
    name: str = "toy_terminal"
    """Environment with a task suite: a built-in or installed name (see `hillclimb env list`), or an
    import path 'package.module:ENVIRONMENT' naming an `EnvPackage`."""
    train_split: Split = "train"
    eval_splits: list[Split] = Field(default_factory=lambda: ["train", "heldout"])


class RaySection(_Section):
    address: str | None = None
    """Cluster to join (also $RAY_ADDRESS); None starts a local Ray."""
    num_workers: int = Field(default=2, ge=1)
    """RolloutWorker actors, spread over the cluster's nodes (each runs its own sandbox pool there)."""
    cpus_per_worker: float = Field(default=0.0, ge=0)
    """CPUs Ray reserves for each rollout worker. Workers are spread over nodes, best effort: Ray
    honours it for workers that reserve something, and may put ones that reserve nothing together."""
    worker_resources: dict[str, float] = Field(default_factory=dict)
    """Ray custom resources each RolloutWorker asks for, to land only on nodes that offer them: on
    the chart's cluster `{rollout_worker: 1}`, the pods allowed to reach sandboxes."""


class EvalSection(_Section):
    k: list[int] = Field(default_factory=lambda: [1])
    """pass@k values to report (each ≤ rollout.group_size)."""
    temperature: float = Field(default=0.0, ge=0)
    """Sampling temperature of evaluation episodes during training (0: greedy, so pass@1 is exact)."""


class TrainSection(_Section):
    """The training loop (`hillclimb train`)."""

    steps: int = Field(default=100, ge=0)
    """Learner steps of RL (each: `groups_per_step` GRPO groups → one optimizer step → new weights)."""
    groups_per_step: int = Field(default=8, ge=1)
    warmup_steps: int = Field(default=0, ge=0)
    """Behaviour-cloning steps on TRAIN-split oracle transcripts before RL; they train ACTION tokens only."""
    warmup_batch: int = Field(default=32, ge=1)
    """Oracle transcripts per warm-up step."""
    anchor_batch: int = Field(default=0, ge=0)
    """TRAIN-split oracle transcripts per RL step whose ACTION tokens keep a behaviour-cloning
    term in the loss (weighted by `learner.anchor_coef`; 0: none). ENV tokens of these transcripts
    are never trained: the world model still learns only from the policy's own rollouts."""
    eval_every: int = Field(default=10, ge=1)
    """Evaluate (held-out pass@1, env-token CE) every this many RL steps, and at the start and the end."""
    eval_tasks: int | None = Field(default=None, ge=1)
    """Held-out tasks played per evaluation (a fixed sample); None plays them all."""
    checkpoint_every: int = Field(default=50, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)
    """Stop RL early once the RL phase has taken this long, in seconds (the oracle transcripts, the
    warm-up and the evaluations before RL do not count; the final evaluation still runs). None: no limit."""


class RunConfig(_Section):
    run: RunSection = RunSection()
    env: EnvSection = EnvSection()
    provider: ProviderSection = ProviderSection()
    pool: PoolConfig = PoolConfig()
    policy: PolicyConfig = ScriptedPolicyConfig()
    rollout: RolloutSection = RolloutSection()
    buffer: BufferConfig = BufferConfig()
    ray: RaySection = RaySection()
    eval: EvalSection = EvalSection()
    learner: LearnerConfig = LearnerConfig()
    train: TrainSection = TrainSection()
    log: LogSection = LogSection()
    """Weights & Biases, TensorBoard and sampled episodes (metrics.jsonl and Prometheus always)."""

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        too_big = [k for k in self.eval.k if k > self.rollout.group_size]
        if too_big:
            raise ValueError(
                f"eval.k {too_big} exceed rollout.group_size={self.rollout.group_size}: pass@k needs k samples per task"
            )
        self._loss_temperature_follows_the_sampler()
        self._chat_policy_renders_messages()
        return self

    def _chat_policy_renders_messages(self) -> None:
        """A chat API applies its own template: it takes messages, and only it does."""
        chat = self.policy.type == "chat"
        if chat and "renderer" not in self.rollout.model_fields_set:
            self.rollout = self.rollout.model_copy(update={"renderer": "messages"})
        elif chat != (self.rollout.renderer == "messages"):
            raise ValueError(
                f"rollout.renderer={self.rollout.renderer!r} with policy.type={self.policy.type!r}: the messages "
                "renderer goes with the chat policy and only with it (leave rollout.renderer unset for chat)"
            )

    def _loss_temperature_follows_the_sampler(self) -> None:
        """GRPO's importance ratio compares the learner's log-probs with those the sampler reported,
        which are at the sampling temperature: the loss must use the same one."""
        sampling = self.rollout.episode.sampling.temperature
        loss = self.learner.loss
        if sampling == 0:  # greedy rollouts report log-probs of the unscaled logits
            return
        if "temperature" not in loss.model_fields_set:
            self.learner.loss = loss.model_copy(update={"temperature": sampling})
        elif loss.temperature != sampling:
            raise ValueError(
                f"learner.loss.temperature={loss.temperature} differs from rollout.episode.sampling.temperature="
                f"{sampling}: the importance ratio needs both at the sampling temperature (leave the loss's unset)"
            )
