"""Scraping a run's Prometheus /metrics while it runs, for the tests of the metrics hub."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the endpoint: (name, labels) → value."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def lease_counts(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, float]:
    """Leases granted so far, by the process that reported them (`source`)."""
    counts: dict[str, float] = {}
    for (name, labels), value in samples.items():
        if name == "hillclimb_lease_wait_seconds_count":
            source = dict(labels)["source"]
            counts[source] = counts.get(source, 0.0) + value
    return counts


@dataclass
class ScrapedRun:
    returncode: int
    stdout: str
    stderr: str
    scrapes: list[dict[tuple[str, frozenset[tuple[str, str]]], float]] = field(default_factory=list)


def run_and_scrape(command: list[str], cwd: Path, timeout_s: float, every_s: float = 0.2) -> ScrapedRun:
    """Run a hillclimb command that prints `metrics: <url>`, scraping the URL until it exits."""
    environ = {**os.environ, "COLUMNS": "200"}
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=lambda: out.extend(process.stdout), daemon=True),  # type: ignore[arg-type]
        threading.Thread(target=lambda: err.extend(process.stderr), daemon=True),  # type: ignore[arg-type]
    ]
    for reader in readers:
        reader.start()
    run = ScrapedRun(returncode=-1, stdout="", stderr="")
    deadline = time.monotonic() + timeout_s
    url = None
    try:
        while process.poll() is None and time.monotonic() < deadline:
            url = url or next((m.group(0) for line in list(out) if (m := re.search(r"http://\S+/metrics", line))), None)
            if url is not None:
                with contextlib.suppress(OSError):  # the run may close its port between two scrapes
                    run.scrapes.append(scrape(url))
            time.sleep(every_s)
        run.returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for reader in readers:
            reader.join(timeout=10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    run.stdout, run.stderr = "".join(out), "".join(err)
    return run
