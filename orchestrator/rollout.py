"""One episode, token-exact: lease → reset → (render, generate, parse, step)* → Trajectory.

    lease a session ─► reset(seed, task) ─► transcript = PROMPT
      loop: policy.generate(transcript ids) ─► ACTION ids verbatim
            parse the action text ─► unparseable: WARNING, next turn
            env.step(action) ─► observation text tokenized once ─► ENV
      until done, the turn limit, the context budget or the deadline

Every episode ends with a `DoneReason`. What went wrong decides what happens next:
- the sandbox or its connection failed (transport faults): the lease is marked broken and
  the episode re-run on a fresh sandbox, up to `sandbox_retries` times (`sandbox_error`);
- the environment raised while its server lived on: the episode ends (`env_error`), and the
  sandbox goes back to the pool;
- the policy failed: the episode ends (`policy_error`);
- the token or the TLS setup was refused, or the provider cannot make sandboxes at all: no
  retry can mend that, so the error propagates and stops the run, saying what to fix;
- `max_sandbox_errors_in_a_row` episodes in a row ended in `sandbox_error`, over at least
  `sandbox_error_streak_s` (an environment that cannot start, an image without it; not a brief
  outage of the provider): the run stops with `SandboxesFailingError`, quoting the last failure,
  rather than record failures for ever.
Each recorded episode carries its reason, so the counts always add up.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from envs.authoring.tasks import ActionParseError, Task, TaskSuite, ToolCallSuite
from envs.client.base import BaseEnvClient
from hillclimb.config.rollout import EpisodeConfig, SamplingParams
from hillclimb.errors import Fault, HillclimbError, MessageValidationError, fault_of
from hillclimb.provider_errors import RetryableProviderError
from orchestrator.pool import LeaseTimeoutError, SandboxPool
from orchestrator.render import MessagesRenderer, Renderer, Transcript, chat_tool
from orchestrator.server_tokens import chat_episode_tokens
from trainers.policy.base import EpisodeInfo, GenerateRequest, Generation, Policy, ServerTokens
from trainers.trajectory import DoneReason, Trajectory

log = logging.getLogger("hillclimb.orchestrator.rollout")

MAX_ERROR_CHARS = 2000
"""Of a failed episode's error kept in its metadata."""


@dataclass(frozen=True)
class EpisodeSpec:
    """Which episode to run: the task, its split, the seed and its place in a GRPO group."""

    run_id: str
    env: str
    split: str
    task: Task
    group_id: str
    sample_index: int
    seed: int


@dataclass
class EpisodeTiming:
    """Where an episode's wall time went (for the orchestration-overhead benchmark)."""

    total_s: float = 0.0
    policy_s: float = 0.0
    env_s: float = 0.0
    steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class SandboxesFailingError(HillclimbError, RuntimeError):
    """Episode after episode found no working sandbox: nothing a further retry would mend."""


_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def env_start_hint(env: str, failure: str) -> str:
    """What to look at when sandboxes of `env` keep failing: the exception the sandbox's own server
    died with, if its log shows one, and what differs between a sandbox and `hillclimb env serve`."""
    lines = [line.strip() for line in failure.splitlines() if line.strip()]
    traceback = '  File "' in failure and lines and _EXCEPTION_LINE.match(lines[-1])  # a log tail may cut its head
    said = f"The sandbox's server stopped with `{lines[-1]}` (its log below). " if traceback else ""
    return (
        f"{said}Outside a sandbox `hillclimb env serve {env}` starts the environment as you; inside one it has "
        "a uid and working directory of its own, a read-only root, no network and, on Docker or Kubernetes, "
        "only the image's packages (`hillclimb image build --env`)"
    )


class _SandboxFailed(Exception):
    pass


class _PolicyFailed(Exception):
    pass


class _EnvFailed(Exception):
    pass


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from anything printable (run seed, group, sample, turn)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


@dataclass
class _Episode:
    spec: EpisodeSpec
    transcript: Transcript
    turns: int = 0
    parse_errors: int = 0
    reward: float = 0.0
    versions: list[int] = field(default_factory=list)
    server_turns: list[ServerTokens | None] = field(default_factory=list)
    """Per turn, the chat server's own ids (message-rendered episodes only)."""
    policy_s: float = 0.0
    usage: Counter[str] = field(default_factory=Counter)
    """Tokens the policy's server reported billing, summed over turns (chat APIs)."""


