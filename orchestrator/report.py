"""Evaluation summaries: pass@k per split (the unbiased estimator), rewards, done reasons."""

from __future__ import annotations

import collections
from math import comb

from pydantic import BaseModel

from trainers.trajectory import Trajectory


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples, drawn without replacement from n with c correct, is correct)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}")
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


class SplitReport(BaseModel):
    split: str
    tasks: int
    episodes: int
    pass_at: dict[int, float]
    mean_reward: float
    done_reasons: dict[str, int]


def summarize(trajectories: list[Trajectory], ks: list[int]) -> list[SplitReport]:
    """One report per split; a task's success is reward > 0 on an episode that finished."""
    by_split: dict[str, dict[str, list[Trajectory]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for t in trajectories:
        by_split[t.split][t.task_id].append(t)
    reports = []
    for split, tasks in sorted(by_split.items()):
        episodes = [t for ts in tasks.values() for t in ts]
        pass_at = {
            k: sum(pass_at_k(len(ts), sum(t.reward > 0 for t in ts), k) for ts in tasks.values()) / len(tasks)
            for k in ks
        }
        reasons = collections.Counter(t.done_reason.value for t in episodes)
        reports.append(
            SplitReport(
                split=split,
                tasks=len(tasks),
                episodes=len(episodes),
                pass_at=pass_at,
                mean_reward=sum(t.reward for t in episodes) / len(episodes),
                done_reasons=dict(reasons),
            )
        )
    return reports
