"""A three-node Ray cluster on this machine (`ray.cluster_utils.Cluster`), joined by this process:
a head with no role (where the driver runs) and two nodes offering the custom resource
`learner_node`, each with one CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def three_node_cluster() -> Iterator[tuple[Any, dict[str, Any]]]:
    """Yields the cluster and its two role nodes, by node id."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=1, resources={"learner_node": 1}) for _ in range(2)]
    ray.init(address=cluster.address, include_dashboard=False, logging_level="ERROR")
    cluster.wait_for_nodes()
    try:
        yield cluster, {node.node_id: node for node in nodes}
    finally:
        ray.shutdown()
        cluster.shutdown()
