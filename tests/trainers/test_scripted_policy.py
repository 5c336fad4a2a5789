"""ScriptedPolicy replays the toy_terminal oracles, turn by turn, as the rollout loop asks for them."""

from __future__ import annotations

import pytest

from envs.authoring.registry import load_suite
from hillclimb.config.rollout import SamplingParams
from orchestrator.render import PlainTextRenderer
from trainers.policy.base import EpisodeInfo, GenerateRequest, Policy
from trainers.policy.scripted import ScriptedPolicy
from trainers.tokenizer import ByteTokenizer

SUITE = load_suite("toy_terminal")
TASKS = [task for split in ("train", "heldout") for task in SUITE.tasks(split)]
STOPS = PlainTextRenderer(
    ByteTokenizer(), action_prompt="$ "
).stop_token_ids  # (newline, eos): what the rollout loop passes


def _request(task_id: str, turn: int) -> GenerateRequest:
    # A prompt the policy ignores: only the episode info drives it.
    return GenerateRequest(prompt_ids=(1, 2, 3), episode=EpisodeInfo(env="toy_terminal", task_id=task_id, turn=turn))


async def test_every_turn_of_every_task_gets_its_oracle_action_and_the_stop_token() -> None:
    policy = ScriptedPolicy()
    assert isinstance(policy, Policy)
    assert len(TASKS) > 10 and {task.split for task in TASKS} == {"train", "heldout"}
    sampling = SamplingParams(stop_token_ids=STOPS)
    for task in TASKS:
        turns = range(len(task.oracle))
        generations = await policy.generate([_request(task.id, turn) for turn in turns], sampling)
        for turn, generation in zip(turns, generations, strict=True):
            text = task.oracle[turn]
            assert generation.token_ids == (*text.encode(), STOPS[0])
            assert generation.logprobs == (0.0,) * len(generation.token_ids)
            assert (generation.finish_reason, generation.version) == ("stop", 0)
            SUITE.parse_action(policy.tokenizer.decode(generation.token_ids[:-1]))  # a valid action


async def test_past_the_oracle_it_repeats_the_last_action_and_without_stops_appends_none() -> None:
    task = TASKS[0]
    (generation,) = await ScriptedPolicy().generate([_request(task.id, len(task.oracle) + 3)], SamplingParams())
    assert generation.token_ids == tuple(task.oracle[-1].encode())
    assert task.oracle[-1].startswith("answer:")


async def test_update_weights_only_moves_the_version() -> None:
    policy = ScriptedPolicy()
    await policy.update_weights(4, {})
    (generation,) = await policy.generate([_request(TASKS[0].id, 0)], SamplingParams(stop_token_ids=STOPS))
    assert (policy.version, generation.version) == (4, 4)


async def test_a_request_without_episode_info_is_refused() -> None:
    with pytest.raises(ValueError, match="needs each request's EpisodeInfo"):
        await ScriptedPolicy().generate([GenerateRequest(prompt_ids=(1,))], SamplingParams())
