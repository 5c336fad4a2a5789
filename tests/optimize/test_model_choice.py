"""Model choice: quality against cost and latency on the optimizer's validation episodes, chosen by a
stated rule; the token counts are what each chat API reported billing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hillclimb.config.rollout import SamplingParams
from hillclimb.errors import ConfigError
from orchestrator.optimize.models import ModelRow, choose, model_row, parse_models, parse_prices
from orchestrator.optimize.scoring import Score
from tests.factories import trajectory
from tests.optimize.cli import run_optimize
from tests.optimize.skill_agent import SkillAgent
from tests.trainers.chat_server import ChatServer, toy_terminal_oracle
from trainers.policy.base import GenerateRequest
from trainers.policy.chat import ChatPolicy

REPO = Path(__file__).parents[2]


def _row(model: str, reward: float, tokens: int, usd: float | None = None, seconds: float = 1.0) -> ModelRow:
    return ModelRow(model, reward, reward, 10, tokens, 0, usd, seconds)


def test_models_and_prices_parse_or_say_what_is_wrong() -> None:
    a, b = parse_models("a, b@http://h:1/v1")
    assert (a.model, a.base_url, b.model, b.base_url, b.label) == ("a", None, "b", "http://h:1/v1", "b@http://h:1/v1")
    for bad, says in (("a", "at least two"), ("a,a", "named twice"), ("a,,b", "empty model name")):
        with pytest.raises(ConfigError, match=says):
            parse_models(bad)
    assert parse_prices(["a=0.15/0.6"]) == {"a": (0.15, 0.6)}
    with pytest.raises(ConfigError, match="MODEL=IN/OUT"):
        parse_prices(["a=cheap"])


def test_the_best_model_wins_unless_a_cheaper_one_is_within_the_tolerance() -> None:
    rows = [_row("big", 0.8, 9000, seconds=3.0), _row("small", 0.7, 1000, seconds=1.0), _row("bad", 0.2, 10)]
    chosen, rule = choose(rows, tolerance=0.0)
    assert chosen.model == "big" and "fewest tokens billed" in rule
    assert choose(rows, tolerance=0.15)[0].model == "small"
    priced = [_row("big", 0.8, 9000, usd=0.01), _row("small", 0.75, 1000, usd=0.02)]
    chosen, rule = choose(priced, tolerance=0.1)
    assert chosen.model == "big" and "fewest dollars" in rule  # dollars, not tokens, when all are priced
    tie = [_row("slow", 0.5, 100, seconds=2.0), _row("fast", 0.5, 100, seconds=1.0)]
    assert choose(tie, tolerance=0.0)[0].model == "fast"


def test_a_models_row_sums_billed_tokens_and_prices_them() -> None:
    episodes = tuple(
        trajectory(
            sample=i,
            task_id="t",
            reward=r,
            metadata={"usage": {"prompt_tokens": 100, "completion_tokens": 10}, "policy_s": s},
        )
        for i, (r, s) in enumerate([(1.0, 0.5), (0.0, 1.5), (1.0, 1.0)])
    )
    row = model_row("m", Score(episodes), (1.0, 10.0))
    assert (row.prompt_tokens, row.completion_tokens, row.episodes) == (300, 30, 3)
    assert row.usd == pytest.approx((300 * 1.0 + 30 * 10.0) / 1e6) and row.agent_s_per_episode == 1.0
    assert row.pass1 == pytest.approx(2 / 3)


async def test_the_chat_policy_reports_the_tokens_the_api_billed() -> None:
    server = ChatServer(lambda messages: "ls")
    await server.start()
    try:
        async with ChatPolicy(server.base_url, "fake-chat") as policy:
            request = GenerateRequest(prompt_ids=(), messages=({"role": "user", "content": "hi"},))
            [generation] = await policy.generate([request], SamplingParams())
    finally:
        await server.close()
    assert generation.usage is not None and generation.usage["completion_tokens"] == len("ls<|end|>")
    assert generation.usage["prompt_tokens"] > 0


@pytest.fixture
async def two_models() -> AsyncIterator[tuple[ChatServer, ChatServer]]:
    strong = ChatServer(toy_terminal_oracle(), served_model="strong")  # solves every task, in two turns
    weak = ChatServer(SkillAgent(), served_model="weak")  # solves the lucky quarter without a skill
    for server in (strong, weak):
        await server.start()
    yield strong, weak
    for server in (strong, weak):
        await server.close()


@pytest.mark.ray
@pytest.mark.root
@pytest.mark.slow
async def test_optimize_compares_models_and_chooses_by_its_rule(
    two_models: tuple[ChatServer, ChatServer], tmp_path: Path
) -> None:
    strong, weak = two_models
    models = f"strong@{strong.base_url},weak@{weak.base_url}"

    async def compare(*extra: str) -> dict:
        code, output = await run_optimize(
            *["toy_terminal", "--models", models, "--api-key-env", "", "--out", str(tmp_path / "opt")],
            *["--rollouts", "1", "--validation-tasks", "8", "--set", "policy.backoff_s=0.01", *extra],
        )
        assert code == 0 and "chosen:" in output, output[-3000:]
        return json.loads((tmp_path / "opt" / "models.json").read_text())

    result = await compare()
    rows = {r["model"].partition("@")[0]: r for r in result["rows"]}
    assert rows["strong"]["mean_reward"] == 1.0 > rows["weak"]["mean_reward"]
    assert rows["strong"]["completion_tokens"] > rows["weak"]["completion_tokens"] > 0  # two turns against one
    assert result["chosen"].startswith("strong@")
    requests = len(strong.requests) + len(weak.requests)
    cheap = await compare("--tolerance", "1", "--price", "strong=1/1", "--price", "weak=1/1")
    assert cheap["chosen"].startswith("weak@") and "fewest dollars" in cheap["rule"]
    assert len(strong.requests) + len(weak.requests) == requests + 2  # the two policy checks: the rest was ledgered
