"""Model choice, the other non-parametric lever: the same skill on the same validation episodes,
model by model, then quality against cost and latency, and a choice by a stated rule.

    --models A,B@URL,C ─► one Scorer per model (its own ledger: a rerun pays for nothing)
        ─► per model: mean reward and pass@1, tokens billed (the API's `usage`), dollars (if priced),
           seconds the agent's API took per episode
        ─► choose: the best mean reward, and among models within `tolerance` of it the cheapest
           (dollars if every one is priced, else tokens), then the fastest

The validation tasks are the optimizer's own (train split, seeded), never the test split.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hillclimb.config.run import RunConfig
from hillclimb.errors import ConfigError
from orchestrator.optimize.loop import Progress
from orchestrator.optimize.scoring import Score, Scorer
from orchestrator.schedule import GroupSpec


@dataclass(frozen=True)
class ModelChoice:
    model: str
    base_url: str | None
    """None: the agent's `--base-url`."""

    @property
    def label(self) -> str:
        return self.model if self.base_url is None else f"{self.model}@{self.base_url}"


@dataclass(frozen=True)
class ModelRow:
    model: str
    mean_reward: float
    pass1: float
    episodes: int
    prompt_tokens: int
    completion_tokens: int
    usd: float | None
    agent_s_per_episode: float


def parse_models(text: str) -> list[ModelChoice]:
    """`A,B@http://host:8000/v1,C`: each a model name, optionally at its own endpoint."""
    choices = []
    for part in (p.strip() for p in text.split(",")):
        model, _, url = part.partition("@")
        if not model:
            raise ConfigError(f"--models {text!r}: an empty model name; write A,B or A,B@http://host:port/v1")
        choices.append(ModelChoice(model, url or None))
    labels = [c.label for c in choices]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--models {text!r}: a model is named twice")
    if len(choices) < 2:
        raise ConfigError(f"--models {text!r}: name at least two models to choose between")
    return choices


def parse_prices(items: list[str]) -> dict[str, tuple[float, float]]:
    """`MODEL=IN/OUT`, US dollars per million prompt and completion tokens."""
    prices = {}
    for item in items:
        model, _, rates = item.partition("=")
        try:
            prompt, completion = (float(r) for r in rates.split("/"))
        except ValueError:
            raise ConfigError(
                f"--price {item!r}: expected MODEL=IN/OUT in dollars per million tokens, e.g. m=0.15/0.6"
            ) from None
        prices[model] = (prompt, completion)
    return prices


def model_row(model: str, score: Score, price: tuple[float, float] | None) -> ModelRow:
    usage = [t.metadata.get("usage", {}) for t in score.episodes]
    prompt = sum(u.get("prompt_tokens", 0) for u in usage)
    completion = sum(u.get("completion_tokens", 0) for u in usage)
    usd = None if price is None else (prompt * price[0] + completion * price[1]) / 1e6
    seconds = [float(t.metadata.get("policy_s", 0.0)) for t in score.episodes]
    return ModelRow(
        model, score.mean, score.pass1, len(score.episodes), prompt, completion, usd, statistics.median(seconds)
    )


def choose(rows: list[ModelRow], tolerance: float) -> tuple[ModelRow, str]:
    """The chosen model, and the rule as it applied."""
    best = max(r.mean_reward for r in rows)
    near = [r for r in rows if r.mean_reward >= best - tolerance]
    priced = all(r.usd is not None for r in near)
    cost = "dollars" if priced else "tokens billed"
    chosen = min(
        near, key=lambda r: (r.usd if priced else r.prompt_tokens + r.completion_tokens, r.agent_s_per_episode)
    )
    rule = (
        f"the best validation mean reward ({best:.3f}); among the {len(near)} model(s) within {tolerance:g} of it, "
        f"the fewest {cost}, then the fastest"
    )
    return chosen, rule


async def compare_models(
    choices: list[ModelChoice],
    config_for: Callable[[ModelChoice], RunConfig],
    skill: str,
    validation: list[GroupSpec],
    out: Path,
    prices: dict[str, tuple[float, float]],
    tolerance: float,
    progress: Progress,
) -> dict[str, Any]:
    rows = []
    for n, choice in enumerate(choices):
        scorer = Scorer(config_for(choice), out / "models" / f"{n}-{_slug(choice.label)}", frozenset())
        score = await scorer.score(
            skill, validation, progress(f"{choice.label}, validation", sum(len(g.seeds) for g in validation))
        )
        rows.append(model_row(choice.label, score, prices.get(choice.model)))
    chosen, rule = choose(rows, tolerance)
    return {"rows": [asdict(r) for r in rows], "chosen": chosen.model, "rule": rule}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:80]
