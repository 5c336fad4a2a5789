"""What `hillclimb eval` adds to an evaluation run: a chat policy's config from a few flags, a
cap on tasks per split, and every episode's text in `episodes.jsonl`.

    ENV -m MODEL -n N -r R ─► eval_overrides ─► RunConfig (policy.type chat, group_size R, pass@k ≤ R)
    plan_evaluation ─► first_tasks(plan, N) ─► evaluate ─► the ledger ─► write_episodes ─► episodes.jsonl

The task order per split is the evaluation's own seeded shuffle, so `-n 5` then `-n 10` on one
run directory resumes the first five and runs five more.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hillclimb.config.policy import ChatPolicyConfig
from hillclimb.skill import skill_sha
from orchestrator.episode_text import episode_facts
from orchestrator.evaluate import EvalPlan
from trainers.trajectory import Trajectory

__all__ = [
    "EVAL_CONTEXT_BYTES",
    "chat_episode_record",
    "eval_overrides",
    "first_tasks",
    "pass_at_ks",
    "reuse_notice",
    "run_name",
    "write_episodes",
]

EVAL_CONTEXT_BYTES = 65536


def pass_at_ks(rollouts: int) -> list[int]:
    """1, 2, 4, ... up to `rollouts`, and `rollouts` itself."""
    ks = [k for k in (2**i for i in range(rollouts.bit_length())) if k <= rollouts]
    return sorted({*ks, rollouts})


def eval_overrides(
    env: str,
    model: str,
    *,
    rollouts: int,
    base_url: str | None,
    api_key_env: str | None,
    splits: list[str],
    skill: str | None = None,
) -> list[str]:
    """`--set` overrides for the flags; the user's own `--set`s go after these and win. Without
    `base_url`, $OPENAI_BASE_URL names the server, as it does for OpenAI's own clients."""
    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    overrides = [
        f"env.name={env}",
        "policy.type=chat",
        f"policy.model={json.dumps(model)}",
        f"rollout.group_size={rollouts}",
        f"eval.k={pass_at_ks(rollouts)}",
        f"run.name={json.dumps(run_name(env, model, base_url, skill))}",
        "ray.num_workers=1",  # one worker, so policy.max_concurrency bounds the whole run
        # The chat policy's transcript counts UTF-8 bytes, not tokens (~4 a token): 2048 would end
        # episodes at a few hundred tokens; the server refuses what exceeds its own context.
        f"rollout.episode.max_context_tokens={EVAL_CONTEXT_BYTES}",
    ]
    if base_url is not None:
        overrides.append(f"policy.base_url={json.dumps(base_url)}")
    if api_key_env is not None:
        overrides.append(f"policy.api_key_env={json.dumps(api_key_env) if api_key_env else 'null'}")
    if splits:
        overrides.append(f"env.eval_splits={json.dumps(splits)}")
    return overrides


def run_name(env: str, model: str, base_url: str | None, skill: str | None = None) -> str:
    """`eval-ENV-MODEL`, `-at-HOST[-PORT][-PATH]` for a server other than OpenAI's and
    `-skill-SHA` with a skill: a new model, endpoint or skill is a new evaluation, in a run
    directory of its own, never a resume."""
    name = f"eval-{env}-{model}"
    if base_url is not None and base_url.rstrip("/") != ChatPolicyConfig.model_fields["base_url"].default:
        url = urlsplit(base_url)  # host and port only from the netloc: never a user:password@ in it
        port = f"-{url.port}" if url.port else ""
        name += f"-at-{url.hostname}{port}{url.path.rstrip('/').removesuffix('/v1')}"
    if skill is not None:
        name += f"-skill-{skill_sha(skill)}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def reuse_notice(plan: EvalPlan, run_dir: Path) -> str | None:
    """What a rerun takes from the run directory instead of running it again, said before it runs."""
    if not plan.resumed_episodes:
        return None
    total = plan.resumed_episodes + plan.todo_episodes
    reused = f"{plan.resumed_episodes} of {total} episodes" if plan.todo_episodes else f"all {total} episodes"
    then = f"running the other {plan.todo_episodes}" if plan.todo_episodes else "nothing is run again"
    return (
        f"reusing {reused} already in {run_dir} (same model, endpoint and settings): "
        f"{then}. --set run.resume=false evaluates afresh"
    )


def first_tasks(plan: EvalPlan, per_split: int | None) -> EvalPlan:
    """The plan cut to its first `per_split` groups (tasks) of each split; None keeps all."""
    if per_split is None:
        return plan
    seen: dict[str, int] = {}
    kept = []
    for group in plan.groups:
        seen[group.split] = seen.get(group.split, 0) + 1
        if seen[group.split] <= per_split:
            kept.append(group)
    ids = {g.group_id for g in kept}
    return EvalPlan(plan.ledger, kept, [g for g in plan.todo if g.group_id in ids])


def chat_episode_record(trajectory: Trajectory) -> dict[str, Any]:
    """One episode as the model saw it: prompt, actions, observations (harness warnings among
    them, as sent), reward and why it ended."""
    messages = trajectory.metadata.get("messages", [])
    said = [m["content"] for m in messages if m["role"] in ("user", "tool")]  # a tool's result answers a call
    return {
        **episode_facts(trajectory),
        "prompt": said[0] if said else None,
        "actions": [_action(m) for m in messages if m["role"] == "assistant"],
        "observations": said[1:],
        "untrainable": trajectory.untrainable,
        "messages": messages,
    }


def _action(message: dict[str, Any]) -> str:
    """An assistant message as one line: its text, or the tool it called, `name(arguments)`."""
    calls = message.get("tool_calls")
    if not calls:
        return message["content"]
    return "".join(f"{c['function']['name']}({c['function']['arguments']})" for c in calls)


def write_episodes(path: Path, trajectories: list[Trajectory]) -> None:
    """One JSON line per episode, written whole (a temp file renamed into place)."""
    partial = path.with_suffix(".partial")
    with partial.open("w") as f:
        for t in trajectories:
            f.write(json.dumps(chat_episode_record(t)) + "\n")
    partial.replace(path)
