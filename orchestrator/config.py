"""Run configuration: one YAML file → pydantic models, `--set a.b=c` overrides on top.

Unknown keys and bad values are errors that name the key the way the user wrote it
(`rollout.group_size: must be >= 1`; a value from the command line as `--set key=value`; an
unknown key with the nearest known one: `did you mean 'concurrency'?`), all reported at once.
Nothing heavy is imported, so validating a config takes a fraction of a second.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from envs.authoring.tasks import Split
from hillclimb.errors import ConfigError, TargetNotFoundError, validation_problems
from orchestrator.buffer_config import BufferConfig
from orchestrator.ledger_location import check_ledger_uri
from orchestrator.log_config import LogSection
from orchestrator.pool import PoolConfig
from orchestrator.rollout import EpisodeConfig
from providers.registry import options_model
from trainers.learner_config import LearnerConfig
from trainers.policy.config import PolicyConfig, ScriptedPolicyConfig


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


class ProviderSection(_Section):
    type: str = "local"
    """Sandbox provider: local, docker, or a plugin's name."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the provider's constructor (e.g. docker: image)."""
    resources: dict[str, Any] = Field(default_factory=dict)
    """Per-sandbox limits: cpu, memory_mb, pids, disk_mb."""
    ttl_s: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _known_options(self) -> ProviderSection:
        try:
            options_model(self.type).model_validate(self.options)
        except TargetNotFoundError as e:
            raise ValueError(str(e)) from None
        except ValidationError as e:
            raise ValueError(f"provider {self.type!r}: {validation_problems(e, 'options.')}") from None
        return self


class RolloutSection(_Section):
    group_size: int = Field(default=4, ge=1)
    """G: episodes per task per round (GRPO normalises within them; pass@k needs k ≤ G)."""
    concurrency: int = Field(default=64, ge=1)
    """Episodes in flight across all workers."""
    renderer: Literal["plain", "chat", "messages"] = "plain"
    """plain: a shell transcript; chat: inside the model's HF chat template; messages: chat messages
    for a policy behind a chat API (`policy.type: chat`, which picks it when left unset)."""
    episode: EpisodeConfig = EpisodeConfig()


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


def _set(tree: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw)


def _location(tree: Any, loc: tuple[Any, ...]) -> str:
    """The error's key as the user wrote it. pydantic puts a discriminated union's tag in the
    path (`policy.hf.max_batch`); the user wrote `policy.max_batch`, with `type: hf` beside it."""
    parts, node = [], tree
    for i, part in enumerate(loc):
        following = loc[i + 1] if i + 1 < len(loc) else None
        if isinstance(node, dict) and part not in node and (node.get("type") == part or following in node):
            continue
        parts.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field may hold: itself, or a union's members."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed beside the unknown one at `loc` (pydantic's path: a discriminated
    union's tag stands between the field and its member's keys)."""
    models = [model]
    for part in loc[:-1]:
        tagged = [m for m in models if "type" in m.model_fields and m.model_fields["type"].default == part]
        if len(models) > 1 and tagged:
            models = tagged
            continue
        if len(models) != 1 or part not in models[0].model_fields:
            return []
        models = _models_in(models[0].model_fields[part].annotation)
    return list(models[0].model_fields) if len(models) == 1 else []


def _problem(err: Any, tree: dict[str, Any], model: type[BaseModel], overrides: dict[str, str]) -> tuple[str, bool]:
    """One problem as a line in the user's spelling, and whether a `--set` caused it."""
    where = _location(tree, err["loc"]) or "<top>"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), _known_keys(model, err["loc"]), n=1)
        message += f"; did you mean {close[0]!r}?" if close else ""
    blamed = next((item for key, item in overrides.items() if key == where or where.startswith(key + ".")), None)
    blamed = blamed or next((item for key, item in overrides.items() if key.startswith(where + ".")), None)
    return (f"--set {_without_credentials(blamed)}: {message}" if blamed else f"{where}: {message}"), blamed is not None


def _without_credentials(text: str) -> str:
    """`text` with the user:password and secret-named query options of any URI in it masked:
    errors are printed and logged."""
    text = re.sub(r"(\w+://)[^/@\s]*@", r"\1***@", text)
    return re.sub(r"([?&][^=&\s]*(?:token|secret|key|password)[^=&\s]*=)[^&\s]*", r"\1***", text, flags=re.I)


def load_config(path: str | Path | None, overrides: list[str] = (), model: type[BaseModel] = RunConfig) -> Any:  # type: ignore[assignment]
    """Read YAML (or start from defaults), apply `key.path=value` overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
        tree = loaded or {}
    given: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        _set(tree, key.strip(), value)
        given[key.strip()] = item
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        problems = [_problem(err, tree, model, given) for err in e.errors()]
        from_file = [line for line, blamed in problems if not blamed]
        source = f" in {path}" if path and from_file else " on the command line" if not from_file else ""
        lines = "\n".join(f"  {line}" for line, _ in problems)
        raise ConfigError(f"{len(problems)} invalid setting(s){source}:\n{lines}") from None
