"""Rollout workers: Ray actors that run many episodes at once on asyncio.

    driver ──run_group(GroupSpec)──► RolloutWorker (async actor, many groups at once)
                                       ├─ SandboxPool → its own provider (and sandboxes)
                                       ├─ Policy: in-process, or shared PolicyServer actors
                                       └─ EpisodeRunner × G ──► TrajectoryGroup ──► the driver
                                                                 └─ or the buffer actor; the driver
                                                                    gets the group's summary

Sandbox creation is paced cluster-wide by one `CreateRateLimiter` actor. A worker owns
its sandboxes: if the worker dies, its provider's sandboxes die with it (local) or are
reaped as orphans (their run's driver still lives, so by TTL), and the driver re-runs
the worker's unfinished groups elsewhere.
"""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections.abc import Mapping
from typing import Any

from prometheus_client.metrics_core import Metric

from envs.authoring.tasks import TaskSuite, action_prompt
from hillclimb.config.rollout import SamplingParams
from hillclimb.config.run import RunConfig
from hillclimb.config.sandboxes import PoolConfig
from hillclimb.skill import system_text
from orchestrator.heartbeats import liveness_for
from orchestrator.metrics import start_loop_lag_monitor
from orchestrator.metrics_hub import local_families
from orchestrator.pool import SandboxPool
from orchestrator.ratelimit import RateLimiter, TokenBucket
from orchestrator.render import MessagesRenderer, PlainTextRenderer, Renderer
from orchestrator.rollout import EpisodeRunner
from orchestrator.schedule import GroupSpec
from providers.liveness import Beat
from trainers.policy.base import GenerateRequest, Generation, Policy
from trainers.policy.batching import MicroBatcher
from trainers.tokenizer import Tokenizer
from trainers.trajectory import GroupSummary, TrajectoryGroup

_Item = tuple[GenerateRequest, SamplingParams]


class WorkerClosedError(RuntimeError):
    """A group reached a worker that is closing; it was not started."""


class CreateRateLimiter:
    """A token bucket as a Ray actor: one creation rate for the whole cluster."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._bucket = TokenBucket(rate_per_s, burst)

    async def acquire(self) -> None:
        await self._bucket.acquire()


class RemoteRateLimiter:
    """`RateLimiter` backed by a `CreateRateLimiter` actor handle."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def acquire(self) -> None:
        await self._handle.acquire.remote()


