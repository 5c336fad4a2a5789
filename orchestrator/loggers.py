"""Loggers where people look: Weights & Biases and TensorBoard, beside metrics.jsonl and Prometheus.

    MetricsLog.write(kind, step, values) ─► RunLoggers.scalars ─► WandbLogger        (log.wandb)
    evaluation's held-out episodes       ─► RunLoggers.episodes ─► TensorBoardLogger (log.tensorboard)
                                                 │
                                                 └─► <run dir>/samples.jsonl (always, when sampled_episodes > 0)

Each kind of record keeps its own step axis (`train/…` by RL step, `warmup/…` by warm-up
step, `eval/…` by the RL step it followed), so warm-up step 5 never collides with RL step 5.
The config a logger records is the run's resolved config with every value that holds a
secret-looking environment variable's value blanked: keys belong in the environment, not in a
dashboard. wandb and tensorboardX are imported only when configured (`hillclimb[log]`).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hillclimb.config.log import TensorBoardLogConfig, WandbLogConfig
from hillclimb.errors import ConfigError
from orchestrator.episode_text import decoded_episode_record

if TYPE_CHECKING:
    from hillclimb.config.run import RunConfig
    from trainers.tokenizer import Tokenizer
    from trainers.trajectory import Trajectory

SECRET_NAME_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
SECRET_MIN_LENGTH = 6
"""Shorter values (`1`, `true`) would blank innocent settings that happen to contain them."""
REDACTED = "<redacted>"
TABLE_COLUMNS = ("step", "task_id", "split", "reward", "done_reason", "turns", "prompt", "actions", "observations")


class RunLogger(Protocol):
    def scalars(self, kind: str, step: int, values: Mapping[str, float]) -> None: ...

    def episodes(self, step: int, records: list[dict[str, Any]]) -> None:
        """Episodes of one evaluation, as `episode_text.decoded_episode_record`s."""
        ...

    def close(self) -> None: ...


def redact_secrets(tree: Any, environ: Mapping[str, str] | None = None) -> Any:
    """`tree` with every string that contains a secret-looking environment variable's value blanked."""
    environ = os.environ if environ is None else environ
    secret_values = [
        value
        for name, value in environ.items()
        if any(word in name.upper() for word in SECRET_NAME_WORDS) and len(value) >= SECRET_MIN_LENGTH
    ]

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: clean(value) for key, value in node.items()}
        if isinstance(node, list):
            return [clean(value) for value in node]
        if isinstance(node, str) and any(secret in node for secret in secret_values):
            return REDACTED
        return node

    return clean(tree)


def _import(module: str, key: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"{key} is set, but {module} is not installed: `pip install 'hillclimb[log]'`, or remove {key}"
        ) from e


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    return {key: value for key, value in values.items() if isinstance(value, (int, float))}


class WandbLogger:
    """One W&B run per run directory; a resumed run continues it (its id is kept in the run dir)."""

    def __init__(self, config: WandbLogConfig, run_dir: Path, run_config: dict[str, Any]) -> None:
        wandb = _import("wandb", "log.wandb")
        id_file = run_dir / "wandb-run-id"
        if not id_file.exists():
            id_file.write_text(secrets.token_hex(4) + "\n")  # W&B run ids: [a-z0-9], 8 by default
        self._wandb = wandb
        try:
            self._run = wandb.init(
                project=config.project,
                entity=config.entity,
                mode=config.mode,
                dir=str(run_dir),
                name=run_dir.name,
                id=id_file.read_text().strip(),
                resume="allow",
                config=redact_secrets(run_config),
                settings=wandb.Settings(console="off", silent=True, save_code=False, x_disable_stats=True),
            )
        except wandb.errors.Error as e:  # no API key, no network, an unknown entity
            raise ConfigError(
                f"log.wandb: cannot start a W&B run ({e}); log in (`wandb login` or $WANDB_API_KEY), "
                "or set log.wandb.mode=offline and `wandb sync` the run later"
            ) from e
        self._kinds: set[str] = set()

    def _axis(self, kind: str) -> None:
        if kind not in self._kinds:
            self._run.define_metric(f"{kind}/step")
            self._run.define_metric(f"{kind}/*", step_metric=f"{kind}/step")
            self._kinds.add(kind)

    def scalars(self, kind: str, step: int, values: Mapping[str, float]) -> None:
        self._axis(kind)
        self._run.log({f"{kind}/step": step, **{f"{kind}/{key}": value for key, value in _numbers(values).items()}})

    def episodes(self, step: int, records: list[dict[str, Any]]) -> None:
        self._axis("eval")
        rows = [[_cell(column, step, record) for column in TABLE_COLUMNS] for record in records]
        self._run.log({"eval/step": step, "eval/episodes": self._wandb.Table(columns=list(TABLE_COLUMNS), data=rows)})

    def close(self) -> None:
        self._run.finish()


