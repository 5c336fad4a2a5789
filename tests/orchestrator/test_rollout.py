"""The episode loop on real local sandboxes: token provenance, exact ids, every done reason."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from envs.authoring.registry import load_suite
from envs.authoring.tasks import Task, action_prompt
from envs.builtin.toy_terminal.fs import execute
from hillclimb.errors import AuthenticationError, MessageValidationError
from hillclimb.provider_errors import BadSpecError
from orchestrator.pool import PoolConfig, SandboxPool
from orchestrator.render import PlainTextRenderer
from orchestrator.rollout import EpisodeConfig, EpisodeRunner, EpisodeSpec, SandboxesFailingError
from providers.contract import SandboxSpec
from providers.local import LocalProvider
from tests.factories import episode_spec
from tests.orchestrator.helpers import SlowScriptedPolicy
from trainers.policy.base import GenerateRequest, Generation, SamplingParams
from trainers.policy.scripted import ScriptedPolicy
from trainers.roles import Role
from trainers.tokenizer import ByteTokenizer
from trainers.trajectory import DoneReason, Trajectory

pytestmark = pytest.mark.root

TOKENIZER = ByteTokenizer()


def _spec(task: Task, env: str = "toy_terminal", sample: int = 0) -> EpisodeSpec:
    return episode_spec(task, env=env, group_id=f"g-{task.id}", sample=sample, seed=7 + sample)


async def _runner(provider: LocalProvider, env: str, policy: Any, **episode: Any) -> EpisodeRunner:
    shared = env != "terminal"
    pool = SandboxPool(provider, SandboxSpec(env=env, run_id="t"), PoolConfig(create_retry_delay_s=0.01), shared=shared)
    suite = load_suite("toy_terminal" if env.startswith("tests.") else env)
    return EpisodeRunner(
        pool,
        policy,
        PlainTextRenderer(TOKENIZER, TOKENIZER.bos_token_id, action_prompt=action_prompt(suite)),
        suite,
        EpisodeConfig(**episode),
    )


@pytest.fixture
async def toy(local_provider: LocalProvider) -> AsyncIterator[EpisodeRunner]:
    runner = await _runner(local_provider, "toy_terminal", ScriptedPolicy())
    yield runner
    await runner.pool.close()


def _runs(t: Trajectory) -> list[tuple[Role, str]]:
    """The transcript as (role, text) runs."""
    runs: list[tuple[Role, list[int]]] = []
    for token, role in zip(t.token_ids, t.roles, strict=True):
        if runs and runs[-1][0] == role:
            runs[-1][1].append(token)
        else:
            runs.append((Role(role), [token]))
    return [(role, TOKENIZER.decode(ids)) for role, ids in runs]


async def test_oracle_episode_is_token_exact_with_roles(toy: EpisodeRunner) -> None:
    task = next(t for t in load_suite("toy_terminal").tasks("train") if len(t.oracle) >= 2)
    trajectory = await toy.run(_spec(task))
    assert trajectory.done_reason is DoneReason.FINISHED and trajectory.reward == 1.0
    assert trajectory.turns == len(task.oracle) and trajectory.parse_errors == 0
    runs = _runs(trajectory)
    assert runs[0] == (Role.SCAFFOLD, "") and runs[1] == (Role.PROMPT, task.prompt.rstrip("\n") + "\n")
    actions = [text for role, text in runs if role is Role.ACTION]
    assert actions == [command + "\n" for command in task.oracle]
    # Every ENV run is exactly what the shell printed, bytes for bytes.
    first_output = next(text for role, text in runs if role is Role.ENV)

    assert first_output == execute(task.oracle[0])
    # Log-probs sit on ACTION tokens only (the oracle samples with probability 1: log-prob 0).
    assert all(lp == 0.0 for lp in trajectory.logprobs)
    assert trajectory.count(Role.ACTION) == sum(len(a) for a in actions)


class _OddTokens(ScriptedPolicy):
    """The oracle's text, but sampled as ids the tokenizer would never produce, with real log-probs."""

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        out = []
        for g in await super().generate(requests, sampling):
            ids = g.token_ids
            out.append(
                Generation(
                    token_ids=ids,
                    logprobs=tuple(-0.5 - i / 100 for i in range(len(ids))),
                    finish_reason="stop",
                    version=3,
                )
            )
        return out


