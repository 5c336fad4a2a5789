"""Oracle actions are optional in a task suite; what replays them (the scripted policy, training's
warm-up and anchor, `env demo`) refuses a suite without them, naming the tasks and the fix."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from envs.authoring.registry import load_suite
from envs.authoring.tasks import MissingOracleError
from hillclimb.config import load_config
from hillclimb.config.rollout import SamplingParams
from orchestrator.demo import oracle_episode
from orchestrator.train import OracleEpisodeError, Trainer
from providers.registry import make_provider
from tests.factories import say_package, trajectory
from trainers.policy.base import EpisodeInfo, GenerateRequest
from trainers.policy.scripted import ScriptedPolicy
from trainers.trajectory import DoneReason

ROWS = [
    {"id": "solved", "split": "train", "prompt": "say a", "oracle": ["a"]},
    {"id": "open-ended", "split": "train", "prompt": "say anything"},
    {"id": "held", "split": "heldout", "prompt": "say b"},
]
NAME = "unsolved_pkg:ENVIRONMENT"


@pytest.fixture(autouse=True)
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    say_package(tmp_path, "unsolved_pkg", ROWS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("unsolved_pkg", None)


def test_a_suite_without_oracles_still_loads_for_model_policies() -> None:
    assert [t.oracle for t in load_suite(NAME).tasks("train")] == [("a",), ()]


async def test_the_scripted_policy_refuses_it_naming_the_tasks() -> None:
    request = GenerateRequest(prompt_ids=(1,), episode=EpisodeInfo(env=NAME, task_id="solved", turn=0))
    with pytest.raises(
        MissingOracleError, match=r"the scripted policy .* 2 task\(s\) have none: open-ended, held"
    ) as e:
        await ScriptedPolicy().generate([request], SamplingParams())
    assert e.value.tasks == ["open-ended", "held"] and "any policy.type but scripted" in str(e.value)


def test_training_with_a_warm_up_or_anchor_refuses_it_before_starting_anything(tmp_path: Path) -> None:
    for setting in ("train.warmup_steps=2", "train.anchor_batch=2"):
        config = load_config(None, [f"env.name={NAME}", "policy.type=hf", f"run.dir={tmp_path}", setting])
        with pytest.raises(MissingOracleError, match=r"the warm-up and the behaviour-cloning anchor") as e:
            Trainer(config, tmp_path)
        assert e.value.tasks == ["open-ended"]  # train tasks only: held-out ones need no oracle to train
        assert "--set train.warmup_steps=0 --set train.anchor_batch=0" in str(e.value)


def test_training_without_them_needs_no_oracle(tmp_path: Path) -> None:
    config = load_config(None, [f"env.name={NAME}", "policy.type=hf", f"run.dir={tmp_path}"])
    assert Trainer(config, tmp_path).suite.env == NAME


async def test_env_demo_refuses_a_task_without_one_before_creating_a_sandbox(tmp_path: Path) -> None:
    provider = make_provider("local", root=tmp_path / "sandboxes")  # never asked: the check comes first
    with pytest.raises(MissingOracleError, match=r"`hillclimb env demo` .* open-ended\. .*--task"):
        await oracle_episode(provider, NAME, "open-ended", "train", lambda kind, text: None)


def test_failed_oracle_episodes_stop_training_quoting_the_first_failure(tmp_path: Path) -> None:
    config = load_config(None, [f"env.name={NAME}", "policy.type=hf", f"run.dir={tmp_path}"])
    reports: list[tuple[str, dict]] = []
    trainer = Trainer(config, tmp_path, lambda kind, values: reports.append((kind, values)))
    solved = trajectory("oracle-solved", task_id="solved")
    died = (
        "no sandbox: SandboxDiedError: sandbox dk-1 exited while starting; log tail:\nTraceback (most recent call"
        " last):\n  File \"/opt/x.py\", line 1, in <module>\nPermissionError: [Errno 13] Permission denied: '.env'\n"
    )
    broken = trajectory(
        "oracle-held", task_id="held", reward=0.0, done=DoneReason.SANDBOX_ERROR, metadata={"error": died}
    )
    with pytest.raises(OracleEpisodeError) as e:
        trainer._check_oracle_episodes([solved, broken])
    message = str(e.value)
    assert "failed on 1 of 2 task(s): held (sandbox_error)" in message
    # the exception the sandbox's own server stopped with, named before what differs in a sandbox
    assert "The sandbox's server stopped with `PermissionError: [Errno 13] Permission denied: '.env'`" in message
    assert "a uid and working directory of its own" in message
    assert message.endswith(f"The first failure (held): {died}")
    unsolved = trajectory("oracle-open-ended", task_id="open-ended", reward=0.0, done=DoneReason.STEP_LIMIT)
    trainer._check_oracle_episodes([solved, unsolved])
    assert reports == [("oracle_unsolved", {"tasks": ["open-ended"]})]  # played to the end, unrewarded: said
