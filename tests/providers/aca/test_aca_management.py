"""The session pool through Azure Resource Manager, at the HTTP transport: the exact JSON a pool's
PUT carries, the long-running operation polled to its end, an ensure that finds its pool current
sends nothing, and ARM's errors as the contract's with what to fix."""

from __future__ import annotations

from typing import Any

import pytest

from hillclimb.provider_errors import BadSpecError, FatalProviderError, RetryableProviderError, UnsupportedPolicy
from providers.aca.management import PoolManager
from providers.aca.pool import (
    DIGEST_TAG,
    MANAGED_TAG,
    new_identifier,
    pool_settings,
    pool_tags,
    run_of,
    session_pool_body,
)
from providers.contract import EgressPolicy, Resources, SandboxSpec
from tests.providers.aca.fake_azure import FakeArm, FakeCredential

ENVIRONMENT = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.App/managedEnvironments/env-1"
OPTIONS: dict[str, Any] = {"environment_id": ENVIRONMENT, "location": "westus2", "image": "reg.azurecr.io/hc:1"}


@pytest.fixture
def arm() -> FakeArm:
    return FakeArm()


@pytest.fixture
def manager(arm: FakeArm) -> PoolManager:
    return PoolManager(FakeCredential(), "sub-1", "rg-1", transport=arm.transport(), polling_interval_s=0)


def _body(spec: SandboxSpec | None = None, **options: Any) -> tuple[str, dict[str, Any]]:
    spec = spec or SandboxSpec(env="toy_terminal", run_id="run-7", labels={"team": "blue"})
    settings = pool_settings(spec, **{**OPTIONS, **options})
    return settings.name(), session_pool_body(settings, pool_tags(spec))


def test_the_pool_json_that_reaches_arm(arm: FakeArm, manager: PoolManager) -> None:
    name, body = _body(
        SandboxSpec(
            env="toy_terminal", run_id="run-7", labels={"team": "blue"}, resources=Resources(cpu=0.5, memory_mb=1024)
        ),
        ready_sessions=8,
        max_concurrent_sessions=40,
        registry_server="reg.azurecr.io",
        registry_identity="/subscriptions/sub-1/resourcegroups/rg-1/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull",
    )
    endpoint = manager.ensure(name, body)
    assert endpoint == f"https://{name}.fakeenv.westus2.azurecontainerapps.io"
    (put,) = arm.puts()
    assert put.path == f"/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.App/sessionPools/{name}"
    sent = put.body
    properties = sent["properties"]
    assert properties["environmentId"] == ENVIRONMENT
    assert (properties["containerType"], properties["poolManagementType"]) == ("CustomContainer", "Dynamic")
    assert properties["sessionNetworkConfiguration"] == {"status": "EgressDisabled"}
    assert properties["scaleConfiguration"] == {"maxConcurrentSessions": 40, "readySessionInstances": 8}
    assert properties["dynamicPoolConfiguration"] == {
        "lifecycleConfiguration": {"lifecycleType": "Timed", "cooldownPeriodInSeconds": 600}
    }
    template = properties["customContainerTemplate"]
    assert template["ingress"] == {"targetPort": 8000}
    (container,) = template["containers"]
    assert container["image"] == "reg.azurecr.io/hc:1"
    assert container["resources"] == {"cpu": 0.5, "memory": "1Gi"}
    assert container["command"] == ["/opt/hillclimb/bin/python", "-P", "-m", "envs"]
    assert container["args"][:6] == ["toy_terminal", "--host", "0.0.0.0", "--port", "8000", "--claim-token"]
    identity = OPTIONS_IDENTITY = sent["identity"]
    assert OPTIONS_IDENTITY["type"] == "UserAssigned" and len(identity["userAssignedIdentities"]) == 1
    assert template["registryCredentials"]["server"] == "reg.azurecr.io"
    assert sent["tags"]["team"] == "blue" and sent["tags"]["hillclimb.dev-run-id"] == "run-7"
    assert sent["tags"][MANAGED_TAG] == "true" and len(sent["tags"][DIGEST_TAG]) == 16
    assert not any("/" in tag for tag in sent["tags"])  # ARM refuses '/' in a tag name
    assert all(r.authorization and "management.azure.com#" in r.authorization for r in arm.requests_seen)
    polls = [r for r in arm.requests_seen if r.path.startswith("/operations/")]
    assert len(polls) == arm.polls_to_finish  # the operation was followed to its end


