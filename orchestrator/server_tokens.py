"""A chat-API episode's tokens: the server's own ids where it returned them, else the text's
bytes marked untrainable.

    turn 0: prompt_ids ──────────────────────────── PROMPT   completion ─ ACTION (log-probs)
    turn 1: prompt_ids = turn 0's prompt + completion ─┘ + tail ─ SCAFFOLD   completion ─ ACTION
    ...

The server renders the whole conversation anew each turn. Its ids are the policy's own only if
each turn's prompt starts with the previous prompt and completion exactly as sampled (an
append-only template, no re-tokenization across turn boundaries); `stitch` checks that and
says where it fails. A tail holds the observation inside the server's template markup, which
cannot be told apart without its tokenizer, so it is SCAFFOLD: GRPO trains the actions, ECHO
gets no ENV tokens from a chat API. The last observation, never sent, is not in the ids.
"""

from __future__ import annotations

from orchestrator.render import Transcript
from trainers.policy.base import ServerTokens
from trainers.roles import Role

__all__ = ["chat_episode_tokens", "stitch"]

TEXT_ONLY = (
    "the chat API returned text only, so these ids are the text's bytes, not the model's tokens; "
    "set policy.return_token_ids=true with a server that returns them (vLLM) to train on its episodes"
)


def stitch(turns: list[ServerTokens]) -> Transcript | str:
    """The episode in the server's ids, or why the turns do not chain up."""
    out = Transcript()
    for n, turn in enumerate(turns):
        head = tuple(turn.prompt_ids[: len(out.ids)])
        if head != tuple(out.ids):  # a shorter prompt differs too: its head is short
            at = next((i for i, (a, b) in enumerate(zip(head, out.ids, strict=False)) if a != b), len(head))
            return (
                f"turn {n}: the server's prompt differs from the earlier turns' ids at token {at}: its chat "
                "template rewrites history or re-tokenized across a turn boundary, so no ids are the policy's own"
            )
        out.extend(turn.prompt_ids[len(out.ids) :], Role.PROMPT if n == 0 else Role.SCAFFOLD)
        out.extend(turn.ids, Role.ACTION, turn.logprobs)
    return out


def chat_episode_tokens(transcript: Transcript, turns: list[ServerTokens | None]) -> tuple[Transcript, str | None]:
    """The ids a trajectory of a chat-API episode keeps, and why it is untrainable (None: it is not)."""
    exact = [t for t in turns if t is not None]
    if not turns or len(exact) < len(turns):
        return transcript, TEXT_ONLY
    stitched = stitch(exact)
    if isinstance(stitched, str):
        return transcript, stitched
    return stitched, None