async def test_sampled_ids_and_logprobs_go_in_verbatim(local_provider: LocalProvider) -> None:
    runner = await _runner(local_provider, "toy_terminal", _OddTokens())
    try:
        task = load_suite("toy_terminal").tasks("heldout")[0]
        trajectory = await runner.run(_spec(task))
    finally:
        await runner.pool.close()
    action_logprobs = [lp for lp, r in zip(trajectory.logprobs, trajectory.roles, strict=True) if r == Role.ACTION]
    expected = [lp for command in task.oracle for lp in (-0.5 - i / 100 for i in range(len(command) + 1))]
    assert action_logprobs == expected
    assert all(lp == 0.0 for lp, r in zip(trajectory.logprobs, trajectory.roles, strict=True) if r != Role.ACTION)
    assert trajectory.policy_version == 3


async def test_turn_limit_ends_with_step_limit(local_provider: LocalProvider) -> None:
    runner = await _runner(local_provider, "toy_terminal", ScriptedPolicy(), max_turns=1)
    try:
        task = next(t for t in load_suite("toy_terminal").tasks("train") if len(t.oracle) >= 2)
        trajectory = await runner.run(_spec(task))
    finally:
        await runner.pool.close()
    assert trajectory.done_reason is DoneReason.STEP_LIMIT and trajectory.reward == 0.0 and trajectory.turns == 1