def test_on_exit_lifecycle_lives_as_long_as_the_sandboxs_ttl() -> None:
    _, body = _body(SandboxSpec(ttl_s=900), lifecycle="on-exit")
    assert body["properties"]["dynamicPoolConfiguration"]["lifecycleConfiguration"] == {
        "lifecycleType": "OnContainerExit",
        "maxAlivePeriodInSeconds": 900,
    }


def test_ensure_is_idempotent_and_a_changed_spec_is_another_pool(arm: FakeArm, manager: PoolManager) -> None:
    name, body = _body()
    first = manager.ensure(name, body)
    seen = len(arm.requests_seen)
    assert manager.ensure(name, body) == first
    assert [r.method for r in arm.requests_seen[seen:]] == ["GET"]  # found current: no PUT
    other, other_body = _body(SandboxSpec(env="terminal"))
    assert other != name and manager.ensure(other, other_body) != first
    assert set(manager.managed()) == {name, other}
    arm.pools[name]["properties"]["provisioningState"] = "Failed"
    manager.ensure(name, body)
    assert len(arm.puts()) == 3  # a failed pool is provisioned again
    manager.delete(name)
    manager.delete(name)  # one already gone is deleted
    assert set(manager.managed()) == {other} and manager.endpoint(name) is None


@pytest.mark.parametrize(
    ("status", "code", "headers", "error", "words"),
    [
        (401, "InvalidAuthenticationToken", {}, FatalProviderError, "not authenticated: check the credential"),
        (403, "AuthorizationFailed", {}, FatalProviderError, "Microsoft.App/sessionPools/write"),
        (400, "InvalidParameter", {}, BadSpecError, "InvalidParameter"),
        (409, "Conflict", {}, RetryableProviderError, "HTTP 409"),
        (429, "TooManyRequests", {"Retry-After": "17"}, RetryableProviderError, "HTTP 429"),
    ],
)
def test_arm_errors_say_what_to_fix(
    arm: FakeArm, manager: PoolManager, status: int, code: str, headers: dict[str, str], error: type, words: str
) -> None:
    arm.fail_next("PUT", status, code, f"{code}: refused here", headers)
    name, body = _body()
    with pytest.raises(error, match=words) as raised:
        manager.ensure(name, body)
    if status == 429:
        assert raised.value.delay_s == 17.0


def test_what_aca_cannot_do_is_refused_never_ignored() -> None:
    with pytest.raises(UnsupportedPolicy, match="no egress allow-list"):
        _body(SandboxSpec(egress=EgressPolicy(mode="allow_list", allow=("10.0.0.0/8",))))
    with pytest.raises(BadSpecError, match="custom command"):
        _body(SandboxSpec(command=("sleep", "1")))
    name, _ = _body()
    assert _body(SandboxSpec(run_id="run-7", env_vars={"A": "1"}))[0] != name  # env: another pool
    assert _body(SandboxSpec(run_id="other-run"))[0] == name  # the run is not the pool's
    assert name.isalnum() and name.islower() and 3 <= len(name) <= 63 and name[0].isalpha()


@pytest.mark.parametrize("run_id", ["r", "echo_toy.v2-run", "a-b-c", "x" * 60])
def test_identifiers_carry_their_run(run_id: str) -> None:
    identifier = new_identifier(run_id)
    assert 4 <= len(identifier) <= 128 and run_of(identifier) == run_id
    assert set(identifier) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789|-")
    assert new_identifier(run_id) != identifier  # random: nobody else guesses it
    assert run_of("someone-elses-session") is None
