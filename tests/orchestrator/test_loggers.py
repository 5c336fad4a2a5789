"""The W&B and TensorBoard loggers behind `MetricsLog`, read back from what they wrote: wandb's
offline run files and TensorBoard's event files. Sampled episodes go to both and the run dir."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hillclimb.config import load_config
from hillclimb.errors import ConfigError
from orchestrator.loggers import REDACTED, open_loggers, redact_secrets
from orchestrator.schedule import GroupSpec
from orchestrator.train import MetricsLog, Trainer
from tests.orchestrator import wandb_offline
from tests.orchestrator.episodes_for_tests import ACTION, OBSERVATION, PROMPT, played_episode, write_run
from trainers.trajectory import TrajectoryGroup

REPO = Path(__file__).parents[2]
SECRET = "sk-test-0123456789abcdef"
LEAKY_ADDRESS = f"ray.address=ray://user:{SECRET}@127.0.0.1:10001"
"""A secret pasted into a config value: no logger may record it."""


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HILLCLIMB_TEST_API_KEY", SECRET)


def _log_a_short_run(log: MetricsLog) -> None:
    log.write("eval_initial", 0, {"heldout_env_ce": 5.5, "train_env_ce": 5.25})
    log.write("warmup", 0, {"bc/action_ce": 2.5})
    log.write("warmup", 1, {"bc/action_ce": 2.0})
    for step, reward in ((1, 0.25), (2, 0.75)):
        log.write("train", step, {"train_reward": reward, "echo/ce": 4.0 - step, "note": "not a number"})
    episodes = [
        played_episode("eval2-heldout-r2-b", "b-task", reward=0.0),
        played_episode("eval2-heldout-r2-a", "a-task"),
        played_episode("eval2-heldout-r2-c", "c-task"),
    ]
    log.episodes(2, episodes)
    log.write("eval", 2, {"heldout_env_ce": 3.5, "heldout_pass1": 0.5})


def test_tensorboard_event_files_hold_every_scalar_and_the_sampled_episodes(tmp_path: Path, secret_env: None) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, config = write_run(
        tmp_path, "tb", LEAKY_ADDRESS, "log.tensorboard.dir=" + str(tmp_path / "tb"), "log.sampled_episodes=2"
    )
    log = MetricsLog(run_dir, open_loggers(config, run_dir))
    _log_a_short_run(log)
    log.close()

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars == {
        "eval_initial/heldout_env_ce": [(0, 5.5)],
        "eval_initial/train_env_ce": [(0, 5.25)],
        "warmup/bc/action_ce": [(0, 2.5), (1, 2.0)],
        "train/train_reward": [(1, 0.25), (2, 0.75)],
        "train/echo/ce": [(1, 3.0), (2, 2.0)],
        "eval/heldout_env_ce": [(2, 3.5)],
        "eval/heldout_pass1": [(2, 0.5)],
    }
    (text,) = events.Tensors("eval/episodes/text_summary")
    shown = text.tensor_proto.string_val[0].decode()
    assert text.step == 2
    assert "### a-task (heldout): reward 1" in shown and "### b-task (heldout): reward 0" in shown
    assert "c-task" not in shown  # two sampled: those of the first two task ids
    assert f"<ACTION>{ACTION}</ACTION>" in shown and f"<ENV>{OBSERVATION}</ENV>" in shown
    (logged_config,) = events.Tensors("config/text_summary")
    assert SECRET not in logged_config.tensor_proto.string_val[0].decode()
    assert REDACTED in logged_config.tensor_proto.string_val[0].decode()


def test_wandb_offline_run_holds_each_kinds_metrics_on_its_own_step_axis(
    tmp_path: Path, secret_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir, config = write_run(tmp_path, "wb", LEAKY_ADDRESS, "log.wandb.mode=offline", "log.wandb.project=probe")
    log = MetricsLog(run_dir, open_loggers(config, run_dir))
    _log_a_short_run(log)
    log.close()

    path = wandb_offline.offline_run(run_dir)
    rows = [{k: v for k, v in row.items() if not k.startswith("_")} for row in wandb_offline.history(path)]
    scalar_rows = [row for row in rows if "eval/episodes" not in row]
    assert scalar_rows == [
        {"eval_initial/step": 0, "eval_initial/heldout_env_ce": 5.5, "eval_initial/train_env_ce": 5.25},
        {"warmup/step": 0, "warmup/bc/action_ce": 2.5},
        {"warmup/step": 1, "warmup/bc/action_ce": 2.0},
        {"train/step": 1, "train/train_reward": 0.25, "train/echo/ce": 3.0},
        {"train/step": 2, "train/train_reward": 0.75, "train/echo/ce": 2.0},
        {"eval/step": 2, "eval/heldout_env_ce": 3.5, "eval/heldout_pass1": 0.5},
    ]
    (table_row,) = [row for row in rows if "eval/episodes" in row]
    assert table_row["eval/step"] == 2 and table_row["eval/episodes"]["_type"] == "table-file"
    (table_file,) = path.parent.glob("files/media/table/eval/episodes_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][:6] == ["step", "task_id", "split", "reward", "done_reason", "turns"]
    assert [row[1] for row in table["data"]] == ["a-task", "b-task", "c-task"]  # four by default: all three
    a_task = dict(zip(table["columns"], table["data"][0], strict=True))
    assert a_task["prompt"] == PROMPT + "\n" and a_task["actions"].startswith(ACTION)
    assert a_task["observations"] == OBSERVATION.rstrip("\n")
    logged = wandb_offline.config(path)
    assert logged["ray"]["address"] == REDACTED and SECRET not in json.dumps(logged)
    assert (run_dir / "wandb-run-id").read_text().strip() in path.name  # a resumed run continues it


def test_sampled_episodes_are_written_to_the_run_dir_as_text(tmp_path: Path) -> None:
    run_dir, config = write_run(tmp_path, "plain", "log.sampled_episodes=1")
    log = MetricsLog(run_dir, open_loggers(config, run_dir))  # no logger configured: the file alone
    _log_a_short_run(log)
    log.close()
    (sample,) = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert sample["step"] == 2 and sample["task_id"] == "a-task" and sample["reward"] == 1.0
    assert sample["prompt"] == PROMPT + "\n"
    assert sample["actions"] == [ACTION, "\n", "answer: /dev/sdb\n"]
    assert sample["observations"] == [OBSERVATION]
    assert sample["warnings"] == ["[harness] invalid action: empty action\n"]


@pytest.mark.parametrize(("key", "module"), [("tensorboard", "tensorboardX"), ("wandb", "wandb")])
def test_a_configured_logger_that_is_not_installed_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    run_dir, config = write_run(
        tmp_path, "missing", f"log.{key}.mode=offline" if key == "wandb" else "log.tensorboard={}"
    )
    with pytest.raises(ConfigError, match=rf"log\.{key} is set, but {module} is not installed: .*hillclimb\[log\]"):
        open_loggers(config, run_dir)


def test_secrets_are_blanked_wherever_they_appear_in_the_config() -> None:
    environ = {"OPENAI_API_KEY": "sk-abcdef", "MY_TOKEN": "tok-123456", "HOME": "/root", "SHORT_KEY": "1"}
    tree = {"a": {"url": "http://h/v1?k=sk-abcdef"}, "b": ["tok-123456", "/root/x"], "c": 1, "d": "1"}
    assert redact_secrets(tree, environ) == {"a": {"url": REDACTED}, "b": [REDACTED, "/root/x"], "c": 1, "d": "1"}


class _PlayingDriver:
    """The RolloutDriver's `run_groups` seam: each group's episode played out by the real renderer."""

    async def run_groups(
        self, groups: list[GroupSpec], on_group: Callable[[TrajectoryGroup], None], **_: object
    ) -> None:
        for g in groups:
            on_group(TrajectoryGroup.of([played_episode(g.group_id, g.task.id, split=g.split, reward=0.0)]))


def test_each_training_evaluation_writes_its_sampled_episodes(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "echo_toy.yaml", ["train.eval_tasks=3", "log.sampled_episodes=2"])
    trainer = Trainer(config, tmp_path)
    trainer.step = 4
    assert asyncio.run(trainer._heldout_success(_PlayingDriver())) == 0.0  # type: ignore[arg-type]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    played = sorted(t.task_id for t in trainer.ledger.trajectories())
    assert [(s["step"], s["task_id"], s["split"]) for s in samples] == [(4, task, "heldout") for task in played[:2]]
    assert samples[0]["observations"] == [OBSERVATION]


def test_wandb_online_without_a_key_says_how_to_log_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc holding a key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # were it to call out: loopback, refused
    run_dir, config = write_run(tmp_path, "online", "log.wandb.project=probe")
    with pytest.raises(ConfigError, match=r"log\.wandb: cannot start a W&B run .*API key.*log\.wandb\.mode=offline"):
        open_loggers(config, run_dir)
