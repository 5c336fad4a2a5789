"""Publishing: new weights from the learners to every policy engine.

    engine 0 ─► weights_dtype (once)
    LearnerGroup.weight_buckets(dtype, bucket bytes) ─► [ref, ref, ...] in rank 0's object store
        (made one bucket at a time and cast on the learner's device: bf16 for a bf16 engine is half
         the bytes of fp32; the ranks are asked before anything is awaited, so the buckets are the
         weights of the step just taken, whatever is queued on the ranks behind them)
    every engine ─► update_weights_in_buckets(version, refs): fetches and loads one bucket at a time
    each engine must finish within `policy.publish.timeout_s`, or `WeightPublishTimeoutError` names it

No process holds a second full copy of the weights: the learner and each engine hold one bucket
beside their model. The object store holds the buckets (one copy in the engines' dtype) until the
slowest engine has loaded them: that snapshot is what lets the next step train meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from hillclimb.config.policy import PublishConfig
from orchestrator.learner_group import LearnerGroup
from trainers.policy.errors import WeightPublishTimeoutError

__all__ = ["WeightPublisher"]

_MIB = 1024 * 1024


class WeightPublisher:
    """Publishes the learners' weights to `engines` (policy-server actors), per `config`."""

    def __init__(self, engines: list[Any], config: PublishConfig) -> None:
        self.engines = engines
        self.config = config
        self._dtype: Any = None
        self._dtype_known = False

    async def prepare(self, learners: LearnerGroup) -> None:
        """Wait for the ranks to meet and ask the engines' dtype (once), so that `publish` asks the
        ranks before awaiting anything."""
        await learners.ready()
        if not self._dtype_known:
            self._dtype = await self.engines[0].weights_dtype.remote()
            self._dtype_known = True

    def publish(self, learners: LearnerGroup, version: int) -> Awaitable[None]:
        """Snapshot the learners' weights now and deliver them as `version`; the result completes
        once every engine has loaded them (after `prepare`)."""
        assert self._dtype_known, "prepare() before publish()"
        buckets = learners.weight_buckets(self._dtype, self.config.bucket_mb * _MIB)
        return self._deliver(buckets, version)

    async def _deliver(self, buckets: Awaitable[list[Any]], version: int) -> None:
        refs = await buckets
        loads = [asyncio.ensure_future(e.update_weights_in_buckets.remote(version, refs)) for e in self.engines]
        done, pending = await asyncio.wait(loads, timeout=self.config.timeout_s)
        for load in pending:
            load.cancel()
        for load in done:
            load.result()  # an engine that failed: its error
        if pending:
            late = [i for i, load in enumerate(loads) if load in pending]
            raise WeightPublishTimeoutError(
                f"policy engine {late[0]} (of {len(self.engines)}; late: {late}) did not load weights version "
                f"{version} within policy.publish.timeout_s={self.config.timeout_s:g} s: see its log for why it "
                "hangs (a stuck GPU, a dead worker), or raise the timeout for a model that loads slower",
                engine=late[0],
                version=version,
                timeout_s=self.config.timeout_s,
            )
