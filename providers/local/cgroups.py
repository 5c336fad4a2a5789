"""Per-sandbox cgroups: memory, pids and CPU limits that hold for the whole process tree.

rlimits are per process (RLIMIT_AS) or per user (RLIMIT_NPROC); a cgroup bounds the
sandbox as a whole, and lets destroy kill every process in it. Groups are made under the
orchestrator's own cgroup so the machine's outer accounting still covers the sandboxes.

cgroup v1 (a hierarchy per controller) is used when its memory and pids hierarchies are
writable; cgroup v2 only where our cgroup already delegates memory and pids to children
(otherwise v2's "no internal processes" rule would mean moving the orchestrator itself).
Without either, the provider falls back to rlimits and says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from providers.contract import Resources

_CPU_PERIOD_US = 100_000


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """Controller name ('' for v2) → this process's cgroup path, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


class Cgroups:
    """Creates, fills, kills and removes the cgroup of each sandbox."""

    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version = version
        self._parents = dirs  # controller ('' for v2) → directory our sandboxes go under

    @classmethod
    def detect(cls, root: str = "/sys/fs/cgroup", proc_cgroup: str | None = None) -> Cgroups | None:
        if proc_cgroup is None:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        own = _own_paths(proc_cgroup)
        base = Path(root)
        v1 = {c: base / c / own[c].lstrip("/") / "hillclimb" for c in ("memory", "pids", "cpu") if c in own}
        if {"memory", "pids"} <= set(v1) and all(os.access(d.parent, os.W_OK) for d in v1.values()):
            return cls(1, v1)
        v2_own = base / own.get("", "/").lstrip("/")
        delegated = (
            (v2_own / "cgroup.subtree_control").read_text().split()
            if (v2_own / "cgroup.subtree_control").exists()
            else []
        )
        if {"memory", "pids"} <= set(delegated) and os.access(v2_own, os.W_OK):
            return cls(2, {"": v2_own / "hillclimb"})
        return None

    def describe(self) -> str:
        return f"cgroup v{self.version} under {', '.join(str(p) for p in self._parents.values())}"

    def _dirs(self, sandbox_id: str) -> list[Path]:
        return [parent / sandbox_id for parent in self._parents.values()]

    def create(self, sandbox_id: str, resources: Resources) -> list[str]:
        """Make the sandbox's group(s) with limits set; returns the directories to join."""
        memory = str(resources.memory_mb * 1024 * 1024)
        quota = str(int(resources.cpu * _CPU_PERIOD_US))
        if self.version == 1:
            limits = {
                "memory": {"memory.limit_in_bytes": memory},
                "pids": {"pids.max": str(resources.pids)},
                "cpu": {"cpu.cfs_period_us": str(_CPU_PERIOD_US), "cpu.cfs_quota_us": quota},
            }
        else:
            v2 = {
                "memory.max": memory,
                "memory.swap.max": "0",
                "pids.max": str(resources.pids),
                "cpu.max": f"{quota} {_CPU_PERIOD_US}",
            }
            limits = {"": v2}
        created = []
        for controller, parent in self._parents.items():
            group = parent / sandbox_id
            group.mkdir(parents=True, exist_ok=True)
            for name, value in limits.get(controller, {}).items():
                if (group / name).exists():
                    (group / name).write_text(value)
            created.append(str(group))
        return created

    def pids(self, sandbox_id: str) -> set[int]:
        found: set[int] = set()
        for group in self._dirs(sandbox_id):
            procs = group / "cgroup.procs"
            if procs.exists():
                found.update(int(p) for p in procs.read_text().split())
        return found

    def kill_all(self, sandbox_id: str) -> None:
        for pid in self.pids(sandbox_id):
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                os.kill(pid, signal.SIGKILL)

    def remove(self, sandbox_id: str) -> bool:
        """Remove the group(s); False while processes are still in them (the caller retries)."""
        done = True
        for group in self._dirs(sandbox_id):
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                done = False
        return done

    def memory_events(self, sandbox_id: str) -> dict[str, int]:
        """OOM kills and peak usage, when the kernel reports them (for destroy-time reports)."""
        group = (self._parents.get("memory") or self._parents.get("")) / sandbox_id  # type: ignore[operator]
        events: dict[str, int] = {}
        if self.version == 1:
            for name, key in (("memory.max_usage_in_bytes", "peak_bytes"), ("memory.failcnt", "limit_hits")):
                if (group / name).exists():
                    events[key] = int((group / name).read_text())
            oom = group / "memory.oom_control"
            if oom.exists():
                fields = dict(line.split() for line in oom.read_text().splitlines() if line.strip())
                events["oom_kills"] = int(fields.get("oom_kill", 0))
        elif (group / "memory.events").exists():
            fields = dict(line.split() for line in (group / "memory.events").read_text().splitlines())
            events["oom_kills"] = int(fields.get("oom_kill", 0))
        return events
