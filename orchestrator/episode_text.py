"""An episode as text: its tokens cut into runs of one role, each run decoded once.

    token ids  ─┐                      [(PROMPT, "Find the error in app.log\\n"),
    roles      ─┼─► role_segments ─►    (SCAFFOLD, "$ "), (ACTION, "cat app.log\\n"),
    tokenizer  ─┘                       (ENV, "ERROR disk full\\n"), ...]
                          │
                          ├─► tagged_text: <ACTION>cat app.log\\n</ACTION> (no colour: files, pipes)
                          ├─► coloured_text: a rich Text, one style per role (a terminal)
                          └─► decoded_episode_record: prompt, actions, observations, reward (tables, JSON)

Contiguous tokens of one role are decoded together, so a multi-byte character or a BPE word
split over several tokens reads whole; a role boundary is also a decoding boundary.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from trainers.roles import Role
from trainers.tokenizer import Tokenizer

if TYPE_CHECKING:
    from rich.text import Text

    from trainers.trajectory import Trajectory

Segment = tuple[Role, str]

ROLE_STYLES: dict[Role, str] = {
    Role.PROMPT: "bold cyan",
    Role.ACTION: "bold green",
    Role.ENV: "yellow",
    Role.SCAFFOLD: "dim",
    Role.WARNING: "bold white on red",
}
"""One distinct style per role; a test checks that no two roles share one."""


def role_segments(token_ids: list[int], roles: list[int], tokenizer: Tokenizer) -> list[Segment]:
    """Runs of same-role tokens, each decoded as one piece; runs that decode to nothing (a special
    token the tokenizer does not print) are left out."""
    if len(token_ids) != len(roles):
        raise ValueError(f"{len(token_ids)} token ids but {len(roles)} roles")
    segments = []
    pairs = zip(token_ids, roles, strict=True)
    for role, run in itertools.groupby(pairs, key=lambda pair: pair[1]):
        text = tokenizer.decode([token for token, _ in run])
        if text:
            segments.append((Role(role), text))
    return segments


def tagged_text(segments: list[Segment]) -> str:
    """Plain text with each run inside `<ROLE>…</ROLE>`: for files, pipes and `--plain`."""
    return "".join(f"<{role.name}>{text}</{role.name}>" for role, text in segments)


def coloured_text(segments: list[Segment]) -> Text:
    """A rich Text with each run in its role's style."""
    from rich.text import Text

    text = Text()
    for role, piece in segments:
        text.append(piece, style=ROLE_STYLES[role])
    return text


def legend() -> Text:
    """Each role's name in its own style, for the top of a coloured episode."""
    from rich.text import Text

    return Text("  ").join(Text(role.name, style=ROLE_STYLES[role]) for role in Role)


def episode_facts(trajectory: Trajectory) -> dict[str, Any]:
    """Which episode it was and how it ended: what every episode record starts with."""
    return {
        "task_id": trajectory.task_id,
        "split": trajectory.split,
        "group_id": trajectory.group_id,
        "sample_index": trajectory.sample_index,
        "reward": trajectory.reward,
        "done_reason": trajectory.done_reason.value,
        "turns": trajectory.turns,
    }


def decoded_episode_record(trajectory: Trajectory, tokenizer: Tokenizer) -> dict[str, Any]:
    """What happened in an episode, as text: the prompt, each action, each observation, the reward."""
    segments = role_segments(trajectory.token_ids, trajectory.roles, tokenizer)
    return {
        **episode_facts(trajectory),
        "prompt": "".join(text for role, text in segments if role == Role.PROMPT),
        "actions": [text for role, text in segments if role == Role.ACTION],
        "observations": [text for role, text in segments if role == Role.ENV],
        "warnings": [text for role, text in segments if role == Role.WARNING],
        "text": tagged_text(segments),
    }
