"""Token provenance: every token of a trajectory carries exactly one role.

GRPO trains ACTION tokens, ECHO trains ENV tokens, nothing trains the rest. Role arrays
are aligned with the token ids; losses shift them by one so that a position's role is
the role of the token it predicts.
"""

from enum import IntEnum


class Role(IntEnum):
    PROMPT = 0
    """The task prompt and system text the harness starts with."""
    ACTION = 1
    """Sampled by the policy, verbatim, never re-tokenized."""
    ENV = 2
    """The environment's own output (observations)."""
    SCAFFOLD = 3
    """Template text the harness adds around turns (chat markup, `$ ` prompts)."""
    WARNING = 4
    """Harness messages such as format warnings."""