class EpisodeRunner:
    """Runs episodes against one pool with one policy, renderer and task suite."""

    def __init__(
        self, pool: SandboxPool, policy: Policy, renderer: Renderer, suite: TaskSuite, config: EpisodeConfig
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.renderer = renderer
        self.suite = suite
        self.config = config
        stops = config.sampling.stop_token_ids or renderer.stop_token_ids
        self.sampling = config.sampling.model_copy(update={"stop_token_ids": tuple(stops)})
        self._sandbox_errors_in_a_row = 0
        self._sandbox_errors_since = 0.0
        self._tools: tuple[dict[str, Any], ...] | None = None
        """The environment's MCP tools as offered to a chat model; None until the first episode asks."""

    async def run(
        self, spec: EpisodeSpec, timing: EpisodeTiming | None = None, sampling: SamplingParams | None = None
    ) -> Trajectory:
        """Play one episode. `sampling` overrides the configured sampling (its stop tokens are kept)."""
        timing = timing or EpisodeTiming()
        sampling = (
            self.sampling
            if sampling is None
            else sampling.model_copy(update={"stop_token_ids": self.sampling.stop_token_ids})
        )
        start = time.perf_counter()
        attempts = self.config.sandbox_retries + 1
        for attempt in range(attempts):
            episode = _Episode(spec, self.renderer.start(spec.task.prompt))
            error: Exception | None = None
            try:
                async with asyncio.timeout(self.config.episode_timeout_s):
                    reason = await self._attempt(episode, timing, sampling)
            except TimeoutError:
                reason = DoneReason.TIMEOUT
            except _PolicyFailed as e:
                error = e
                log.warning("episode %s/%d: policy failed: %s", spec.group_id, spec.sample_index, e)
                reason = DoneReason.POLICY_ERROR
            except _EnvFailed as e:
                error = e
                log.warning("episode %s/%d: the environment failed: %s", spec.group_id, spec.sample_index, e)
                reason = DoneReason.ENV_ERROR
            except _SandboxFailed as e:
                error = e
                log.warning(  # its first line: the pool or the provider reported the whole error
                    "episode %s/%d: sandbox failed (attempt %d of %d): %s",
                    spec.group_id,
                    spec.sample_index,
                    attempt + 1,
                    attempts,
                    str(e).partition("\n")[0],
                )
                reason = DoneReason.SANDBOX_ERROR
                if attempt + 1 < attempts:
                    continue
                self._count_sandbox_error(spec, e)
            if reason is not DoneReason.SANDBOX_ERROR:
                self._sandbox_errors_in_a_row = 0
            timing.total_s += time.perf_counter() - start
            return self._trajectory(episode, reason, attempt, error)
        raise AssertionError("unreachable: the last attempt always returns")

    def _count_sandbox_error(self, spec: EpisodeSpec, error: _SandboxFailed) -> None:
        now = time.monotonic()
        if self._sandbox_errors_in_a_row == 0:
            self._sandbox_errors_since = now
        self._sandbox_errors_in_a_row += 1
        lasted = now - self._sandbox_errors_since
        if (
            self._sandbox_errors_in_a_row >= self.config.max_sandbox_errors_in_a_row
            and lasted >= self.config.sandbox_error_streak_s
        ):
            hint = env_start_hint(spec.env, str(error))
            raise SandboxesFailingError(
                f"{self._sandbox_errors_in_a_row} episodes in a row over {lasted:.0f} s found no working {spec.env} "
                f"sandbox (each tried {self.config.sandbox_retries + 1} times). {hint}. "
                f"The last failure: {str(error).strip()}"
            )

    async def _attempt(self, episode: _Episode, timing: EpisodeTiming, sampling: SamplingParams) -> DoneReason:
        spec = episode.spec
        try:
            lease = await self.pool.lease(self.config.lease_timeout_s)
        except (LeaseTimeoutError, RetryableProviderError) as e:  # a fatal one stops the run
            raise _SandboxFailed(f"no sandbox: {e}") from e
        async with lease:
            # A session kept from an earlier episode on this sandbox saves a handshake and an
            # environment instance; `reset()` starts the new episode on it.
            env = lease.connection or lease.handle.client(message_timeout_s=self.config.episode_timeout_s)
            try:
                # The prompt comes from the task, not from the reset's observation, so the first
                # step goes out right behind the reset: one round trip less per episode.
                await env.send_reset(seed=spec.seed, task_id=spec.task.id)
                reason = await self._turns(episode, env, timing, sampling)
                await env.settle()  # an episode that never stepped still learns whether its reset worked
            except BaseException as e:
                # The error's type says where to go on (hillclimb.errors.Fault). Validation errors on
                # reset have no fault: they mean a misconfigured task, and surface.
                fault = fault_of(e)
                what = f"{type(e).__name__}: {e}"
                if fault is Fault.SANDBOX:
                    lease.mark_broken(what)
                await env.close()
                if fault is Fault.SANDBOX:
                    raise _SandboxFailed(what) from e
                if fault is Fault.ENVIRONMENT:  # the sandbox is sound: it goes back to the pool, the session does not
                    raise _EnvFailed(what) from e
                raise
            lease.keep(env)
            return reason

    async def _turns(
        self, episode: _Episode, env: BaseEnvClient, timing: EpisodeTiming, sampling: SamplingParams
    ) -> DoneReason:
        transcript = episode.transcript
        tools = await self._offered_tools(env)
        for turn in range(self.config.max_turns):
            if len(transcript) + sampling.max_new_tokens > self.config.max_context_tokens:
                return DoneReason.STEP_LIMIT
            generation = await self._generate(episode, turn, timing, sampling, tools)
            episode.turns += 1
            episode.versions.append(generation.version)
            episode.server_turns.append(generation.server_tokens)
            text = self.policy.tokenizer.decode([t for t in generation.token_ids if t not in sampling.stop_token_ids])
            call = generation.tool_call if tools else None
            if call is not None:  # tools are offered only where both hold (`_offered_tools`)
                assert isinstance(self.renderer, MessagesRenderer)
                assert isinstance(self.suite, ToolCallSuite)
                content, text = text, self.suite.tool_call_text(call.name, call.arguments)
                self.renderer.add_tool_call(transcript, call, content, text)
            else:
                self.renderer.add_action(transcript, generation.token_ids, generation.logprobs)
            try:
                action = self.suite.parse_action(text)
            except ActionParseError as e:
                episode.parse_errors += 1
                self.renderer.add_warning(transcript, f"invalid action: {e}")
                continue
            step_start = time.perf_counter()
            try:
                result = await env.step(action)
            except MessageValidationError as e:  # the env's schema refused it: the policy's mistake, shown to it
                if e.request == "reset":  # unless it refused the reset sent ahead: a misconfigured task
                    raise
                episode.parse_errors += 1
                self.renderer.add_warning(transcript, f"invalid action: {e}")
                continue
            finally:
                timing.env_s += time.perf_counter() - step_start
                timing.steps += 1
            self.renderer.add_observation(transcript, self.suite.render_observation(result.observation))
            if result.done:
                episode.reward = float(result.reward or 0.0)
                return DoneReason.FINISHED
        return DoneReason.STEP_LIMIT

    async def _offered_tools(self, env: BaseEnvClient) -> tuple[dict[str, Any], ...]:
        """The environment's MCP tools (`tools/list`, asked once) as chat-API function tools, where
        a chat model's calls can be played: message-rendered episodes of a suite that turns a call
        into its action text (`tool_call_text`); none otherwise."""
        if self._tools is None:
            playable = isinstance(self.renderer, MessagesRenderer) and isinstance(self.suite, ToolCallSuite)
            self._tools = tuple(chat_tool(t) for t in await env.list_tools()) if playable else ()
        return self._tools

    async def _generate(
        self,
        episode: _Episode,
        turn: int,
        timing: EpisodeTiming,
        sampling: SamplingParams,
        tools: tuple[dict[str, Any], ...] = (),
    ) -> Generation:
        spec = episode.spec
        request = GenerateRequest(
            prompt_ids=tuple(episode.transcript.ids),
            episode=EpisodeInfo(env=spec.env, task_id=spec.task.id, turn=turn, seed=spec.seed),
            seed=derive_seed(spec.seed, turn),
            messages=tuple(episode.transcript.messages),
            tools=tools,
        )
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.policy_timeout_s):
                (generation,) = await self.policy.generate([request], sampling)
        except TimeoutError as e:
            raise _PolicyFailed(f"generate() took longer than {self.config.policy_timeout_s:g} s") from e
        except Exception as e:  # any engine failure ends this episode, not the run
            raise _PolicyFailed(f"{type(e).__name__}: {e}") from e
        finally:
            elapsed = time.perf_counter() - start
            timing.policy_s += elapsed
            episode.policy_s += elapsed
        episode.usage.update(generation.usage or {})
        return generation

    def _trajectory(self, episode: _Episode, reason: DoneReason, retries: int, error: Exception | None) -> Trajectory:
        spec, transcript = episode.spec, episode.transcript
        metadata: dict[str, object] = {"sandbox_retries": retries, "policy_s": round(episode.policy_s, 4)}
        if episode.usage:
            metadata["usage"] = dict(episode.usage)
        if error is not None:  # why it failed, kept with it (its end: where a traceback says what broke)
            text = str(error).strip()
            metadata["error"] = text if len(text) <= MAX_ERROR_CHARS else "…" + text[-MAX_ERROR_CHARS:]
        if transcript.messages:  # a chat API's episode: its text, and the server's ids where it sent them
            metadata["messages"] = transcript.messages
            transcript, untrainable = chat_episode_tokens(transcript, episode.server_turns)
            if untrainable is not None:
                metadata["untrainable"] = untrainable
        return Trajectory.from_transcript(
            transcript.ids,
            transcript.roles,
            transcript.logprobs,
            run_id=spec.run_id,
            group_id=spec.group_id,
            sample_index=spec.sample_index,
            task_id=spec.task.id,
            env=spec.env,
            split=spec.split,
            seed=spec.seed,
            policy_version=min(episode.versions, default=self.policy.version),
            reward=episode.reward if reason is DoneReason.FINISHED else 0.0,
            done_reason=reason,
            turns=episode.turns,
            parse_errors=episode.parse_errors,
            metadata=metadata,
        )
