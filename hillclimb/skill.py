"""A skill document: Markdown the agent reads in its system message, learned by `hillclimb
optimize` with weights frozen, then used by `hillclimb train --skill` and `hillclimb eval --skill`.

    --skill FILE ─► read_skill (UTF-8 text, or a SkillFileError naming the file and byte)
                 ─► with_skill(config) ─► rollout.skill ─► the renderer's system message
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from hillclimb.config.rollout import MAX_SKILL_CHARS
from hillclimb.config.run import RunConfig
from hillclimb.errors import HillclimbError


class SkillFileError(HillclimbError, ValueError):
    """A skill file that cannot be read as a skill: missing, not UTF-8 text, or too long."""


def read_skill(path: Path) -> str:
    """The file's text; refuses anything but UTF-8 text of at most `MAX_SKILL_CHARS` characters."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SkillFileError(f"skill file {path}: {e.strerror or e}", path=str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SkillFileError(
            f"skill file {path} is not UTF-8 text (byte {e.start} is {data[e.start]:#04x}): a skill is Markdown",
            path=str(path),
        ) from None
    problem = text_problem(text, MAX_SKILL_CHARS)
    if problem:
        raise SkillFileError(f"skill file {path}: {problem}", path=str(path))
    return text


def text_problem(text: object, max_chars: int) -> str | None:
    """Why `text` cannot be a skill (not a string, control characters, over `max_chars`), or None."""
    if not isinstance(text, str):
        return f"a skill is text, not {type(text).__name__}"
    control = next((c for c in text if ord(c) < 32 and c not in "\n\t\r"), None)
    if control is not None:
        return f"holds the control character {control!r} at {text.index(control)}: a skill is Markdown text"
    if len(text) > max_chars:
        return f"{len(text)} characters, over the cap of {max_chars}"
    return None


def skill_sha(skill: str) -> str:
    """A skill's name by content: run directories, ledgers and histories tell skills apart by it."""
    return hashlib.sha256(skill.encode()).hexdigest()[:16]


def system_text(system_prompt: str | None, skill: str | None) -> str | None:
    """The system message: the environment's own prompt, then the skill, verbatim."""
    parts = [part for part in (system_prompt, skill) if part]
    return "\n\n".join(parts) if parts else None


def with_skill(config: RunConfig, skill: str | None) -> RunConfig:
    """`config` with `rollout.skill` set (None: none), validated like any other key."""
    tree = config.model_dump(mode="json")
    tree["rollout"]["skill"] = skill
    return RunConfig.model_validate(tree)
