"""`hillclimb train`: the whole loop — sandboxed rollouts, GRPO + ECHO learners, weights back.

oracle transcripts (the scripted oracle on the run's rollout workers, both splits, recorded once)
warm-up: behaviour cloning on TRAIN oracle transcripts (ACTION tokens only)
loop:  policy servers ─► rollout workers ─► TrajectoryBuffer + ledger ─► learners ─► weights ─► policy servers
       (weights in buckets, in the engines' dtype; with max_staleness ≥ 1 the next step trains while
        the engines load them)
       (each step may carry a BC anchor: TRAIN oracle transcripts, their ACTION tokens only)
       the tokens go from the workers to the buffer, which makes the ranks' batches (advantages,
       anchor) and hands them to the ranks; this process sees summaries and references only
       max_staleness 0: rollouts, then a step, in turn;  ≥ 1: rollouts run on while learners train
every `eval_every` steps: held-out pass@1 (greedy episodes) and teacher-forced env-token CE
run dir: config.json, metrics.jsonl, checkpoints/, ledger/, plots/, summary.json
checkpoints: at the end of the warm-up (step 0), every `checkpoint_every` steps, at the end
resumed: from the newest checkpoint (step 0: after the warm-up, which is not done again);
         metrics.jsonl loses the records after its step, so each step appears once.
         `train.time_budget_s` counts the RL phase only (not the oracle, warm-up, evals before it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from envs.authoring.registry import load_suite
from envs.authoring.tasks import require_oracles
from envs.deadline import stop
from hillclimb.config.run import RunConfig
from hillclimb.errors import ConfigError, HillclimbError
from orchestrator import metrics as prom
from orchestrator.driver import RolloutDriver, connect_ray
from orchestrator.ledger import Ledger
from orchestrator.ledger_location import ledger_location
from orchestrator.loggers import RunLoggers, open_loggers
from orchestrator.metrics_hub import HUB
from orchestrator.model_check import check_model_available
from orchestrator.phase_timer import PhaseTimer
from orchestrator.rollout import env_start_hint
from orchestrator.schedule import GroupSpec, endless_groups, round_of_groups
from trainers.trajectory import GroupSummary, Trajectory, TrajectoryGroup

Report = Callable[[str, dict[str, Any]], None]


class OracleEpisodeError(HillclimbError, RuntimeError):
    """The scripted oracle's episodes failed: training would learn from broken transcripts."""


