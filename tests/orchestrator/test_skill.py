"""A skill document: read as UTF-8 text or refused naming why, placed in the agent's system message
by every renderer, and taken by `hillclimb train --skill` and `hillclimb eval --skill`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from envs.authoring.registry import load_suite
from envs.builtin.toy_terminal.tasks import TASKS, ToyTerminalSuite
from hillclimb.config import load_config
from hillclimb.skill import SkillFileError, read_skill, system_text, with_skill
from orchestrator.chat_eval import eval_overrides, run_name
from orchestrator.schedule import round_of_groups
from orchestrator.workers import RolloutWorker, make_renderer
from tests.orchestrator.helpers import SlowScriptedPolicy
from tests.orchestrator.test_chat_rollout import SystemPromptSuite
from tests.orchestrator.tokenizers_for_tests import build_tokenizer
from trainers.roles import Role
from trainers.tokenizer import ByteTokenizer

REPO = Path(__file__).parents[2]
SKILL = "# Skill\nRead the file before you answer.\n"


def test_a_skill_file_is_utf8_text_or_refused_naming_the_problem(tmp_path: Path) -> None:
    good = tmp_path / "skill.md"
    good.write_text("Café: `grep -c` counts.\n")
    assert read_skill(good) == "Café: `grep -c` counts.\n"
    latin1 = tmp_path / "latin1.md"
    latin1.write_bytes("Caf\xe9".encode("latin-1"))
    with pytest.raises(SkillFileError, match=r"latin1\.md is not UTF-8 text \(byte 3 is 0xe9\)"):
        read_skill(latin1)
    binary = tmp_path / "binary.md"
    binary.write_bytes(b"ok\x00\x01")
    with pytest.raises(SkillFileError, match=r"control character '\\x00' at 2"):
        read_skill(binary)
    with pytest.raises(SkillFileError, match="No such file"):
        read_skill(tmp_path / "missing.md")
    huge = tmp_path / "huge.md"
    huge.write_text("x" * 70000)
    with pytest.raises(SkillFileError, match="70000 characters, over the cap of 65536"):
        read_skill(huge)


def test_the_system_message_is_the_environments_prompt_then_the_skill() -> None:
    assert system_text("Be brief.", SKILL) == f"Be brief.\n\n{SKILL}"
    assert system_text(None, SKILL) == SKILL
    assert system_text("Be brief.", None) == "Be brief."
    assert system_text(None, "") is None
    renderer = make_renderer("messages", ByteTokenizer(), SystemPromptSuite(TASKS), SKILL)
    assert renderer.start("Go.").messages[0] == {"role": "system", "content": f"Be brief.\n\n{SKILL}"}


def test_the_plain_renderer_puts_the_skill_before_the_task_as_prompt_tokens() -> None:
    tokenizer = ByteTokenizer()
    transcript = make_renderer("plain", tokenizer, ToyTerminalSuite(TASKS), SKILL).start("Count the lines.")
    prompt = [i for i, role in zip(transcript.ids, transcript.roles, strict=True) if role == Role.PROMPT]
    assert tokenizer.decode(prompt) == f"{SKILL}\nCount the lines.\n"
    bare = make_renderer("plain", tokenizer, ToyTerminalSuite(TASKS)).start("Count the lines.")
    assert len(transcript) > len(bare)


def test_the_chat_template_renderer_opens_with_the_skill_as_its_system_message() -> None:
    tokenizer = build_tokenizer("chatml")
    transcript = make_renderer("chat", tokenizer, ToyTerminalSuite(TASKS), SKILL).start("Count the lines.")
    text = tokenizer.decode(list(transcript.ids))
    assert text.startswith(f"<|im_start|>system\n{SKILL}")
    assert text.index(SKILL) < text.index("Count the lines.")


def test_a_skill_is_a_config_key_that_validates(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "rollout_toy.yaml", [])
    assert with_skill(cfg, SKILL).rollout.skill == SKILL
    assert with_skill(with_skill(cfg, SKILL), None).rollout.skill is None


def test_an_evaluation_with_a_skill_is_its_own_run() -> None:
    plain = run_name("toy_terminal", "m", "http://h:1/v1")
    skilled = run_name("toy_terminal", "m", "http://h:1/v1", SKILL)
    assert skilled.startswith(plain + "-skill-") and skilled != run_name("toy_terminal", "m", "http://h:1/v1", "other")
    flags = eval_overrides("toy_terminal", "m", rollouts=1, base_url=None, api_key_env=None, splits=[], skill=SKILL)
    assert any(flag.startswith("run.name=") and "-skill-" in flag for flag in flags)


@pytest.mark.parametrize(
    "command", [["train", "configs/echo_toy.yaml"], ["eval", "toy_terminal", "-m", "m", "--base-url", "http://h:1/v1"]]
)
def test_train_and_eval_take_a_skill_file(tmp_path: Path, command: list[str]) -> None:
    skill = tmp_path / "best_skill.md"
    skill.write_text(SKILL)
    cli = [sys.executable, "-m", "orchestrator", *command, "--skill", str(skill), "--dry-run"]
    done = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rollout"]["skill"] == SKILL
    skill.write_bytes(b"\xff\xfe")
    refused = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "SkillFileError" in refused.stderr and "not UTF-8 text" in refused.stderr


@pytest.mark.root
async def test_a_rollout_worker_plays_its_episodes_under_the_configured_skill(
    sandbox_root: Path, tmp_path: Path
) -> None:
    config = load_config(
        None, [f"run.dir={tmp_path}", "rollout.group_size=1", f"provider.options={{root: {sandbox_root}}}"]
    )
    worker = RolloutWorker(with_skill(config, SKILL), worker_index=0, policy=SlowScriptedPolicy(0.0))
    group = round_of_groups(load_suite("toy_terminal"), "train", run_seed=0, group_size=1, round_index=0)[0]
    try:
        [episode] = (await worker.run_group(group)).trajectories
    finally:
        await worker.close()
    prompt = [i for i, role in zip(episode.token_ids, episode.roles, strict=True) if role == Role.PROMPT]
    assert ByteTokenizer().decode(prompt) == f"{SKILL}\n{group.task.prompt.rstrip()}\n" and episode.reward == 1.0
