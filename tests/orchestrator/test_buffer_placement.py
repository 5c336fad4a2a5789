"""The trajectory buffer actor runs beside its ledger on a simulated three-node Ray cluster: on
the driver's node when the ledger is on a disk, where Ray alone would often place it on
another node; anywhere when the ledger is on shared storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.buffer import BufferConfig, placement, start_buffer
from orchestrator.ledger import Ledger
from tests.factories import group

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BUFFERS = 5


def _node_of(actor: object) -> str:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))  # type: ignore[attr-defined]


def test_the_buffer_of_a_local_ledger_runs_on_the_drivers_node(
    simulated_cluster: dict[str, str], tmp_path: Path
) -> None:
    import ray

    driver_node = ray.get_runtime_context().get_node_id()
    assert driver_node not in simulated_cluster  # the driver is on the head
    strategy = placement(str(tmp_path / "ledger"))["scheduling_strategy"]
    assert (strategy.node_id, strategy.soft) == (driver_node, False)
    # Unpinned, Ray puts an actor that reserves nothing on any of the three nodes (about half on
    # the head, measured): five buffers all on the driver's node are pinned, bar a 3% chance.
    locations = [str(tmp_path / f"ledger-{i}") for i in range(BUFFERS)]
    buffers = [start_buffer(location, BufferConfig(), version=0, resume_step=None) for location in locations]
    try:
        assert [_node_of(buffer) for buffer in buffers] == [driver_node] * BUFFERS
        assert ray.get(buffers[0].put.remote(group("a"))) == "admitted"
        assert Ledger(locations[0]).group_ids() == {"a"}  # written where the driver reads
    finally:
        for buffer in buffers:
            ray.kill(buffer)


def test_a_ledger_on_shared_storage_pins_nothing() -> None:
    assert placement("s3://ledgers/run-1/ledger?endpoint_override=127.0.0.1:9000&scheme=http") == {}
    assert placement("gs://ledgers/run-1/ledger") == {}
