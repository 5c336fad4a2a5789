"""Episodes played out through the real plain-text renderer and byte tokenizer, for tests that
read runs back: every role appears, and the text of each is known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hillclimb.config import RunConfig, load_config
from orchestrator.ledger import Ledger
from orchestrator.render import PlainTextRenderer, Transcript
from tests.factories import trajectory
from trainers.tokenizer import ByteTokenizer
from trainers.trajectory import DoneReason, Trajectory, TrajectoryGroup

PROMPT = "Which disk is full? Answer with `answer: X`."
ACTION = "cat app.log\n"
OBSERVATION = "ERROR disk /dev/sdb is full\n"
WARNING = "invalid action: empty action"
ANSWER = "answer: /dev/sdb\n"


def played_episode(
    group_id: str, task_id: str, *, split: str = "heldout", sample: int = 0, reward: float = 1.0
) -> Trajectory:
    tokenizer = ByteTokenizer()
    renderer = PlainTextRenderer(tokenizer, bos_token_id=tokenizer.bos_token_id, action_prompt="$ ")
    transcript = renderer.start(PROMPT)
    _act(renderer, transcript, ACTION)
    renderer.add_observation(transcript, OBSERVATION)
    _act(renderer, transcript, "\n")  # an empty command: the harness warns
    renderer.add_warning(transcript, WARNING)
    _act(renderer, transcript, ANSWER)
    return trajectory(
        group_id,
        sample,
        task_id=task_id,
        split=split,
        version=3,
        token_ids=transcript.ids,
        roles=transcript.roles,
        logprobs=transcript.logprobs,
        reward=reward,
        done=DoneReason.FINISHED if reward else DoneReason.STEP_LIMIT,
        turns=3,
    )


def _act(renderer: PlainTextRenderer, transcript: Transcript, text: str) -> None:
    ids = tuple(renderer.tokenizer.encode(text))
    renderer.add_action(transcript, ids, tuple(-0.5 for _ in ids))


def write_run(runs: Path, name: str, *overrides: str) -> tuple[Path, RunConfig]:
    """A run directory with its resolved config.json, as `prepare_run_dir` leaves it."""
    config = load_config(None, [f"run.name={name}", f"run.dir={runs}", *overrides])
    run_dir = runs / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2))
    return run_dir, config


def record_groups(ledger_dir: Path, groups: dict[str, list[dict[str, Any]]]) -> None:
    """Each group's episodes (keyword arguments of `played_episode`) into the ledger at `ledger_dir`."""
    ledger = Ledger(ledger_dir)
    for group_id, episodes in groups.items():
        ledger.append(TrajectoryGroup.of([played_episode(group_id, **e) for e in episodes]))
