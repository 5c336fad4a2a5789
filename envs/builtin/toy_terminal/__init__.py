"""The toy terminal: a deterministic, read-only pretend shell for world-model experiments."""

from envs.builtin.toy_terminal.env import ToyTerminalAction, ToyTerminalEnv, ToyTerminalObservation, ToyTerminalState

__all__ = ["ToyTerminalAction", "ToyTerminalEnv", "ToyTerminalObservation", "ToyTerminalState"]