class _Says(ScriptedPolicy):
    """Answers every request with the same text, whatever the task."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids = tuple(TOKENIZER.encode(text))

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        return [Generation(token_ids=self.ids, logprobs=(-1.0,) * len(self.ids), finish_reason="stop", version=0)]


async def test_unparseable_actions_become_warnings(local_provider: LocalProvider) -> None:
    runner = await _runner(local_provider, "toy_terminal", _Says("   \n"), max_turns=3)
    try:
        trajectory = await runner.run(_spec(load_suite("toy_terminal").tasks("train")[0]))
    finally:
        await runner.pool.close()
    assert trajectory.done_reason is DoneReason.STEP_LIMIT and trajectory.parse_errors == 3
    assert [
        text.startswith("[harness] invalid action") for role, text in _runs(trajectory) if role is Role.WARNING
    ] == [True] * 3


@pytest.mark.parametrize("policy", [_Says("ls\n"), _Says("   \n")], ids=["steps", "never-steps"])
async def test_a_task_the_environment_does_not_know_surfaces(local_provider: LocalProvider, policy: Any) -> None:
    """The reset goes out ahead of the first step; its refusal is a misconfigured task, not a
    policy mistake (not a WARNING) nor a sandbox fault (not retried) — even with no step."""
    known = load_suite("toy_terminal").tasks("train")[0]
    unknown = Task(id="no-such-task", split="train", prompt=known.prompt, oracle=known.oracle)
    runner = await _runner(local_provider, "toy_terminal", policy, max_turns=2)
    try:
        with pytest.raises(MessageValidationError, match="no-such-task") as refused:
            await runner.run(_spec(unknown))
        assert refused.value.request == "reset"
        assert (await runner.run(_spec(known))).done_reason in (DoneReason.FINISHED, DoneReason.STEP_LIMIT)
    finally:
        await runner.pool.close()


class _Broken(ScriptedPolicy):
    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        raise RuntimeError("engine exploded")


@pytest.mark.parametrize(
    ("policy", "episode", "reason"),
    [
        (_Broken(), {}, DoneReason.POLICY_ERROR),
        (SlowScriptedPolicy(5.0), {"policy_timeout_s": 0.2}, DoneReason.POLICY_ERROR),
        (SlowScriptedPolicy(0.3), {"episode_timeout_s": 0.5}, DoneReason.TIMEOUT),
    ],
)
async def test_policy_failures_are_recorded_with_their_reason(
    local_provider: LocalProvider, policy: Any, episode: dict[str, Any], reason: DoneReason
) -> None:
    runner = await _runner(local_provider, "toy_terminal", policy, **episode)
    try:
        task = next(t for t in load_suite("toy_terminal").tasks("train") if len(t.oracle) >= 2)
        trajectory = await asyncio.wait_for(runner.run(_spec(task)), 30)
    finally:
        await runner.pool.close()
    assert trajectory.done_reason is reason and trajectory.reward == 0.0
    assert trajectory.trainable == (
        reason is DoneReason.TIMEOUT
    )  # a slow agent's zero is signal; a broken engine's is not


class _KillsItsSandbox(ScriptedPolicy):
    """At the second turn of the first attempt of each episode seeded with one of `seeds`,
    SIGKILLs the sandbox the episode is running in."""

    def __init__(
        self, provider: LocalProvider, pool_ref: list[SandboxPool], seeds: frozenset[int] = frozenset({7})
    ) -> None:
        super().__init__()
        self.provider, self.pool_ref, self.seeds = provider, pool_ref, seeds
        self.killed: set[int] = set()

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        info = requests[0].episode
        if info is not None and info.turn == 1 and info.seed in self.seeds - self.killed:
            self.killed.add(info.seed)
            (slot,) = [s for s in self.pool_ref[0]._slots if s.leases]
            os.kill(self.provider._read_meta(self.provider.root / slot.sandbox.id)["pid"], signal.SIGKILL)
        return await super().generate(requests, sampling)

    async def update_weights(self, version: int, weights: Mapping[str, Any]) -> None:
        raise NotImplementedError


async def test_a_sandbox_killed_mid_episode_is_retried_on_a_fresh_one(local_provider: LocalProvider) -> None:
    pool_ref: list[SandboxPool] = []
    policy = _KillsItsSandbox(local_provider, pool_ref)
    runner = await _runner(local_provider, "terminal", policy, sandbox_retries=1)
    pool_ref.append(runner.pool)
    try:
        task = next(t for t in load_suite("terminal").tasks("train") if len(t.oracle) >= 2)
        trajectory = await runner.run(_spec(task, env="terminal"))
    finally:
        await runner.pool.close()
    assert policy.killed == {7}
    assert trajectory.done_reason is DoneReason.FINISHED and trajectory.reward == 1.0
    assert trajectory.metadata["sandbox_retries"] == 1
    # The transcript is the successful attempt's alone: one prompt, one pass through the oracle.
    assert trajectory.count(Role.PROMPT) == len(TOKENIZER.encode(task.prompt.rstrip("\n") + "\n"))


async def test_a_sandbox_that_keeps_dying_is_recorded_as_sandbox_error(
    local_provider: LocalProvider, caplog: pytest.LogCaptureFixture
) -> None:
    runner = await _runner(
        local_provider, "tests.orchestrator.faulty_envs:CrashOnStepEnv", ScriptedPolicy(), sandbox_retries=2
    )
    try:
        task = load_suite("toy_terminal").tasks("train")[0]
        with caplog.at_level("WARNING", logger="hillclimb.orchestrator.pool"):
            trajectories = await asyncio.gather(*(runner.run(_spec(task, sample=i)) for i in range(3)))
    finally:
        await runner.pool.close()
    assert [t.done_reason for t in trajectories] == [DoneReason.SANDBOX_ERROR] * 3
    assert all(t.metadata["sandbox_retries"] == 2 and not t.trainable for t in trajectories)
    # Why, kept with it: the connection lost as the server exits, or, reaching a sandbox that is
    # already dying (a loaded host's timing decides which), refused.
    dying = ("ConnectionLostError", "ConnectTimeoutError")
    assert all(t.metadata["error"].startswith(dying) for t in trajectories), [t.metadata for t in trajectories]
    # Each dead sandbox is reported with why its leases failed and how its server's log ended.
    reports = [r.getMessage() for r in caplog.records if "its server log ends" in r.getMessage()]
    assert reports and all(any(e in m for e in dying) and "exiting on purpose" in m for m in reports)


async def test_sandboxes_that_never_start_stop_the_run_with_their_error(local_provider: LocalProvider) -> None:
    runner = await _runner(
        local_provider,
        "tests.orchestrator.unservable_env:UnservableEnv",
        ScriptedPolicy(),
        sandbox_retries=1,
        max_sandbox_errors_in_a_row=3,
        sandbox_error_streak_s=2.0,
    )
    env, task = "tests.orchestrator.unservable_env:UnservableEnv", load_suite("toy_terminal").tasks("train")[0]
    try:
        first = await runner.run(_spec(task, env, sample=0))
        with pytest.raises(SandboxesFailingError) as stopped:
            async with asyncio.timeout(30):
                for i in itertools.count(1):  # 3 or more in a row, and for 2 s or more
                    ended = await runner.run(_spec(task, env, sample=i))
                    assert ended.done_reason is DoneReason.SANDBOX_ERROR
    finally:
        await runner.pool.close()
    assert first.done_reason is DoneReason.SANDBOX_ERROR  # one failure is recorded, not yet a stop
    message = str(stopped.value)
    n, lasted = map(int, re.search(r"(\d+) episodes in a row over (\d+) s", message).groups())  # type: ignore[union-attr]
    assert n >= 3 and lasted >= 2, message
    assert "found no working tests.orchestrator.unservable_env:UnservableEnv sandbox" in message
    assert "broken on purpose inside sandboxes" in message, message  # the sandbox's own error, not just "failed"
    said = (
        r"The sandbox's server stopped with `hillclimb\.errors\.TargetNotFoundError: "
        r"cannot import .* inside sandboxes`"
    )
    assert re.search(said, message) and "hillclimb env serve" in message, message


async def test_a_finished_episode_resets_the_count_of_sandbox_errors(local_provider: LocalProvider) -> None:
    pool_ref: list[SandboxPool] = []
    policy = _KillsItsSandbox(local_provider, pool_ref, seeds=frozenset({7, 9, 10}))  # samples 0, 2 and 3
    runner = await _runner(
        local_provider, "terminal", policy, sandbox_retries=0, max_sandbox_errors_in_a_row=2, sandbox_error_streak_s=0
    )
    pool_ref.append(runner.pool)
    task = next(t for t in load_suite("terminal").tasks("train") if len(t.oracle) >= 2)
    try:
        ended = [(await runner.run(_spec(task, env="terminal", sample=i))).done_reason for i in range(3)]
        with pytest.raises(SandboxesFailingError, match="2 episodes in a row"):
            await runner.run(_spec(task, env="terminal", sample=3))
    finally:
        await runner.pool.close()
    assert ended == [DoneReason.SANDBOX_ERROR, DoneReason.FINISHED, DoneReason.SANDBOX_ERROR]


async def test_an_environment_error_ends_the_episode_and_keeps_the_sandbox(
    local_provider: LocalProvider, caplog: pytest.LogCaptureFixture
) -> None:
    runner = await _runner(
        local_provider, "tests.orchestrator.faulty_envs:RaiseOnStepEnv", ScriptedPolicy(), sandbox_retries=2
    )
    try:
        task = load_suite("toy_terminal").tasks("train")[0]
        with caplog.at_level("WARNING"):
            first = await runner.run(_spec(task, sample=0))
            second = await runner.run(_spec(task, sample=1))
        sandboxes = [s.sandbox.id for s in runner.pool._slots]
    finally:
        await runner.pool.close()
    for trajectory in (first, second):
        assert trajectory.done_reason is DoneReason.ENV_ERROR and trajectory.reward == 0.0
        assert trajectory.metadata["sandbox_retries"] == 0 and not trajectory.trainable
        assert "disk is full" in trajectory.metadata["error"]
    assert len(sandboxes) == 1  # both episodes ran on the one sandbox: nothing was retired or re-created
    warnings = [r.getMessage() for r in caplog.records]
    assert any("the environment failed: ExecutionError" in m and "disk is full" in m for m in warnings), warnings
    assert not any("sandbox failed" in m or "its server log ends" in m for m in warnings), warnings


class _WrongTokenProvider(LocalProvider):
    """Real sandboxes, handed out with a token their servers never issued."""

    async def create(self, spec: SandboxSpec) -> Any:
        sandbox = await super().create(spec)
        return sandbox.model_copy(update={"token": SecretStr("not-the-token")})


async def test_a_refused_token_stops_the_run_instead_of_retrying(sandbox_root: Path) -> None:
    provider = _WrongTokenProvider(root=sandbox_root)
    runner = await _runner(provider, "toy_terminal", ScriptedPolicy(), sandbox_retries=3)
    try:
        with pytest.raises(AuthenticationError):
            await runner.run(_spec(load_suite("toy_terminal").tasks("train")[0]))
        assert len(runner.pool._slots) == 1  # the sandbox was not blamed, retired or replaced
    finally:
        await runner.pool.close()
        await provider.close()


async def test_a_provider_that_cannot_make_the_sandbox_stops_the_run(local_provider: LocalProvider) -> None:
    runner = await _runner(local_provider, "toy_terminal", ScriptedPolicy())
    runner.pool.spec = runner.pool.spec.model_copy(update={"image": "python:3.11-slim"})  # local runs no images
    try:
        with pytest.raises(BadSpecError, match="no container images"):
            await runner.run(_spec(load_suite("toy_terminal").tasks("train")[0]))
    finally:
        await runner.pool.close()


async def test_episodes_run_through_an_http_only_ingress(ingress_provider: Any) -> None:
    """The episode loop on sandboxes reached only by their handle: the HTTP session binding,
    TLS from a private CA, the ingress's own token (rotated mid-run) and the env token apart."""
    runner = await _runner(ingress_provider, "toy_terminal", ScriptedPolicy())
    tasks = load_suite("toy_terminal").tasks("train")[:4]
    try:
        first = await runner.run(_spec(tasks[0]))
        ingress_provider.ingress.rotate()
        rest = await asyncio.gather(*(runner.run(_spec(task)) for task in tasks[1:]))
    finally:
        await runner.pool.close()
    assert [(t.done_reason, t.reward) for t in (first, *rest)] == [(DoneReason.FINISHED, 1.0)] * 4
    routes = {route for route, _ in ingress_provider.ingress.forwarded}
    assert {"/health", "/reset", "/step"} <= routes and 401 not in ingress_provider.ingress.refused


@pytest.mark.docker
async def test_terminal_episodes_in_docker_sandboxes(docker_provider: Any) -> None:
    """The episode loop on the Docker provider: a real bash per episode, the reset sent ahead."""
    runner = await _runner(docker_provider, "terminal", ScriptedPolicy())
    tasks = load_suite("terminal").tasks("train")[:3]
    try:
        trajectories = await asyncio.gather(*(runner.run(_spec(task, env="terminal")) for task in tasks))
    finally:
        await runner.pool.close()
    assert [(t.done_reason, t.reward) for t in trajectories] == [(DoneReason.FINISHED, 1.0)] * 3
    assert all(t.turns == len(task.oracle) for t, task in zip(trajectories, tasks, strict=True))
