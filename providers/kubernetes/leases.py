"""Run liveness on a cluster: a `coordination.k8s.io` Lease per process that holds a run's
sandboxes, in the sandbox namespace (the rules: providers.liveness).

    Lease run-<digest of the run id>-<random>     labels hillclimb.dev/run-id, hillclimb.dev/role=run-lease
        holderIdentity        <host>.<pid>
        leaseDurationSeconds  3 × the renew interval
        renewTime             renewed every interval by a thread of the holder

A beat file's lock cannot be seen from another pod, so a reaper anywhere in the cluster reads
renew times instead: a Lease renewed within its duration is alive. Renew times are the
holders' clocks read against the reaper's: the duration's slack (two intervals) absorbs skew.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import os
import secrets
import threading
from collections.abc import Callable
from typing import Any

from providers.contract import LABEL_RUN, host_label
from providers.kubernetes.egress import SANDBOX_ROLE
from providers.liveness import RunState

log = logging.getLogger("hillclimb.providers.kubernetes")

RUN_LEASE = "run-lease"
"""The role label of a run's Lease (a sandbox pod's is 'sandbox')."""
RENEW_INTERVAL_S = 10.0
MISSED_RENEWALS = 3
"""A Lease unrenewed for this many intervals is a dead process's."""

Translate = Callable[[Any, str, str], Exception]
"""The provider's `_translate(api_error, verb, resource)`: an API error as the contract's."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _micro_time(at: datetime.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_lease(run_id: str, namespace: str, interval_s: float = RENEW_INTERVAL_S) -> dict[str, Any]:
    """A new Lease for one holder of `run_id`'s sandboxes, renewed now."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:12]
    now = _micro_time(_now())
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": f"run-{digest}-{secrets.token_hex(4)}",
            "namespace": namespace,
            "labels": {LABEL_RUN: run_id, SANDBOX_ROLE: RUN_LEASE},
        },
        "spec": {
            "holderIdentity": f"{host_label()}.{os.getpid()}",
            "leaseDurationSeconds": math.ceil(MISSED_RENEWALS * interval_s),
            "acquireTime": now,
            "renewTime": now,
        },
    }


def renewed_within(lease: Any, now: datetime.datetime) -> bool:
    """Whether `lease` (the client's V1Lease) was renewed within its duration."""
    spec = lease.spec
    if spec is None or spec.renew_time is None or spec.lease_duration_seconds is None:
        return True  # being written: a holder starting
    return now - spec.renew_time <= datetime.timedelta(seconds=spec.lease_duration_seconds)


class LeaseBeat:
    """One holder's Lease, renewed by a thread until `stop()` deletes it."""

    def __init__(self, liveness: LeaseLiveness, run_id: str) -> None:
        self._liveness = liveness
        self._manifest = run_lease(run_id, liveness.namespace, liveness.interval_s)
        self.name: str = self._manifest["metadata"]["name"]
        self._stop = threading.Event()
        self._liveness.create(self._manifest)
        self._thread = threading.Thread(target=self._renew_every_interval, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        self._liveness.renew(self._manifest)

    def _renew_every_interval(self) -> None:
        while not self._stop.wait(self._liveness.interval_s):
            try:
                self.renew()
            except Exception as e:  # the API server away for a while: keep trying, the slack allows it
                log.warning("renewing run lease %s failed (will retry): %s", self.name, e)

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._liveness.delete(self.name)


class LeaseLiveness:
    """`RunLiveness` on Leases in `namespace`, through the provider's API client."""

    def __init__(
        self, api_client: Any, namespace: str, translate: Translate, interval_s: float = RENEW_INTERVAL_S
    ) -> None:
        import kubernetes

        self._api = kubernetes.client.CoordinationV1Api(api_client)
        self._errors = kubernetes.client.ApiException
        self._translate = translate
        self.namespace = namespace
        self.interval_s = interval_s

    def beat(self, run_id: str) -> LeaseBeat:
        return LeaseBeat(self, run_id)

    def state(self, run_id: str) -> RunState:
        leases = self._leases(run_id)
        if not leases:
            return RunState.UNKNOWN
        now = _now()
        return RunState.ALIVE if any(renewed_within(lease, now) for lease in leases) else RunState.GONE

    def forget_gone(self, run_id: str) -> None:
        now = _now()
        for lease in self._leases(run_id):
            if not renewed_within(lease, now):
                self.delete(lease.metadata.name)

    # -- API calls ------------------------------------------------------------------------

    def create(self, manifest: dict[str, Any]) -> None:
        self._request("create", self._api.create_namespaced_lease, self.namespace, manifest)

    def renew(self, manifest: dict[str, Any]) -> None:
        """Move the renew time to now; recreate a Lease a reaper removed while the API was away."""
        renewal = {"spec": {"renewTime": _micro_time(_now())}}
        patch = self._api.patch_namespaced_lease
        if self._request("patch", patch, manifest["metadata"]["name"], self.namespace, renewal, missing_ok=True):
            return
        manifest["spec"] |= renewal["spec"]
        self.create(manifest)

    def delete(self, name: str) -> None:
        self._request("delete", self._api.delete_namespaced_lease, name, self.namespace, missing_ok=True)

    def _leases(self, run_id: str) -> list[Any]:
        selector = f"{LABEL_RUN}={run_id},{SANDBOX_ROLE}={RUN_LEASE}"
        listing = self._request("list", self._api.list_namespaced_lease, self.namespace, label_selector=selector)
        return list(listing.items)

    def _request(self, verb: str, call: Any, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        """`call`'s result; None for a missing Lease when `missing_ok`; API errors as the contract's."""
        try:
            return call(*args, **kwargs)
        except self._errors as e:
            if missing_ok and e.status == 404:
                return None
            raise self._translate(e, verb, "leases") from e
