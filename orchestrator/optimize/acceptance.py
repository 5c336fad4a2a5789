"""When a candidate skill replaces the incumbent: strictly better on validation, paired, by a
margin noise is unlikely to give.

Both skills play the same validation episodes (same tasks, same seeds), so the rule looks at
the per-episode differences d = candidate − incumbent:

- gain: Σd (additional successes, for 0/1 rewards) must be at least `min_gain` (> 0: strict);
- bootstrap (optional): resampling the validation *tasks* with replacement (an episode's
  samples share its task), the `1 − confidence` quantile of the mean difference must be > 0.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from dataclasses import dataclass

from orchestrator.optimize.scoring import Score
from orchestrator.optimize.uses import SplitTooSmallError
from orchestrator.rollout import derive_seed

BOOTSTRAP_MIN_TASKS = 5
"""A bootstrap over fewer validation tasks has too few distinct resamples to bound anything."""


@dataclass(frozen=True)
class Decision:
    accepted: bool
    gain: float
    """Σ(candidate − incumbent) over the paired validation episodes."""
    reason: str
    lower_bound: float | None = None
    """The bootstrap's bound on the mean paired difference, when the rule uses one."""


@dataclass(frozen=True)
class AcceptanceRule:
    min_gain: float = 1.0
    bootstrap_confidence: float | None = None
    resamples: int = 2000

    def __post_init__(self) -> None:
        if not self.min_gain > 0:
            raise ValueError(f"min_gain must be > 0 (acceptance is strict improvement), not {self.min_gain}")
        if self.bootstrap_confidence is not None and not 0.5 <= self.bootstrap_confidence < 1:
            raise ValueError(f"bootstrap confidence must be in [0.5, 1), not {self.bootstrap_confidence}")

    def describe(self) -> str:
        rule = f"accept when the validation reward summed over paired episodes rises by ≥ {self.min_gain:g}"
        if self.bootstrap_confidence is not None:
            rule += (
                f" and a paired bootstrap over tasks ({self.resamples} resamples) bounds the mean gain "
                f"above 0 at {self.bootstrap_confidence:.0%} confidence"
            )
        return rule

    def check_decidable(self, validation_tasks: int, rollouts: int) -> None:
        """Refuse, up front, a validation set on which this rule could never accept anything."""
        episodes = validation_tasks * rollouts
        if episodes < self.min_gain:
            raise SplitTooSmallError(
                f"{validation_tasks} validation tasks x {rollouts} rollouts = {episodes} episodes cannot show a "
                f"gain of {self.min_gain:g}: raise --validation-tasks or --rollouts, or lower --min-gain"
            )
        if self.bootstrap_confidence is not None and validation_tasks < BOOTSTRAP_MIN_TASKS:
            raise SplitTooSmallError(
                f"a bootstrap over {validation_tasks} validation tasks bounds nothing: give at least "
                f"{BOOTSTRAP_MIN_TASKS} (--validation-tasks)"
            )

    def decide(self, incumbent: Score, candidate: Score, *, seed: int) -> Decision:
        old, new = incumbent.rewards, candidate.rewards
        if old.keys() != new.keys():
            raise ValueError("the two skills were scored on different validation episodes: they cannot be paired")
        differences = {key: new[key] - old[key] for key in old}
        gain = sum(differences.values())
        if gain < self.min_gain:
            return Decision(False, gain, f"validation gain {gain:+g} < {self.min_gain:g}")
        if self.bootstrap_confidence is None:
            return Decision(True, gain, f"validation gain {gain:+g} ≥ {self.min_gain:g}")
        bound = self._lower_bound(differences, seed)
        if bound <= 0:
            return Decision(
                False, gain, f"validation gain {gain:+g}, but its bootstrap bound {bound:+.3f} is not > 0", bound
            )
        return Decision(True, gain, f"validation gain {gain:+g}, bootstrap bound {bound:+.3f} > 0", bound)

    def _lower_bound(self, differences: dict[tuple[str, int], float], seed: int) -> float:
        by_task: dict[str, list[float]] = defaultdict(list)
        for (task, _), d in sorted(differences.items()):
            by_task[task].append(d)
        tasks = list(by_task.values())
        rng = random.Random(derive_seed(seed, "optimize-bootstrap"))
        means = sorted(
            statistics.fmean(d for task in rng.choices(tasks, k=len(tasks)) for d in task)
            for _ in range(self.resamples)
        )
        return means[int((1 - self.bootstrap_confidence) * self.resamples)]  # type: ignore[operator]
