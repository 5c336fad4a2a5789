"""The rollout driver: Ray, the workers, and GRPO groups dispatched to them without loss.

    groups ──► dispatch (at most `in_flight` at once, least-busy worker first)
                 ├─ done ──► on_group(group)     (the caller records it in the ledger)
                 │           or, given a buffer: the worker put it there, on_group(its summary)
                 └─ worker died ──► a new worker takes its index; its groups run again

A group is re-run whole, with the same seeds, so a re-run is the same episodes again;
the ledger keys groups by id, so a group recorded twice is still one group. A group that
raises a hillclimb error (a refused token, a provider that cannot make sandboxes) stops the
run with that error. Every worker reports its metrics through the driver's `/metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from envs.deadline import within
from hillclimb.config.rollout import SamplingParams
from hillclimb.config.run import RunConfig
from hillclimb.errors import HillclimbError
from orchestrator.metrics_hub import HUB
from orchestrator.schedule import GroupSpec
from orchestrator.workers import CreateRateLimiter, RemoteRateLimiter, RolloutWorker
from trainers.trajectory import GroupSummary, TrajectoryGroup

log = logging.getLogger("hillclimb.orchestrator.driver")

OnGroup = Callable[[Any], Awaitable[None] | None]
"""Called with each `TrajectoryGroup`, or its `GroupSummary` where the groups go to a buffer."""


class RayUnreachableError(HillclimbError, ConnectionError):
    """The Ray head at the given address does not answer."""


RAY_PROBE_TIMEOUT_S = 5.0
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _token_auth_default_notice(record: logging.LogRecord) -> bool:
    """A logging filter: False for Ray's notice that it enabled token auth by default."""
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def connect_ray(address: str | None) -> str:
    """Join `address` (or $RAY_ADDRESS), else start a local Ray. Returns what was joined."""
    import ray

    if ray.is_initialized():
        return "already connected"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        _init_keeping_sigterm(address=address, log_to_driver=True)
        return address
    # Local: workers must import what the driver imports from its working directory.
    pythonpath = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    # A Ray we start for ourselves keeps Ray's default, token auth on, without a warning about that
    # default on every run (the warning that it is off, when a user turns it off, stays).
    logging.getLogger(RAY_AUTH_LOGGER).addFilter(_token_auth_default_notice)
    # address="local": a Ray of our own, never one another process on this machine started (Ray
    # would join that, or hang on a dead one's stale /tmp/ray/ray_current_cluster, left by a kill -9).
    _init_keeping_sigterm(
        address="local",
        include_dashboard=False,
        log_to_driver=True,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )
    return "local"


def _init_keeping_sigterm(**options: Any) -> None:
    """`ray.init`, after which a caller that handles SIGTERM itself keeps its handler: Ray puts in
    its own, which ends the process at once (`hillclimb train` writes its summary and plots first).
    A caller with none keeps Ray's, which shuts the local Ray down on the way out."""
    import ray

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    ray.init(**options)
    if callable(previous):
        signal.signal(signal.SIGTERM, previous)