class MetricsLog:
    """metrics.jsonl in the run directory, plus the same numbers as Prometheus gauges and in the
    configured loggers (W&B, TensorBoard: `orchestrator.loggers`)."""

    def __init__(self, run_dir: Path, loggers: RunLoggers | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.start = time.monotonic()
        self.loggers = loggers

    def write(self, kind: str, step: int, values: dict[str, Any]) -> dict[str, Any]:
        record = {"kind": kind, "step": step, "elapsed_s": round(time.monotonic() - self.start, 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)):
                prom.TRAIN.labels(kind=kind, name=key).set(value)
        if self.loggers is not None:
            self.loggers.scalars(kind, step, values)
        return record

    def episodes(self, step: int, trajectories: list[Trajectory]) -> None:
        """An evaluation's episodes: a few of them as text, in samples.jsonl and the loggers."""
        if self.loggers is not None:
            self.loggers.episodes(step, trajectories)

    def close(self) -> None:
        if self.loggers is not None:
            self.loggers.close()

    def read(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []

    def keep_until(self, step: int | None) -> None:
        """Drop the RL records after `step` (None: every record), which a resumed run writes
        again; the file is replaced whole, so a crash leaves the old one or the new one."""
        kept = [
            r for r in self.read() if step is not None and (r["kind"] not in ("train", "eval") or r["step"] <= step)
        ]
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(partial, self.path)


def check_trainable(config: RunConfig) -> None:
    """Refuse a policy training cannot update, saying what to set (a config without a policy
    section gets the scripted one, which suits rollouts)."""
    if config.policy.type in ("hf", "vllm"):
        return
    given = (
        f"policy.type is {config.policy.type!r}"
        if "policy" in config.model_fields_set
        else "the config sets no policy, so policy.type is 'scripted' (the task suites' oracles, for rollouts)"
    )
    raise ConfigError(
        f"training needs a trainable policy, and {given}: set policy.type: hf (a tiny random model; a pretrained "
        "one with policy.model: {type: hf, name_or_path: ...}) or vllm, in the config or with --set policy.type=hf"
    )


def _single(group: GroupSpec) -> GroupSpec:
    return GroupSpec(group.group_id, group.env, group.split, group.task, group.seeds[:1])


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, report: Report = lambda kind, values: None) -> None:
        check_trainable(config)
        self.config = config
        self.run_dir = run_dir
        self.report = report
        self.ledger_location = ledger_location(run_dir, config.run.ledger_uri)
        self.ledger = Ledger(self.ledger_location)
        self.suite = load_suite(config.env.name)
        if config.train.warmup_steps or config.train.anchor_batch:
            require_oracles(
                self.suite.tasks("train"),
                "the warm-up and the behaviour-cloning anchor (train.warmup_steps, train.anchor_batch)",
                "train without them: --set train.warmup_steps=0 --set train.anchor_batch=0",
            )
        self.log = MetricsLog(run_dir, open_loggers(config, run_dir))
        self.model_config = config.policy.model  # type: ignore[union-attr]
        self.version = 0
        self._delivery: asyncio.Future[None] | None = None
        """A publish the engines are still loading while the learners train on (max_staleness ≥ 1)."""
        self.step = 0
        self.started = time.monotonic()
        self.rl_started = self.started  # `train.time_budget_s` and the LR schedule's clock count from here
        self.timer = PhaseTimer()
        """Where the run's wall time went: summary.json's `timings`."""

    # -- setup ----------------------------------------------------------------------------

    async def _oracle_transcripts(self, driver: RolloutDriver) -> dict[str, list[str]]:
        """Each task once, solved by the oracle in a real sandbox (on the run's rollout workers),
        tokenized for our model: their groups' ids in the ledger, by split (the buffer reads them
        from there)."""
        groups = [
            _single(g)
            for split in ("train", "heldout")
            for g in round_of_groups(self.suite, split, run_seed=0, group_size=1, round_index=0, tag="oracle")
            if g.task.oracle  # tasks without oracle actions have no transcript: no env-token CE
        ]
        missing = [g for g in groups if g.group_id not in self.ledger.group_ids()]
        if missing:
            played: list[TrajectoryGroup] = []
            await driver.run_groups(missing, played.append, oracle=True)
            self._check_oracle_episodes([t for g in played for t in g.trajectories])
            for group in played:  # only whole ones: a failed oracle is played again when the run is
                self.ledger.append(group)
        by_split: dict[str, list[str]] = {"train": [], "heldout": []}
        for group in groups:
            by_split[group.split].append(group.group_id)
        return by_split

    def _check_oracle_episodes(self, episodes: list[Trajectory]) -> None:
        """Stop on oracle episodes that failed (their transcripts are not the task solved);
        report those the oracle played to the end without the reward."""
        failed = [t for t in episodes if not t.trainable]
        if failed:
            shown = ", ".join(f"{t.task_id} ({t.done_reason.value})" for t in failed[:5])
            more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
            first = failed[0].metadata.get("error", "(no error recorded)")
            hint = env_start_hint(self.config.env.name, str(first))
            raise OracleEpisodeError(
                f"the oracle's episodes failed on {len(failed)} of {len(episodes)} task(s): {shown}{more}; "
                f"warm-up, anchor and env-token CE need them whole. {hint}. "
                f"The first failure ({failed[0].task_id}): {first}"
            )
        unsolved = sorted(t.task_id for t in episodes if t.reward <= 0)
        if unsolved:
            self.report("oracle_unsolved", {"tasks": unsolved})

    # -- evaluation -----------------------------------------------------------------------

    async def _env_ce(self, learners: Any, buffer: Any, oracle: dict[str, list[str]]) -> dict[str, float]:
        return {
            f"{split}_env_ce": await learners.env_cross_entropy(await buffer.transcript_shares.remote(split))
            for split, transcripts in oracle.items()
            if transcripts  # a split whose tasks have no oracle actions has no such figure
        }

    def _heldout_groups(self) -> list[GroupSpec]:
        """This evaluation's episodes: one per held-out task, seeded by the step; with
        `train.eval_tasks`, on the same sample of tasks at every step (drawn by the run's seed)."""
        seed = self.config.run.seed
        groups = round_of_groups(
            self.suite, "heldout", run_seed=seed, group_size=1, round_index=self.step, tag=f"eval{self.step}"
        )
        if self.config.train.eval_tasks is not None:
            sample = round_of_groups(self.suite, "heldout", run_seed=seed, group_size=1, round_index=0, tag="eval")
            chosen = {g.task.id for g in sample[: self.config.train.eval_tasks]}
            groups = [g for g in groups if g.task.id in chosen]
        return [_single(g) for g in groups]

    async def _heldout_success(self, driver: RolloutDriver) -> float:
        groups = self._heldout_groups()
        results: list[TrajectoryGroup] = []
        sampling = self.config.rollout.episode.sampling.model_copy(update={"temperature": self.config.eval.temperature})
        await driver.run_groups(groups, results.append, sampling=sampling)
        for group in results:
            self.ledger.append(group)
        episodes = [t for g in results for t in g.trajectories]
        self.log.episodes(self.step, episodes)
        return sum(t.reward > 0 for t in episodes) / max(len(episodes), 1)

    async def _evaluate(
        self, learners: Any, buffer: Any, driver: RolloutDriver | None, oracle: dict[str, list[str]], kind: str
    ) -> dict[str, Any]:
        with self.timer.phase("eval"):
            if driver is None:
                values: dict[str, Any] = await self._env_ce(learners, buffer, oracle)
            else:
                await self._settle_publish()  # held-out episodes play the weights being evaluated
                # The learners score the transcripts while the engines play the episodes: neither
                # waits on the other's result, and each figure is the one it was measured alone.
                ce, pass1 = await asyncio.gather(self._env_ce(learners, buffer, oracle), self._heldout_success(driver))
                values = ce | {"heldout_pass1": pass1}
        if not values:  # the initial evaluation of tasks without oracle actions: nothing to measure
            return {}
        record = self.log.write(kind, self.step, values)
        self.report(kind, record)
        return record

    # -- weights ----------------------------------------------------------------------------

    async def _publish(
        self, learners: Any, publisher: Any, buffer: Any, *, bump: bool = True, wait: bool = True
    ) -> None:
        """New weights from the learners to every policy engine (`orchestrator.weight_sync`: the
        engines fetch the buckets from rank 0's node, never through this process). The buffer
        learns the version first, so staleness counts from the weights the learners hold. With
        `wait=False` (`max_staleness` ≥ 1) the engines load while the next step trains; a publish
        still under way is awaited before the next one, or an evaluation."""
        await self._settle_publish()
        self.version += int(bump)
        if buffer is not None:
            await buffer.set_version.remote(self.version)
        delivery = publisher.publish(learners, self.version)  # the ranks are asked now, before the next step
        if wait:
            await delivery
        else:
            self._delivery = asyncio.ensure_future(delivery)

    async def _settle_publish(self) -> None:
        """Wait for the publish under way, if any (its failure is raised here)."""
        delivery, self._delivery = self._delivery, None
        if delivery is not None:
            await delivery

    def _drop_publish(self) -> None:
        """A run that stops with a publish under way no longer cares how it ends."""
        delivery, self._delivery = self._delivery, None
        if delivery is not None and not delivery.cancel() and not delivery.cancelled():
            delivery.exception()  # already over: its error is the stopped run's business, not the loop's log

    # -- the loop ---------------------------------------------------------------------------

    async def _warm_up(self, learners: Any, buffer: Any) -> None:
        for w in range(self.config.train.warmup_steps):
            with self.timer.phase("bc_step"):
                values = await learners.train_step(await buffer.warmup_batch.remote(), w, imitate=True)
            self.report("warmup", self.log.write("warmup", w, values))

    def _train_groups(self) -> Iterator[GroupSpec]:
        recorded = self.ledger.group_ids()
        groups = endless_groups(
            self.suite,
            self.config.env.train_split,
            run_seed=self.config.run.seed,
            group_size=self.config.rollout.group_size,
        )
        return (g for g in groups if g.group_id not in recorded)

    async def _step(self, learners: Any, publisher: Any, buffer: Any, *, began: float) -> dict[str, Any]:
        """One learner step; `began` is when its rollouts started (synchronous) or its wait did.
        The buffer makes the step's batch (advantages, this step's anchor) and the ranks fetch
        their shares from it: here, only the groups' summaries."""
        cfg = self.config
        taken = await buffer.take.remote(
            cfg.train.groups_per_step, step=self.step + 1, timeout_s=cfg.rollout.episode.episode_timeout_s * 4
        )
        rolled_out = time.monotonic()
        groups: list[GroupSummary] = taken.groups
        lr_scale = cfg.learner.lr_scale(self._progress())
        values = (
            await learners.train_step(taken.batch, self.step, lr_scale=lr_scale) if taken.samples else {"skipped": 1.0}
        )
        trained = time.monotonic()
        episodes = [t for g in groups for t in g.episodes]
        for group in groups:
            prom.STALENESS.observe(self.version - group.policy_version)
        values |= {
            "train_reward": sum(t.reward for t in episodes) / len(episodes),
            "episodes": len(episodes),
            "trained_samples": taken.samples,
            "staleness_max": max(self.version - g.policy_version for g in groups),
            **{
                f"done_{r}": sum(t.done_reason.value == r for t in episodes)
                for r in {t.done_reason.value for t in episodes}
            },
        }
        self.step += 1
        await self._publish(learners, publisher, buffer, wait=cfg.buffer.max_staleness == 0)
        # Where the step's wall time went: rollouts (or waiting for them), training, handing out weights
        # (with max_staleness ≥ 1: waiting for the previous publish and asking for this one).
        values |= {
            "time/rollouts_s": rolled_out - began,
            "time/train_s": trained - rolled_out,
            "time/publish_s": time.monotonic() - trained,
        }
        return self.log.write("train", self.step, values)

    def _progress(self) -> float:
        """How far the run has come, 0 to 1: by steps, or by the time budget if that ends it first."""
        cfg = self.config.train
        by_time = (time.monotonic() - self.rl_started) / cfg.time_budget_s if cfg.time_budget_s is not None else 0.0
        return min(1.0, max(self.step / cfg.steps, by_time))

    def _checkpoint_to_resume(self) -> Path | None:
        """The newest checkpoint, if the run has one and may resume."""
        from trainers.checkpoint import latest_checkpoint

        return latest_checkpoint(self.run_dir / "checkpoints") if self.config.run.resume else None

    def _resume_point(self, checkpoint: Path | None) -> dict[str, Any]:
        """The buffer's start: the policy version and the step to resume at, from the checkpoint's
        trainer.json (read here, so the buffer starts before the learners have loaded it)."""
        from trainers.checkpoint import read_info

        if checkpoint is None:
            return {"version": self.version, "resume_step": None}
        info = read_info(checkpoint)
        return {"version": info["version"], "resume_step": info["step"]}

    async def _resume(self, learners: Any, checkpoint: Path | None) -> bool:
        """Continue from `checkpoint` (None: start afresh); the metrics after its step (or all of
        them, with no checkpoint) will be written again."""
        if checkpoint is None:
            self.log.keep_until(None)
            return False
        info = await learners.load(str(checkpoint.absolute()))
        self.step, self.version = info["step"], info["version"]
        self.log.keep_until(self.step)
        self.report("resume", {"checkpoint": str(checkpoint), "step": self.step})
        return True

    async def run(self) -> dict[str, Any]:
        import ray

        from orchestrator.buffer import start_buffer
        from orchestrator.learner_batches import BatchPlan
        from orchestrator.learner_group import LearnerGroup
        from orchestrator.policy_server import start_policy_servers
        from orchestrator.weight_sync import WeightPublisher

        cfg = self.config
        self.started = time.monotonic()
        timer = self.timer  # since __init__: its `other_s` holds the imports above
        with timer.phase("model_check"):
            check_model_available(cfg.policy)  # seconds here, not minutes of actor restarts
        lag_monitor = prom.start_loop_lag_monitor()
        with timer.phase("ray_start"):
            connect_ray(cfg.ray.address)
        # Actors start in processes of their own: the learners and the policy engine load while
        # the oracle plays its episodes.
        with timer.phase("learners_start"):
            learners = LearnerGroup(self.model_config, cfg.learner)
            try:  # the ranks' GPUs first: the engines' must be others (the chart's engine pod)
                await learners.reserved()
            except BaseException:
                learners.shutdown()
                raise
            engines = start_policy_servers(cfg.policy)
        publisher = WeightPublisher(engines, cfg.policy.publish)  # type: ignore[union-attr]
        driver = RolloutDriver(cfg, policy_servers=engines)
        buffer: Any = None
        producer: asyncio.Task[None] | None = None
        warming: asyncio.Future[None] | None = None

        def rolled_out(group: GroupSummary) -> None:  # the worker put the group in the buffer
            prom.record_group(group)

        try:  # from here on, whatever stops the run (failed oracle episodes too) ends the actors
            checkpoint = self._checkpoint_to_resume()
            # The rollout workers (building their sandbox pools, then playing the oracle's episodes)
            # and the buffer start in processes of their own while the learners build the model.
            with timer.phase("pools_start"):
                await driver.start()
                warming = asyncio.ensure_future(driver.warm())
                buffer = start_buffer(self.ledger_location, cfg.buffer, **self._resume_point(checkpoint))
                HUB.watch("buffer", buffer)
            with timer.phase("oracle"):
                oracle = await self._oracle_transcripts(driver)
            with timer.phase("learners_ready"):  # the ranks' model build, where the oracle left any
                self.report("placement", {"learners": await learners.placement()})
                resumed = await self._resume(learners, checkpoint)
            with timer.phase("buffer_ready"):
                plan = BatchPlan(
                    cfg.learner.loss,
                    cfg.learner.num_learners,
                    cfg.run.seed,
                    cfg.train.anchor_batch,
                    cfg.train.warmup_batch,
                )
                await buffer.serve_learners.remote(plan, oracle)
            if not resumed:
                await self._evaluate(learners, buffer, None, oracle, "eval_initial")
                await self._warm_up(learners, buffer)
            with timer.phase("publish_start"):
                await publisher.prepare(learners)
                await self._publish(learners, publisher, buffer, bump=not resumed)
            with timer.phase("pools_ready"):  # what the workers' set-up did not finish beside the warm-up
                await warming
            if not resumed and cfg.train.warmup_steps:
                await self._checkpoint(learners)  # step 0: a run stopped from here on keeps its warm-up
            if not self._recorded("eval", 0):  # after the warm-up (a run resumed at step 0 may lack it)
                await self._evaluate(learners, buffer, driver, oracle, "eval")
            groups = self._train_groups()
            self.rl_started = time.monotonic()
            asynchronous = cfg.buffer.max_staleness > 0
            if asynchronous:  # rollouts run on while the learners train
                producer = asyncio.ensure_future(driver.run_groups(groups, rolled_out, buffer=buffer))
            while self.step < cfg.train.steps:
                if cfg.train.time_budget_s is not None and time.monotonic() - self.rl_started > cfg.train.time_budget_s:
                    self.report("budget", {"step": self.step, "time_budget_s": cfg.train.time_budget_s})
                    break
                began = time.monotonic()
                with timer.phase("rl_step"):
                    if not asynchronous:
                        step_groups = list(itertools.islice(groups, cfg.train.groups_per_step))
                        await driver.run_groups(step_groups, rolled_out, buffer=buffer)
                    record = await self._step(learners, publisher, buffer, began=began)
                self.report("train", record)
                if self.step % cfg.train.eval_every == 0:
                    await self._evaluate(learners, buffer, driver, oracle, "eval")
                if self.step % cfg.train.checkpoint_every == 0:
                    await self._checkpoint(learners)
            if producer is not None:
                await stop(producer)  # a Ctrl-C landing here still stops the run
            await self._settle_publish()
            if self.step % cfg.train.eval_every:
                await self._evaluate(learners, buffer, driver, oracle, "eval")
            await self._checkpoint(learners)
        finally:
            with timer.phase("shutdown"):
                for task in (producer, warming):
                    _discard(task)
                self._drop_publish()
                await driver.close()
                learners.shutdown()
                for engine in engines:
                    ray.kill(engine)
                if buffer is not None:
                    HUB.forget("buffer")
                    ray.kill(buffer)
                lag_monitor.cancel()
                self.log.close()
        return self.finish()

    def _recorded(self, kind: str, step: int) -> bool:
        return any(r["kind"] == kind and r["step"] == step for r in self.log.read())

    async def _checkpoint(self, learners: Any) -> None:
        # Absolute: every learner rank writes its shards there, from its own working directory
        # (on other nodes, through the same run-dir mount).
        directory = (self.run_dir / "checkpoints" / f"step-{self.step:06d}").absolute()
        with self.timer.phase("checkpoint"):
            await learners.save(str(directory), step=self.step, version=self.version)

    def finish(self, *, interrupted: bool = False) -> dict[str, Any]:
        """summary.json and plots/ from metrics.jsonl: for the whole run, or for what an
        interrupted one did."""
        from orchestrator.plots import plot_run

        records = self.log.read()
        summary = summarize_run(records, wall_s=time.monotonic() - self.started, config=self.config)
        summary["interrupted"] = interrupted
        summary["timings"] = self.timer.timings()
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_run(records, self.run_dir / "plots")
        return summary


def _discard(task: asyncio.Future[Any] | None) -> None:
    """A background task the stopped run no longer waits for: cancelled, or its outcome taken
    (an error it ended with is the stopped run's business, not the event loop's log)."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


def summarize_run(records: list[dict[str, Any]], *, wall_s: float, config: RunConfig) -> dict[str, Any]:
    """The headline figures of a run; those of evaluations it never reached are None."""
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    initial = next((r for r in records if r["kind"] == "eval_initial"), {})
    first, final = (evals[0], evals[-1]) if evals else ({}, {})
    recent = train[-10:]
    return {
        "heldout_env_ce": {
            "initial": initial.get("heldout_env_ce"),
            "after_warmup": first.get("heldout_env_ce"),
            "final": final.get("heldout_env_ce"),
            "fall_from_initial": _fall(initial, final),
            "fall_during_rl": _fall(first, final),
        },
        "train_env_ce": {"initial": initial.get("train_env_ce"), "final": final.get("train_env_ce")},
        "heldout_pass1": {"after_warmup": first.get("heldout_pass1"), "final": final.get("heldout_pass1")},
        "train_reward": {
            "first_steps": sum(r["train_reward"] for r in train[:10]) / max(len(train[:10]), 1),
            "last_steps": sum(r["train_reward"] for r in recent) / max(len(recent), 1),
        },
        "echo_lambda": train[-1].get("echo/lambda", 0.0) if train else None,
        "warmup_steps": sum(r["kind"] == "warmup" for r in records),
        "anchor_batch": config.train.anchor_batch,
        "rl_steps": train[-1]["step"] if train else 0,
        "wall_s": round(wall_s, 1),
    }


def _fall(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    """How far the held-out env-token CE fell from `before` to `after`, as a fraction."""
    if "heldout_env_ce" not in before or "heldout_env_ce" not in after:
        return None
    return 1 - after["heldout_env_ce"] / before["heldout_env_ce"]
