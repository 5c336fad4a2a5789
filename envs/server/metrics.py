"""What the environment's own code costs, apart from the server around it (`GET /metrics`).

    hillclimb_env_calls_total{call="step"} 1200
    hillclimb_env_call_seconds_total{call="step"} 0.0461

The seconds are timed around the environment's `reset`/`step` alone (in its session
thread, for sync environments): no action parsing, no observation encoding, no wire. Set
beside a client's round trip, they tell a slow environment from a slow platform, and
they are timed where the environment really runs: inside its sandbox, where every
message wakes a sleeping process, not on a warm loop in the caller.
"""

from __future__ import annotations

import re
import threading

CALLS = ("reset", "step")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format

_SAMPLE = re.compile(r'^(hillclimb_env_[a-z_]+)(?:\{call="([a-z]+)"\})? (\S+)$')


class EnvCallStats:
    """Counts and seconds of the environment's reset and step calls, over every session of a server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # sync environments report from their session threads
        self.calls = dict.fromkeys(CALLS, 0)
        self.seconds = dict.fromkeys(CALLS, 0.0)

    def add(self, call: str, seconds: float) -> None:
        with self._lock:
            self.calls[call] += 1
            self.seconds[call] += seconds

    def render(self, active_sessions: int, max_sessions: int) -> bytes:
        """Prometheus' text exposition format (version 0.0.4)."""
        with self._lock:
            calls, seconds = dict(self.calls), dict(self.seconds)
        lines = [
            "# HELP hillclimb_env_calls_total Calls into the environment's reset and step.",
            "# TYPE hillclimb_env_calls_total counter",
            *(f'hillclimb_env_calls_total{{call="{c}"}} {calls[c]}' for c in CALLS),
            "# HELP hillclimb_env_call_seconds_total Seconds inside the environment's reset and step.",
            "# TYPE hillclimb_env_call_seconds_total counter",
            *(f'hillclimb_env_call_seconds_total{{call="{c}"}} {seconds[c]!r}' for c in CALLS),
            "# HELP hillclimb_env_sessions Sessions open now (WebSocket and HTTP binding).",
            "# TYPE hillclimb_env_sessions gauge",
            f"hillclimb_env_sessions {active_sessions}",
            "# HELP hillclimb_env_max_sessions Sessions this server takes at once.",
            "# TYPE hillclimb_env_max_sessions gauge",
            f"hillclimb_env_max_sessions {max_sessions}",
        ]
        return ("\n".join(lines) + "\n").encode()


def parse_metrics(text: str) -> dict[str, float]:
    """`render()`'s samples as `{"name" or "name{call}": value}`: `calls_total{step}` and so on."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            name, call, value = match.groups()
            key = name.removeprefix("hillclimb_env_") + (f"{{{call}}}" if call else "")
            samples[key] = float(value)
    return samples
