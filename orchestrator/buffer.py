"""`TrajectoryBuffer`: complete GRPO groups from rollout workers to learners, exactly once.

    put(group) ──ledger.append (durable)──► queued (in the ledger too), if at most `max_staleness` versions old
      (from a rollout worker)           └─► dropped as stale (recorded in the ledger too)
    get(n)     ──ledger: consumed at step s──► the caller
    take(n)    ──get, then the ranks' batch (`orchestrator.learner_batches`)──► the driver: references
               to the ranks' shares and the groups' summaries; the tokens go from here to the ranks

Bounded: `put` waits while `capacity` groups are queued, so producers slow down
instead of memory growing. Groups that go stale while queued (the learner moved on)
are dropped and recorded. Runs as a Ray actor (`start_buffer`), beside its ledger; all
methods run on the actor's one event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from prometheus_client.metrics_core import Metric

from hillclimb.config.buffer import BufferConfig
from orchestrator import metrics
from orchestrator.learner_batches import BatchPlan, LearnerBatches, TakenBatch
from orchestrator.ledger import Ledger
from orchestrator.ledger_location import on_local_disk
from orchestrator.metrics_hub import local_families
from trainers.batching import DealtBatch
from trainers.trajectory import TrajectoryGroup


class TrajectoryBuffer:
    def __init__(
        self,
        ledger_location: str,
        config: BufferConfig | None = None,
        *,
        version: int = 0,
        resume_step: int | None = None,
    ) -> None:
        self.config = config or BufferConfig()
        self.ledger = Ledger(ledger_location)
        self.version = version
        self._queue: collections.deque[TrajectoryGroup] = collections.deque()
        self._changed = asyncio.Event()
        self.counts = {"admitted": 0, "consumed": 0, "dropped_stale": 0, "restored": 0}
        self.staleness: collections.Counter[int] = collections.Counter()
        self._received: set[str] = set()  # a group a worker put twice (it died before answering) counts once
        self._batches: LearnerBatches | None = None
        if resume_step is not None:
            self._restore(resume_step)

    def _restore(self, step: int) -> None:
        """Requeue what the ledger holds but no learner step up to `step` used."""
        for group in self.ledger.pending(as_of_step=step):
            self._received.add(group.group_id)
            self._queue.append(group)
            self.counts["restored"] += 1

    def _fresh(self, group: TrajectoryGroup) -> bool:
        return self.version - group.policy_version <= self.config.max_staleness

    def _notify(self) -> None:
        """The queue changed: wake whoever waits on it, and the depth gauge follows."""
        metrics.BUFFER_DEPTH.set(len(self._queue))
        self._changed.set()
        self._changed = asyncio.Event()

    async def put(self, group: TrajectoryGroup) -> str:
        """Record the group, then queue it: 'admitted', or 'stale' if it is too old to train on
        ('duplicate': it was put before)."""
        while len(self._queue) >= self.config.capacity_groups:
            await self._changed.wait()
        if group.group_id in self._received:
            return "duplicate"
        self._received.add(group.group_id)
        self.ledger.append(group)
        if not self._fresh(group):
            self._drop([group])
            return "stale"
        self.ledger.record([group.group_id], "queued")
        self._queue.append(group)
        self.counts["admitted"] += 1
        self._notify()
        return "admitted"

    async def get(self, n_groups: int, *, step: int, timeout_s: float | None = None) -> list[TrajectoryGroup]:
        """Exactly `n_groups` fresh groups, recorded as consumed by learner `step`, oldest first."""
        async with asyncio.timeout(timeout_s):
            while True:
                self._drop_stale()
                if len(self._queue) >= n_groups:
                    break
                await self._changed.wait()
        batch = [self._queue.popleft() for _ in range(n_groups)]
        self.ledger.record([g.group_id for g in batch], "consumed", step=step)
        for group in batch:
            self.staleness[self.version - group.policy_version] += 1
        self.counts["consumed"] += len(batch)
        self._notify()
        return batch

    def serve_learners(self, plan: BatchPlan, transcripts: dict[str, list[str]]) -> None:
        """Make the learners' batches from here on; `transcripts`: the oracle's groups in the
        ledger, by split (the warm-up's, the anchors' and the env-token CE's samples)."""
        by_split = {
            split: [t for group_id in ids for t in self.ledger.read_group(group_id).trajectories]
            for split, ids in transcripts.items()
        }
        self._batches = LearnerBatches(plan, by_split)

    def _learner_batches(self) -> LearnerBatches:
        if self._batches is None:
            raise RuntimeError("the buffer makes no learner batches before serve_learners()")
        return self._batches

    async def take(self, n_groups: int, *, step: int, timeout_s: float | None = None) -> TakenBatch:
        """`get`, as learner step `step`'s batch: advantages computed, dealt to the ranks."""
        groups = await self.get(n_groups, step=step, timeout_s=timeout_s)
        return self._learner_batches().rl_step(groups, step)

    def warmup_batch(self) -> DealtBatch:
        return self._learner_batches().warmup()

    def transcript_shares(self, split: str) -> list[Any]:
        return self._learner_batches().transcript_shares(split)

    def set_version(self, version: int) -> None:
        """The learner's weights moved to `version`: queued groups now too old are dropped."""
        self.version = version
        self._drop_stale()
        self._notify()

    def _drop_stale(self) -> None:
        stale = [g for g in self._queue if not self._fresh(g)]
        if stale:
            self._queue = collections.deque(g for g in self._queue if self._fresh(g))
            self._drop(stale)

    def _drop(self, groups: list[TrajectoryGroup]) -> None:
        self.ledger.record([g.group_id for g in groups], "dropped", reason="stale", version=self.version)
        self.counts["dropped_stale"] += len(groups)

    def metrics(self) -> list[Metric]:
        """The buffer process's figures (depth), for the driver's /metrics."""
        return local_families()

    def stats(self) -> dict[str, Any]:
        return {"depth": len(self._queue), "version": self.version, **self.counts, "staleness": dict(self.staleness)}


def placement(ledger_location: str) -> dict[str, Any]:
    """Ray options that put the buffer actor beside its ledger. A ledger on a node's disk is on
    the driver's node, which made the run directory and reads it on resume: the actor must run
    there, or on a multi-node cluster it would write the ledger to another node's disk, where
    the driver and a resumed run would never find it. Shared storage reads the same from every
    node, so there the actor may run anywhere."""
    if not on_local_disk(ledger_location):
        return {}
    from orchestrator.driver import on_the_drivers_node

    return {"scheduling_strategy": on_the_drivers_node()}


def start_buffer(ledger_location: str, config: BufferConfig, *, version: int, resume_step: int | None) -> Any:
    """The buffer as a Ray actor beside its ledger (many concurrent `put`s wait on one event loop)."""
    import ray

    actor = ray.remote(num_cpus=0, max_concurrency=64)(TrajectoryBuffer)
    return actor.options(**placement(ledger_location)).remote(
        ledger_location, config, version=version, resume_step=resume_step
    )