def _check_reachable(address: str) -> None:
    """Fail in seconds, naming the address, where Ray would retry a dead head for a minute or more."""
    if address in ("auto", "local"):  # Ray finds or starts the local head itself
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.hostname is None or port is None:
        raise RayUnreachableError(
            f"Ray address {address!r} names no host:port (e.g. 10.0.0.5:6379 or ray://host:10001)"
        )
    try:
        socket.create_connection((parts.hostname, port), timeout=RAY_PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise RayUnreachableError(
            f"no Ray head answers at {address} ({e.strerror or e}): start one (`ray start --head`) or fix "
            "--address / $RAY_ADDRESS"
        ) from None


def on_the_drivers_node() -> Any:
    """A Ray scheduling strategy for an actor that must share the driver's fate: one that every
    worker depends on (on a node removed mid-run it would take the whole run with it) or one
    that writes to the driver's disk."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


class GroupFailedError(RuntimeError):
    """A group kept failing on fresh workers; the run cannot complete it."""


class RolloutDriver:
    def __init__(
        self,
        config: RunConfig,
        *,
        policy: Any = None,
        policy_servers: list[Any] | None = None,
        max_group_attempts: int = 3,
    ) -> None:
        """`policy`: an in-process policy object each worker gets a copy of (default: built from
        the config); `policy_servers`: Ray actors serving the policy to every worker (several:
        data-parallel engines, over which each worker spreads its episodes)."""
        self.config = config
        self.policy = policy
        self.policy_servers = policy_servers
        self.max_group_attempts = max_group_attempts
        self.workers: list[Any] = []
        self._limiter: Any = None
        self.worker_restarts = 0

    async def start(self) -> None:
        import ray

        connect_ray(self.config.ray.address)
        self._limiter = ray.remote(num_cpus=0, scheduling_strategy=on_the_drivers_node())(CreateRateLimiter).remote(
            self.config.pool.create_rate_per_s, burst=max(1, self.config.pool.max_starting)
        )
        self.workers = [self._new_worker(i) for i in range(self.config.ray.num_workers)]

    async def warm(self) -> None:
        """Wait until every worker has built its pool and policy client (`start` first). Started
        beside other work, this takes the workers' set-up out of the first episodes' time."""
        await asyncio.gather(*(_await(worker.warm.remote()) for worker in self.workers))

    def _new_worker(self, index: int) -> Any:
        import ray

        ray_config = self.config.ray
        actor = ray.remote(
            num_cpus=ray_config.cpus_per_worker,
            resources=ray_config.worker_resources,
            scheduling_strategy="SPREAD",  # over the nodes: each worker's sandbox pool is on its own node
            max_concurrency=4096,
            max_restarts=0,
        )(RolloutWorker)
        worker = actor.remote(
            self.config,
            worker_index=index,
            policy=self.policy,
            policy_servers=self.policy_servers,
            rate_limiter=RemoteRateLimiter(self._limiter),
        )
        HUB.watch(f"worker-{index}", worker)
        return worker

    async def run_groups(
        self,
        groups: Iterable[GroupSpec],
        on_group: OnGroup,
        *,
        in_flight: int | None = None,
        sampling: SamplingParams | None = None,
        buffer: Any = None,
        oracle: bool = False,
    ) -> None:
        """Run the groups (drawn lazily: an endless iterator is fine) and call `on_group` as each
        completes, in completion order. `sampling` overrides the episodes' sampling (evaluation).
        `buffer`: the trajectory buffer's actor, where the workers put the groups themselves.
        `oracle`: the task suite's oracle plays instead of the policy (`RolloutWorker.run_group`)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        limit = in_flight or max(1, self.config.rollout.concurrency // self.config.rollout.group_size)
        pending = iter(groups)
        retry: list[GroupSpec] = []
        attempts: dict[str, int] = {}
        busy = [0] * len(self.workers)
        running: dict[asyncio.Future[TrajectoryGroup | GroupSummary], tuple[GroupSpec, int, Any]] = {}
        try:
            while True:
                while len(running) < limit:
                    group = retry.pop() if retry else next(pending, None)
                    if group is None:
                        break
                    index = min(range(len(busy)), key=busy.__getitem__)
                    busy[index] += 1
                    call = self.workers[index].run_group.remote(group, sampling, buffer, oracle)
                    running[asyncio.ensure_future(_await(call))] = (group, index, call)
                if not running:
                    return
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    group, index, _ = running.pop(future)
                    busy[index] -= 1
                    try:
                        result = future.result()
                    except RayTaskError as e:  # the group raised: a run-stopping error, say what to fix
                        if isinstance(e.cause, HillclimbError):
                            raise e.cause from None
                        raise
                    except RayActorError as e:
                        attempts[group.group_id] = attempts.get(group.group_id, 0) + 1
                        if attempts[group.group_id] >= self.max_group_attempts:
                            failed = f"group {group.group_id} failed on {attempts[group.group_id]} workers: {e}"
                            raise GroupFailedError(failed) from e
                        await self._replace_worker(index)
                        retry.append(group)
                        continue
                    outcome = on_group(result)
                    if asyncio.iscoroutine(outcome):
                        await outcome
        finally:  # cancelled (an async producer being stopped) or failed: stop the rest, here and on the workers
            for future, (_, _, call) in running.items():
                future.cancel()
                ray.cancel(call)  # else the group runs on, holding sandboxes, until its worker closes

    async def _replace_worker(self, index: int) -> None:
        try:
            await within(10, _await(self.workers[index].ping.remote()))
            return  # alive: an earlier failure of the same death already replaced it
        except Exception:
            pass
        log.warning("rollout worker %d died; starting a replacement", index)
        self.workers[index] = self._new_worker(index)
        self.worker_restarts += 1

    async def close(self) -> None:
        import ray

        for worker in self.workers:
            try:
                await within(120, _await(worker.close.remote()))
            except Exception as e:  # a dead worker's sandboxes died with it
                log.warning("closing a worker failed: %s", e)
            ray.kill(worker)
        for index in range(len(self.workers)):
            HUB.forget(f"worker-{index}")
        if self._limiter is not None:
            ray.kill(self._limiter)


async def _await(ref: Any) -> Any:
    return await ref
