"""The terminal environment: a real bash shell per episode, with verifier-scored tasks."""

from envs.builtin.terminal.env import TerminalAction, TerminalEnv, TerminalObservation, TerminalState

__all__ = ["TerminalAction", "TerminalEnv", "TerminalObservation", "TerminalState"]
