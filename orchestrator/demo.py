"""One sandboxed episode driven by a task's oracle, printed turn by turn.

The smallest complete path through the platform: a provider starts a sandbox, the
client resets it with a task, the oracle's actions go through the task suite's parser,
and every observation is rendered as the policy would see it.
"""

from __future__ import annotations

from collections.abc import Callable

from envs.authoring.registry import load_suite
from envs.authoring.tasks import ShellSuite, require_oracles
from hillclimb.errors import TargetNotFoundError
from hillclimb.splits import Split
from providers.contract import SandboxProvider, SandboxSpec


async def oracle_episode(
    provider: SandboxProvider, env: str, task_id: str | None, split: Split, show: Callable[[str, str], None]
) -> float:
    """Run one task's oracle in a fresh sandbox; `show(kind, text)` gets each turn (an action as
    kind `command` in a shell environment, else `action`). Returns the reward."""
    suite = load_suite(env)
    tasks = suite.tasks(split)
    task = next((t for t in tasks if t.id == task_id), None) if task_id else tasks[0]
    if task is None:
        raise TargetNotFoundError(f"no task {task_id!r} in {env}'s {split} split; it has {[t.id for t in tasks]}")
    require_oracles([task], "`hillclimb env demo`", "pick a task that has one with --task")
    sandbox = await provider.create(SandboxSpec(env=env, run_id="demo", max_sessions=1, ttl_s=600))
    try:
        await provider.wait_ready(sandbox)
        show("sandbox", f"{sandbox.id} ({provider.name}) at {sandbox.endpoint}")
        async with sandbox.handle.client() as client:
            result = await client.reset(seed=0, task_id=task.id)
            show("task", f"[{task.id}] {task.prompt}")
            for text in task.oracle:
                result = await client.step(suite.parse_action(text))
                show("command" if isinstance(suite, ShellSuite) else "action", text)
                rendered = suite.render_observation(result.observation)
                if rendered:
                    show("observation", rendered)
                if result.done:
                    break
        reward = float(result.reward or 0.0)
        show("reward", f"{reward:g} (done={result.done})")
        return reward
    finally:
        await provider.destroy(sandbox.id)