def _cell(column: str, step: int, record: dict[str, Any]) -> Any:
    if column == "step":
        return step
    value = record[column]
    return "\n".join(piece.rstrip("\n") for piece in value) if isinstance(value, list) else value


class TensorBoardLogger:
    """Event files: scalars under `<kind>/<name>`, the config and sampled episodes as text."""

    def __init__(self, config: TensorBoardLogConfig, run_dir: Path, run_config: dict[str, Any]) -> None:
        tensorboardx = _import("tensorboardX", "log.tensorboard")
        self.dir = config.dir if config.dir is not None else run_dir / "tensorboard"
        self._writer = tensorboardx.SummaryWriter(logdir=str(self.dir))
        self._writer.add_text("config", _code(json.dumps(redact_secrets(run_config), indent=2)), 0)

    def scalars(self, kind: str, step: int, values: Mapping[str, float]) -> None:
        for key, value in _numbers(values).items():
            self._writer.add_scalar(f"{kind}/{key}", value, step)

    def episodes(self, step: int, records: list[dict[str, Any]]) -> None:
        sections = [
            f"### {r['task_id']} ({r['split']}): reward {r['reward']:g}, {r['done_reason']}, {r['turns']} turns\n\n"
            + _code(r["text"])
            for r in records
        ]
        self._writer.add_text("eval/episodes", "\n\n".join(sections), step)

    def close(self) -> None:
        self._writer.close()


def _code(text: str) -> str:
    """Markdown that shows `text` verbatim (TensorBoard renders text summaries as markdown)."""
    return "```\n" + text.replace("```", "`\u200b``") + "\n```"


class RunLoggers:
    """The run's loggers behind one call each; also writes the sampled episodes to the run dir."""

    def __init__(
        self,
        loggers: list[RunLogger],
        run_dir: Path,
        tokenizer: Callable[[], Tokenizer],
        sampled_episodes: int,
    ) -> None:
        self.loggers = loggers
        self.samples_path = run_dir / "samples.jsonl"
        self._tokenizer_factory = tokenizer
        self._tokenizer: Tokenizer | None = None
        self.sampled_episodes = sampled_episodes

    def scalars(self, kind: str, step: int, values: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.scalars(kind, step, values)

    def episodes(self, step: int, trajectories: list[Trajectory]) -> None:
        """The first `sampled_episodes` by task id: the same tasks at every evaluation that plays them all."""
        chosen = sorted(trajectories, key=lambda t: (t.task_id, t.sample_index))[: self.sampled_episodes]
        if not chosen:
            return
        if self._tokenizer is None:  # loaded once, at the first evaluation that samples
            self._tokenizer = self._tokenizer_factory()
        records = [decoded_episode_record(t, self._tokenizer) for t in chosen]
        with open(self.samples_path, "a") as f:
            f.writelines(json.dumps({"step": step, **record}) + "\n" for record in records)
        for logger in self.loggers:
            logger.episodes(step, records)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def open_loggers(config: RunConfig, run_dir: Path) -> RunLoggers:
    """The loggers `config.log` asks for, opened (a missing package is a ConfigError naming the extra)."""
    from trainers.policy.factory import load_policy_tokenizer

    resolved = config.model_dump(mode="json")
    loggers: list[RunLogger] = []
    try:
        if config.log.tensorboard is not None:
            loggers.append(TensorBoardLogger(config.log.tensorboard, run_dir, resolved))
        if config.log.wandb is not None and config.log.wandb.mode != "disabled":
            loggers.append(WandbLogger(config.log.wandb, run_dir, resolved))
    except BaseException:
        for logger in loggers:  # one that did open must not outlive the failed start
            logger.close()
        raise
    return RunLoggers(loggers, run_dir, lambda: load_policy_tokenizer(config.policy), config.log.sampled_episodes)