class PolicyServerClient:
    """`Policy` backed by policy-server actor handles (several: data-parallel engines); the
    tokenizer stays local.

    The worker's episodes ask one turn at a time, each on its own; their requests go to the
    server together, one Ray call per batch (per engine and sampling setting). Sent one by one,
    they reached the server spread over ~10 ms by the Ray calls themselves (measured on 2 cores),
    and its batcher decoded one turn of 8 episodes in two or three passes instead of one.
    The batch window is wider than the server's: groups the driver sends a few ms apart
    start their episodes that far apart, and would otherwise stay out of step all run.

    With several engines, an episode's every turn goes to the same one (chosen by a hash of the
    episode), where its prefix is cached; requests without an episode take turns."""

    def __init__(
        self, handles: list[Any], tokenizer: Tokenizer, *, max_wait_s: float = 0.005, max_window_s: float = 0.025
    ) -> None:
        self._handles = handles
        self._tokenizer = tokenizer
        self._version = 0
        self._next_engine = itertools.count()
        self._batcher: MicroBatcher[_Item, Generation | Exception] = MicroBatcher(
            self._call, max_batch=4096, max_wait_s=max_wait_s, max_window_s=max_window_s, thread_name="policy-client"
        )

    @property
    def version(self) -> int:
        return self._version

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        outcomes = await self._batcher.submit([(request, sampling) for request in requests])
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        generations: list[Generation] = outcomes  # type: ignore[assignment]
        self._version = max([self._version, *(g.version for g in generations)])
        return generations

    def _engine_of(self, request: GenerateRequest) -> int:
        if len(self._handles) == 1:
            return 0
        episode = request.episode
        if episode is None:
            return next(self._next_engine) % len(self._handles)
        return zlib.crc32(f"{episode.env}\0{episode.task_id}\0{episode.seed}".encode()) % len(self._handles)

    async def _call(self, items: list[_Item]) -> list[Generation | Exception]:
        """One batch: a server call per engine and distinct sampling setting, all in flight at once.
        A call that fails is retried request by request, so only the requests at fault get its error."""
        by_call: dict[tuple[int, SamplingParams], list[int]] = {}
        for i, (request, sampling) in enumerate(items):
            by_call.setdefault((self._engine_of(request), sampling), []).append(i)
        calls = [(engine, [items[i] for i in rows]) for (engine, _), rows in by_call.items()]
        answers = await asyncio.gather(*(self._send(engine, group) for engine, group in calls))
        outcomes: list[Generation | Exception] = [RuntimeError("unanswered")] * len(items)
        for rows, (engine, group), answer in zip(by_call.values(), calls, answers, strict=True):
            if isinstance(answer, Exception):
                retried = (self._send(engine, [item]) for item in group)
                alone = await asyncio.gather(*retried) if len(group) > 1 else [answer]
                answer = [a if isinstance(a, Exception) else a[0] for a in alone]
            for i, outcome in zip(rows, answer, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def _send(self, engine: int, items: list[_Item]) -> list[Generation] | Exception:
        """One server call for requests sharing an engine and a sampling setting: its generations, or its error."""
        try:
            return await self._handles[engine].generate.remote([request for request, _ in items], items[0][1])
        except Exception as e:
            return e

    async def update_weights(self, version: int, weights: Mapping[str, Any]) -> None:
        await asyncio.gather(*(handle.update_weights.remote(version, weights) for handle in self._handles))


def make_renderer(kind: str, tokenizer: Tokenizer, suite: TaskSuite, skill: str | None = None) -> Renderer:
    """The renderer `kind`, whose system message is the suite's own system prompt and then the
    skill (the plain renderer has none: the skill goes before the task prompt)."""
    system = system_text(getattr(suite, "system_prompt", None), skill)
    if kind == "messages":  # a chat API's own template renders the episode
        return MessagesRenderer(system)
    if kind == "chat":
        from orchestrator.chat_render import ChatTemplateRenderer
        from trainers.tokenizer import HFTokenizer

        if not isinstance(tokenizer, HFTokenizer):
            raise TypeError("the chat renderer needs a Hugging Face tokenizer with a chat template")
        return ChatTemplateRenderer(tokenizer, system)
    bos = getattr(tokenizer, "bos_token_id", None)
    return PlainTextRenderer(tokenizer, bos, action_prompt=action_prompt(suite), preamble=system)


class RolloutWorker:
    """Runs GRPO groups. Build it as a Ray actor with `ray.remote(RolloutWorker)`, or in-process."""

    def __init__(
        self,
        config: RunConfig,
        *,
        worker_index: int,
        policy: Policy | None = None,
        policy_servers: list[Any] | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.config = config
        self.worker_index = worker_index
        self._policy_arg = policy
        self._policy_servers = policy_servers
        self._limiter = rate_limiter
        self._runner: EpisodeRunner | None = None
        self._oracle: EpisodeRunner | None = None
        """The same pool and renderer, the task suite's oracle playing (`run_group(oracle=True)`)."""
        self._pool: SandboxPool | None = None
        self._provider: Any = None
        self._beat: Beat | None = None
        self._start_lock = asyncio.Lock()
        self._running: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._lag_monitor: asyncio.Task[None] | None = None

    async def _ensure_started(self) -> EpisodeRunner:
        async with self._start_lock:
            if self._runner is None:
                self._runner = await self._build()
            return self._runner

    async def _build(self) -> EpisodeRunner:
        from envs.authoring.registry import load_suite
        from envs.server.targets import env_class_of
        from providers.contract import Resources, SandboxSpec
        from providers.registry import make_provider
        from trainers.policy.factory import load_policy_tokenizer, make_policy

        cfg = self.config
        self._lag_monitor = start_loop_lag_monitor()
        env_cls = env_class_of(cfg.env.name)
        shared = bool(getattr(env_cls, "SUPPORTS_CONCURRENT_SESSIONS", False))
        spec = SandboxSpec(
            env=cfg.env.name,
            run_id=cfg.run.name,
            ttl_s=cfg.provider.ttl_s,
            resources=Resources(**cfg.provider.resources),
            max_sessions=cfg.pool.sessions_per_sandbox if shared else 1,
        )
        self._provider = make_provider(cfg.provider.type, **cfg.provider.options)
        # Beats while this process holds the run's sandboxes: after a crash, `hillclimb sandbox
        # reap` sees the run gone and removes what it left (see providers.liveness).
        self._beat = await asyncio.to_thread(liveness_for(self._provider).beat, cfg.run.name)
        self._pool = SandboxPool(
            self._provider, spec, self._worker_pool_config(), shared=shared, rate_limiter=self._limiter
        )
        await self._pool.start()
        if self._policy_arg is not None:
            policy = self._policy_arg
        elif self._policy_servers:
            policy = PolicyServerClient(self._policy_servers, load_policy_tokenizer(cfg.policy))
        else:
            policy = make_policy(cfg.policy)
        suite = load_suite(cfg.env.name)
        renderer = make_renderer(cfg.rollout.renderer, policy.tokenizer, suite, cfg.rollout.skill)
        return EpisodeRunner(self._pool, policy, renderer, suite, cfg.rollout.episode)

    def _worker_pool_config(self) -> PoolConfig:
        """This worker's share of the pool limits."""
        pool, workers = self.config.pool, self.config.ray.num_workers
        return pool.model_copy(
            update={
                "max_total": max(1, pool.max_total // workers),
                "min_ready": -(-pool.min_ready // workers),
            }
        )

    def _oracle_runner(self, runner: EpisodeRunner) -> EpisodeRunner:
        from trainers.policy.scripted import ScriptedPolicy

        if self._oracle is None:
            oracle = ScriptedPolicy(runner.policy.tokenizer)
            self._oracle = EpisodeRunner(runner.pool, oracle, runner.renderer, runner.suite, runner.config)
        return self._oracle

    async def run_group(
        self, group: GroupSpec, sampling: SamplingParams | None = None, buffer: Any = None, oracle: bool = False
    ) -> TrajectoryGroup | GroupSummary:
        """The group's episodes, played at once; with a `buffer` (actor handle), they go there and
        the caller gets their summary (training: the tokens never pass through the driver).
        `oracle`: played by the task suite's oracle (the scripted policy, in the policy's
        tokens) instead of the policy: training's transcripts, in the sandboxes the run plays in."""
        if self._closing:  # a call queued before close(): its episodes would lose their sandboxes mid-run
            closing = f"rollout worker {self.worker_index} is closing; group {group.group_id} not started"
            raise WorkerClosedError(closing)
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            runner = await self._ensure_started()
            if oracle:
                runner = self._oracle_runner(runner)
            episodes = group.episodes(self.config.run.name)
            trajectories = await asyncio.gather(*(runner.run(spec, sampling=sampling) for spec in episodes))
            played = TrajectoryGroup.of(list(trajectories))
            if buffer is None:
                return played
            await buffer.put.remote(played)
            return played.summary()
        finally:
            self._running.discard(task)

    async def warm(self) -> None:
        """Build now what the first group would: the provider, the sandbox pool, the policy's
        tokenizer (a driver asks while other things start, not when episodes wait on it)."""
        await self._ensure_started()

    async def update_weights(self, version: int, weights: Mapping[str, Any]) -> None:
        runner = await self._ensure_started()
        await runner.policy.update_weights(version, weights)

    def running(self) -> int:
        """Groups running on this worker now."""
        return len(self._running)

    def metrics(self) -> list[Metric]:
        """This worker's figures (its pool's sandboxes, leases, failures; its event loop's lag),
        for the driver's /metrics."""
        return local_families()

    async def close(self) -> None:
        """Refuse new groups, cancel the ones still running, then destroy the sandboxes: an
        episode left running would see its sandbox vanish and be recorded (and logged) as a
        sandbox failure."""
        self._closing = True
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
        if self._beat is not None:  # before the provider closes: a Lease is deleted through it
            await asyncio.to_thread(self._beat.stop)
        if self._provider is not None:
            await self._provider.close()
        if self._lag_monitor is not None:
            self._lag_monitor.cancel()

    def ping(self) -> int:
        return self.worker_index
