"""The `llm` proposer: a chat model behind any OpenAI-compatible API reads the incumbent skill
and a sample of scored train episodes (failures first), and writes the whole revised skill.

It is a `ChatPolicy`, so its requests retry like the agent's; a proposer API that stays down
raises `PolicyUnavailableError`, which stops the run cleanly, and a rerun resumes.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hillclimb.config.rollout import SamplingParams
from orchestrator.optimize.proposers import Evidence, Proposal, task_line
from trainers.policy.base import GenerateRequest
from trainers.policy.chat import ChatPolicy

INSTRUCTIONS = """You improve a skill document: Markdown that an AI agent reads in its system message \
before it works on a task in an environment. Below are the current skill and scored episodes the agent \
played with it (reward > 0 is a success; lines starting [harness] are the environment refusing an action). \
Edit the skill so that the agent fails less: add the rules, facts and short worked examples that would have \
turned failures into successes, and remove what misleads. Keep it compact: it is read on every turn. \
Reply with the complete revised skill inside one ```markdown fenced block, and nothing else."""

FENCED = re.compile(r"```(?:markdown|md)?[ \t]*\n(.*?)\n?```", re.DOTALL)


class LLMProposer:
    name = "llm"

    def __init__(
        self, policy: ChatPolicy, *, episodes_shown: int = 12, max_tokens: int = 2048, temperature: float = 0.7
    ) -> None:
        self.policy = policy
        self.episodes_shown = episodes_shown
        self.sampling = SamplingParams(max_new_tokens=max_tokens, temperature=temperature)

    def messages(self, evidence: Evidence) -> tuple[dict[str, str], ...]:
        shown = (evidence.failures + evidence.successes)[: self.episodes_shown]
        episodes = "\n\n".join(_episode_text(n, e) for n, e in enumerate(shown, 1))
        user = f"## Current skill\n\n{evidence.skill or '(empty)'}\n\n## Scored episodes\n\n{episodes or '(none)'}"
        return ({"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": user})

    async def propose(self, evidence: Evidence) -> Proposal:
        request = GenerateRequest(
            prompt_ids=(), seed=evidence.seed + evidence.iteration, messages=self.messages(evidence)
        )
        [generation] = await self.policy.generate([request], self.sampling)
        content = self.policy.tokenizer.decode(list(generation.token_ids))
        match = FENCED.search(content)
        text = match.group(1) if match else content
        cut = " (cut at max_tokens)" if generation.finish_reason == "length" else ""
        return Proposal(text.strip() + "\n", f"revised by {self.policy.model}{cut}", generation.usage or {})

    async def aclose(self) -> None:
        await self.policy.aclose()


def _episode_text(n: int, episode: dict[str, Any]) -> str:
    turns = "\n".join(
        f"  action: {json.dumps(action)}\n  result: {json.dumps(result[:400])}"
        for action, result in zip(episode["actions"], [*episode["observations"], ""], strict=False)
    )
    return (
        f"### Episode {n}: reward {episode['reward']:g} ({episode['done_reason']})\n"
        f"task: {task_line(episode['prompt'])}\n{turns}"
    )
