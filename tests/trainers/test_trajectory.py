"""Trajectory construction: the validating constructor and the transcript path agree."""

from __future__ import annotations

import pydantic
import pytest

from trainers.roles import Role
from trainers.trajectory import DoneReason, Trajectory

FIELDS = {
    "run_id": "r",
    "group_id": "g",
    "sample_index": 1,
    "task_id": "t",
    "env": "toy_terminal",
    "split": "train",
    "seed": 7,
    "policy_version": 3,
    "reward": 1.0,
    "done_reason": DoneReason.FINISHED,
    "turns": 2,
    "metadata": {"sandbox_retries": 0},
}


def _tokens() -> tuple[list[int], list[int], list[float]]:
    return [1, 72, 105, 10], [int(Role.PROMPT)] * 2 + [int(Role.ACTION)] * 2, [0.0, 0.0, -0.5, -0.25]


def test_from_transcript_equals_the_validated_trajectory_and_keeps_the_lists():
    ids, roles, logprobs = _tokens()
    built = Trajectory.from_transcript(ids, roles, logprobs, **FIELDS)
    validated = Trajectory(token_ids=ids, roles=roles, logprobs=logprobs, **FIELDS)
    assert built == validated and built.model_dump() == validated.model_dump()
    assert built.token_ids is ids and built.roles is roles and built.logprobs is logprobs  # not copied
    assert built.count(Role.ACTION) == 2
    assert Trajectory.model_validate_json(built.model_dump_json()) == validated


@pytest.mark.parametrize("short", ["roles", "logprobs"])
def test_from_transcript_refuses_misaligned_lists(short):
    ids, roles, logprobs = _tokens()
    lists = {"token_ids": ids, "roles": roles, "logprobs": logprobs}
    lists[short] = lists[short][:-1]
    with pytest.raises(ValueError, match=r"token_ids \(4\).*must align"):
        Trajectory.from_transcript(lists["token_ids"], lists["roles"], lists["logprobs"], **FIELDS)
    with pytest.raises(pydantic.ValidationError, match="must align"):
        Trajectory(**lists, **FIELDS)


def test_from_transcript_still_validates_the_other_fields():
    with pytest.raises(pydantic.ValidationError, match="sample_index"):
        Trajectory.from_transcript(*_tokens(), **{**FIELDS, "sample_index": -1})
    with pytest.raises(pydantic.ValidationError, match="done_reason"):
        Trajectory.from_transcript(*_tokens(), **{**FIELDS, "done_reason": "vanished"})
