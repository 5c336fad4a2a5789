"""One /metrics for a run: the driver's own figures and every Ray actor's, gathered at scrape time."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from envs.authoring.registry import load_suite
from hillclimb.config import load_config
from orchestrator.driver import RolloutDriver
from orchestrator.metrics_hub import MetricsHub, serve_metrics
from orchestrator.schedule import round_of_groups
from tests.orchestrator.helpers import FailingMetrics, GatedScriptedPolicy, StuckMetrics
from tests.scrape import lease_counts, run_and_scrape, scrape

REPO = Path(__file__).parents[2]
FAILURES = "hillclimb_metrics_scrape_failures"


@pytest.mark.ray
@pytest.mark.root
async def test_a_scrape_during_a_run_sees_each_workers_sandboxes_and_leases(ray_local: None, tmp_path: Path) -> None:
    config = load_config(
        None, [f"run.dir={tmp_path}", "ray.num_workers=2", "rollout.group_size=2", "rollout.concurrency=4"]
    )
    groups = round_of_groups(load_suite("toy_terminal"), "train", run_seed=0, group_size=2, round_index=0)[:8]
    url = serve_metrics(0)
    # Leases this process granted before (earlier tests' in-process pools): the run adds none.
    leased_here_before = lease_counts(await asyncio.to_thread(scrape, url)).get("driver", 0)
    # Leases come before the first turn, and no turn is taken until the gate opens: the run stays live
    # until a scrape has seen both workers' leases, however slow the scrapes on a loaded host.
    gate = tmp_path / "go"
    driver = RolloutDriver(config, policy=GatedScriptedPolicy(gate))
    await driver.start()
    try:
        run = asyncio.ensure_future(driver.run_groups(groups, lambda g: None))
        seen: dict[str, float] = {}
        try:
            async with asyncio.timeout(120):  # a hang guard
                while not run.done():
                    samples = await asyncio.to_thread(scrape, url)
                    seen = lease_counts(samples)
                    if all(seen.get(f"worker-{i}", 0) > 0 for i in range(2)):
                        break
                    await asyncio.sleep(0.05)
        finally:
            gate.touch()
        assert not run.done(), "the run ended before a scrape saw both workers' leases"
        assert all(seen[f"worker-{i}"] > 0 for i in range(2)), seen
        assert seen.get("driver", 0) == leased_here_before  # pools live in the workers, not here
        names = {(name, dict(labels).get("source")) for name, labels in samples}
        for worker in ("worker-0", "worker-1"):
            assert ("hillclimb_sandboxes", worker) in names
            assert ("hillclimb_event_loop_lag_seconds", worker) in names  # each worker's loop is watched
        await run
    finally:
        await driver.close()
    assert not any(name[1] and dict(name[1]).get("source", "").startswith("worker") for name in scrape(url))


@pytest.mark.ray
def test_an_actor_that_does_not_answer_is_left_out_not_waited_for(
    ray_local: None, caplog: pytest.LogCaptureFixture
) -> None:
    import ray

    stuck = ray.remote(num_cpus=0)(StuckMetrics).remote()
    hub = MetricsHub(timeout_s=0.3)
    hub.watch("worker-7", stuck)
    try:
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="hillclimb.orchestrator.metrics"):
            families = list(hub.collect())
        assert time.monotonic() - started < 20  # not the 30 s the actor sleeps
        assert families and {s.labels["source"] for f in families for s in f.samples} == {"driver"}
        assert any("worker-7: no answer within 0.3 s" in r.getMessage() for r in caplog.records)
    finally:
        ray.kill(stuck)


@pytest.mark.ray
def test_scrapes_that_leave_actors_out_are_counted_each_and_logged_once_a_minute_per_cause(
    ray_local: None, caplog: pytest.LogCaptureFixture
) -> None:
    import ray

    now = [1000.0]
    hub = MetricsHub(timeout_s=1.0, clock=lambda: now[0])
    actors = {
        "worker-0": ray.remote(num_cpus=0)(StuckMetrics).remote(),
        "worker-1": ray.remote(num_cpus=0)(StuckMetrics).remote(),
        "buffer": ray.remote(num_cpus=0)(FailingMetrics).remote(),
    }
    for source, actor in actors.items():
        ray.get(actor.__ray_ready__.remote(), timeout=120)  # started: the failing one answers in time
        hub.watch(source, actor)
    before = {source: _failures(source) for source in actors}
    try:
        with caplog.at_level("WARNING", logger="hillclimb.orchestrator.metrics"):
            for _ in range(3):  # a minute of scrapes every 20 s, the clock advanced by hand
                families = list(hub.collect())
                now[0] += 20.0
            lines_in_the_first_minute = _hub_lines(caplog)
            list(hub.collect())  # 60 s after the first lines: one more of each
        lines = _hub_lines(caplog)
    finally:
        for actor in actors.values():
            ray.kill(actor)
    assert {source: _failures(source, minus=before[source]) for source in actors} == {
        "worker-0": {"timeout": 4, "error": 0},
        "worker-1": {"timeout": 4, "error": 0},
        "buffer": {"timeout": 0, "error": 4},
    }
    # The counter is in the scrape itself, counting that scrape's own failures.
    (family,) = [f for f in families if f.name == FAILURES]
    scraped = {(s.labels["actor"], s.labels["cause"]): s.value for s in family.samples if s.name == f"{FAILURES}_total"}
    assert scraped[("worker-0", "timeout")] == before["worker-0"]["timeout"] + 3
    assert len(lines_in_the_first_minute) == 2, lines_in_the_first_minute  # one per cause, not 2 × 3
    timeout_line, error_line = lines_in_the_first_minute
    assert timeout_line.startswith(
        "metrics: left out of a scrape: worker-0: no answer within 1 s, worker-1: no answer within 1 s ("
    )
    assert error_line.startswith("metrics: left out of a scrape: buffer: ValueError: registry is broken (")
    assert len(lines) == 4 and all("2 more such scrape(s) since the last line" in line for line in lines[2:]), lines


def _hub_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hillclimb.orchestrator.metrics"]


def _failures(source: str, minus: dict[str, float] | None = None) -> dict[str, float]:
    """This process's count of scrapes that left `source` out, by cause (less `minus`)."""
    return {
        cause: (REGISTRY.get_sample_value(f"{FAILURES}_total", {"actor": source, "cause": cause}) or 0.0)
        - (minus or {}).get(cause, 0.0)
        for cause in ("timeout", "error")
    }


@pytest.mark.ray
@pytest.mark.root
@pytest.mark.slow
def test_hillclimb_rollout_serves_its_workers_metrics(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "orchestrator", "rollout", "configs/rollout_toy.yaml", "--metrics-port", "0",
        "--set", f"run.dir={tmp_path}", "--set", "rollout.group_size=8",
    ]  # fmt: skip
    run = run_and_scrape(command, cwd=REPO, timeout_s=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    during = [lease_counts(samples).get("worker-0", 0) for samples in run.scrapes]
    assert max(during, default=0) > 0, f"{len(run.scrapes)} scrapes, none with a worker's leases"


def test_the_run_serves_metrics_on_its_configured_address(capsys: pytest.CaptureFixture[str]) -> None:
    """run.metrics_host: 127.0.0.1 by default; a pod sets 0.0.0.0 to be scraped (here another loopback address)."""
    from orchestrator.commands.rollout import serve_run_metrics

    serve_run_metrics(load_config(None, ["run.metrics_host=127.0.0.2", "run.metrics_port=0"]).run)
    url = capsys.readouterr().out.split("metrics: ", 1)[1].split()[0]
    assert url.startswith("http://127.0.0.2:")
    assert scrape(url)  # served there
