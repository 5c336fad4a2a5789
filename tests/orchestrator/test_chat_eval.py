"""`hillclimb eval`'s flags as config, its cap on tasks per split, its episode records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hillclimb.config import RunConfig, load_config
from orchestrator.chat_eval import (
    EVAL_CONTEXT_BYTES,
    eval_overrides,
    first_tasks,
    pass_at_ks,
    reuse_notice,
    run_name,
    write_episodes,
)
from orchestrator.evaluate import plan_evaluation
from orchestrator.run_lifecycle import prepare_run_dir
from tests.factories import group, trajectory
from trainers.roles import Role
from trainers.trajectory import DoneReason


def test_pass_at_k_runs_over_powers_of_two_up_to_r() -> None:
    assert [pass_at_ks(r) for r in (1, 3, 4, 20)] == [[1], [1, 2, 3], [1, 2, 4], [1, 2, 4, 8, 16, 20]]


def test_the_flags_become_a_chat_policy_config() -> None:
    overrides = eval_overrides(
        "toy_terminal",
        "Qwen/Qwen3-8B",
        rollouts=3,
        base_url="http://127.0.0.1:9/v1",
        api_key_env="",
        splits=["heldout"],
    )
    config = load_config(None, overrides)
    assert (config.policy.type, config.policy.model, config.policy.base_url) == (
        "chat",
        "Qwen/Qwen3-8B",
        "http://127.0.0.1:9/v1",
    )
    assert config.policy.api_key_env is None  # '' sends no key
    assert config.rollout.episode.max_context_tokens == EVAL_CONTEXT_BYTES
    assert (config.rollout.group_size, config.eval.k, config.env.eval_splits) == (3, [1, 2, 3], ["heldout"])
    assert (config.run.name, config.rollout.renderer, config.ray.num_workers) == (
        "eval-toy_terminal-Qwen-Qwen3-8B-at-127.0.0.1-9",
        "messages",
        1,
    )


def test_without_a_base_url_openai_base_url_names_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    def configured() -> RunConfig:
        flags = eval_overrides("toy_terminal", "m", rollouts=1, base_url=None, api_key_env=None, splits=[])
        return load_config(None, flags)

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    defaults = configured()
    assert defaults.policy.api_key_env == "OPENAI_API_KEY" and defaults.env.eval_splits == ["train", "heldout"]
    assert defaults.policy.base_url == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    assert configured().policy.base_url == "http://127.0.0.1:8000/v1"
    flag = eval_overrides("toy_terminal", "m", rollouts=1, base_url="http://h:1/v1", api_key_env=None, splits=[])
    assert load_config(None, flag).policy.base_url == "http://h:1/v1"  # the flag wins


def test_each_model_and_endpoint_is_an_evaluation_of_its_own() -> None:
    """A changed --base-url used to be refused as a resume of another server's run."""
    names = {
        run_name("toy_terminal", "Qwen/Qwen3-8B", url)
        for url in (None, "https://api.openai.com/v1", "http://localhost:8000/v1", "http://localhost:8001/v1")
    } | {run_name("toy_terminal", "Qwen/Qwen3-8B", "https://user:secret@gpu-box/openai/v1/")}
    assert names == {
        "eval-toy_terminal-Qwen-Qwen3-8B",  # OpenAI's own server, named or not
        "eval-toy_terminal-Qwen-Qwen3-8B-at-localhost-8000",
        "eval-toy_terminal-Qwen-Qwen3-8B-at-localhost-8001",
        "eval-toy_terminal-Qwen-Qwen3-8B-at-gpu-box-openai",  # no credentials in a directory name
    }


def test_a_rerun_says_what_it_reuses_before_running(tmp_path: Path) -> None:
    config = load_config(None, [f"run.dir={tmp_path}", "policy.type=chat", "policy.model=m"])
    run_dir = prepare_run_dir(config, "eval")
    plan = first_tasks(plan_evaluation(config, run_dir), 2)
    assert reuse_notice(plan, run_dir) is None  # nothing recorded: nothing to say
    plan.ledger.append(group(plan.groups[0].group_id, size=4))
    partly = first_tasks(plan_evaluation(config, run_dir), 2)
    assert reuse_notice(partly, run_dir) == (
        f"reusing 4 of 16 episodes already in {run_dir} (same model, endpoint and settings): running the other 12. "
        "--set run.resume=false evaluates afresh"
    )
    for g in plan.groups[1:]:
        plan.ledger.append(group(g.group_id, size=4))
    done = first_tasks(plan_evaluation(config, run_dir), 2)
    notice = reuse_notice(done, run_dir)
    assert notice is not None and notice.startswith("reusing all 16 episodes") and "nothing is run again" in notice


def test_first_tasks_keeps_n_per_split_in_the_evaluations_order(tmp_path: Path) -> None:
    config = load_config(None, [f"run.dir={tmp_path}", "policy.type=chat", "policy.model=m"])
    plan = plan_evaluation(config, prepare_run_dir(config, "eval"))
    cut = first_tasks(plan, 2)
    for split in ("train", "heldout"):
        assert [g for g in cut.groups if g.split == split] == [g for g in plan.groups if g.split == split][:2]
    assert cut.todo == cut.groups and cut.todo_episodes == 4 * 4
    assert first_tasks(plan, None) is plan


def test_episodes_are_written_as_text(tmp_path: Path) -> None:
    call = {"id": "call_0", "type": "function", "function": {"name": "submit", "arguments": '{"answer": "a.txt"}'}}
    messages = [
        {"role": "user", "content": "Find it."},
        {"role": "assistant", "content": "ls"},
        {"role": "user", "content": "a.txt\n"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "content": "correct"},
    ]
    episode = trajectory(
        "g", 1, task_id="t", split="heldout", token_ids=[1], roles=[int(Role.PROMPT)], logprobs=[0.0], reward=1.0,
        done=DoneReason.FINISHED, turns=2, metadata={"messages": messages, "untrainable": "text only"},
    )  # fmt: skip
    path = tmp_path / "episodes.jsonl"
    write_episodes(path, [episode])
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert record == {
        "split": "heldout",
        "task_id": "t",
        "group_id": "g",
        "sample_index": 1,
        "prompt": "Find it.",
        "actions": ["ls", 'submit({"answer": "a.txt"})'],  # a tool call, as the call
        "observations": ["a.txt\n", "correct"],
        "reward": 1.0,
        "done_reason": "finished",
        "turns": 2,
        "untrainable": "text only",
        "messages": messages,
    }
    assert [p.name for p in tmp_path.iterdir()] == ["episodes.jsonl"]
