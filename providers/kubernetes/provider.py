"""`KubernetesProvider`: one pod per sandbox, through the official `kubernetes` client.

    create ─► NetworkPolicies checked (default-deny egress, nothing opening it)
           ─► Pod (providers.kubernetes.pod) ─► its token Secret, owned by the pod
           ─► its allow-list NetworkPolicy, if the spec has one, owned by the pod
    endpoint: ws://<pod>.<service>.<namespace>.svc:8000/ws   (the chart's headless Service)
    run_liveness: a Lease per process holding a run's sandboxes (providers.kubernetes.leases)

With `warm_pool=N`, sandboxes are claimed from a server-side warm pool of N pods instead
(providers.kubernetes.warm_pool: the agent-sandbox CRDs; their controller must run): create is
a SandboxClaim, the bound pod's server claimed with the sandbox's token, destroy deletes the claim.

Blocking client calls run in threads. The endpoint is a DNS name known before the pod is
scheduled: the pod sets `hostname` and `subdomain`, and the chart's headless Service
publishes it once the pod is ready. API errors become the contract's: 409 on a keyed create
finds the pod already made, 429 and 5xx are retryable (with the server's Retry-After), 403
says which verb on which resource the service account lacks, 422 which field was refused.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from typing import Any

from pydantic import SecretStr

import kubernetes
from envs.authoring.registry import class_path
from envs.server.targets import env_class_of
from hillclimb.config.chart import SandboxValues
from hillclimb.config.providers import KubernetesOptions
from hillclimb.provider_errors import (
    BadSpecError,
    FatalProviderError,
    ProviderError,
    RetryableProviderError,
    UnsupportedPolicy,
)
from providers.contract import LABEL_PREFIX, Sandbox, SandboxSpec
from providers.kubernetes.egress import SANDBOX_NAME, SANDBOX_ROLE, SERVER_PORT, allow_list, egress_findings
from providers.kubernetes.leases import LeaseLiveness
from providers.kubernetes.pod import pod_name, sandbox_pod, token_secret
from providers.kubernetes.warm_pool import GROUP as WARM_GROUP
from providers.kubernetes.warm_pool import VERSION as WARM_VERSION
from providers.kubernetes.warm_pool import bound_address, claim_server, refusal, sandbox_claim, warm_pool_objects
from providers.readiness import READY_TIMEOUT_S, wait_healthy
from providers.toolkit import KeyLocks, create_in_thread, utc_from_timestamp

SERVICE = "hillclimb-sandboxes"
"""The chart's headless Service: it gives each ready sandbox pod a DNS name."""
_POLICY_RECHECK_S = 60.0
_UNDO_ATTEMPTS = 5
_UNDO_DELAY_S = 0.5
_LOG_LINES = 50


class KubernetesProvider:
    name = "kubernetes"
    options_model = KubernetesOptions

    def __init__(
        self,
        namespace: str = SandboxValues().namespace,
        image: str = "hillclimb/sandbox:dev",
        runtime_class: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        api_url: str | None = None,
        warm_pool: int | None = None,
    ) -> None:
        """In-cluster credentials by default; `kubeconfig` (and `context`) from outside a cluster;
        `api_url` for an API server that takes no credentials (a local proxy, an emulator).
        `warm_pool`: claim sandboxes from a warm pool of this many pods (the agent-sandbox
        controller's), instead of starting a pod per sandbox."""
        self.namespace = namespace
        self.image = image
        self.runtime_class = runtime_class
        self.warm_pool = warm_pool
        if api_url is not None:
            configuration = kubernetes.client.Configuration()
            configuration.host = api_url
        else:
            configuration = kubernetes.client.Configuration()
            try:
                if kubeconfig is not None or context is not None:
                    kubernetes.config.load_kube_config(kubeconfig, context, client_configuration=configuration)
                else:
                    kubernetes.config.load_incluster_config(client_configuration=configuration)
            except kubernetes.config.ConfigException as e:
                raise FatalProviderError(
                    f"no Kubernetes credentials: {e} (outside a cluster, pass the kubeconfig and context options)"
                ) from e
        self._api = kubernetes.client.ApiClient(configuration)
        self._core = kubernetes.client.CoreV1Api(self._api)
        self._networking = kubernetes.client.NetworkingV1Api(self._api)
        self._custom = kubernetes.client.CustomObjectsApi(self._api)
        self._pools_made: set[str] = set()
        self._errors = kubernetes.client.ApiException
        self._tokens: dict[str, SecretStr] = {}
        self._key_locks = KeyLocks()
        self._policy_checked_at = -_POLICY_RECHECK_S
        self._policy_lock = threading.Lock()
        self.run_liveness: LeaseLiveness = LeaseLiveness(self._api, namespace, self._translate)
        """Where this provider's runs beat and its reapers look: Leases beside the sandboxes."""

    # -- the contract -------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> Sandbox:
        return await create_in_thread(spec, self._create, self.destroy)

    async def wait_ready(self, sandbox: Sandbox, timeout_s: float = READY_TIMEOUT_S) -> None:
        async def died() -> str | None:
            phase = await asyncio.to_thread(self._phase, sandbox.id)
            return None if phase in ("Pending", "Running") else f"is {phase.lower()}"

        await wait_healthy(
            sandbox, timeout_s, died=died, destroy=self.destroy, log_tail=self.log_tail, death_check_s=1.0
        )

    async def destroy(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._destroy, sandbox_id)

    async def log_tail(self, sandbox_id: str) -> str:
        return await asyncio.to_thread(self._log_tail, sandbox_id)

    async def list(self, selector: dict[str, str] | None = None) -> list[Sandbox]:
        return await asyncio.to_thread(self._list, selector or {})

    async def close(self) -> None:
        await asyncio.to_thread(self._api.close)

    # -- in threads ---------------------------------------------------------------------

    def _create(self, spec: SandboxSpec) -> Sandbox:
        self._check_egress()
        if self.warm_pool is not None:
            return self._claim(spec)
        name = pod_name(spec)
        with self._key_locks.hold(spec):
            if spec.idempotency_key is not None and (existing := self._read_pod(name)) is not None:
                return self._sandbox(existing)
            created_at = time.time()
            labels = spec.all_labels(created_at)
            policy = allow_list(spec, name, self.namespace)  # refuses host names before anything exists
            pod = sandbox_pod(
                spec, name, namespace=self.namespace, image=self.image, labels=labels, runtime_class=self.runtime_class
            )
            pod["spec"] |= {"hostname": name, "subdomain": SERVICE}
            made = self._call("create", "pods", self._core.create_namespaced_pod, self.namespace, pod)
            try:
                token = secrets.token_urlsafe(32)
                run_labels = {k: v for k, v in labels.items() if k.startswith(LABEL_PREFIX)}
                secret = token_secret(
                    name, token, namespace=self.namespace, labels=run_labels, pod_uid=made.metadata.uid
                )
                self._call("create", "secrets", self._core.create_namespaced_secret, self.namespace, secret)
                if policy is not None:
                    policy["metadata"]["ownerReferences"] = secret["metadata"]["ownerReferences"]
                    create_policy = self._networking.create_namespaced_network_policy
                    self._call("create", "networkpolicies", create_policy, self.namespace, policy)
            except BaseException:
                self._undo(name)
                raise
            self._tokens[name] = SecretStr(token)
            return self._sandbox(made)

    def _claim(self, spec: SandboxSpec) -> Sandbox:
        """A sandbox from the warm pool: claimed, bound, and its server given the sandbox's token."""
        template, pool = warm_pool_objects(
            spec,
            namespace=self.namespace,
            image=spec.image or self.image,
            runtime_class=self.runtime_class,
            replicas=int(self.warm_pool or 1),
        )
        self._ensure_warm_pool(template, pool)
        name = pod_name(spec)
        with self._key_locks.hold(spec):
            if spec.idempotency_key is not None and (existing := self._read_claim(name)) is not None:
                return self._claimed_sandbox(existing)
            labels = spec.all_labels(time.time())
            claim = sandbox_claim(
                name, namespace=self.namespace, warm_pool=pool["metadata"]["name"], labels=labels, ttl_s=spec.ttl_s
            )
            self._custom_call("create", "sandboxclaims", "create_namespaced_custom_object", claim)
            try:
                address = self._wait_bound(name)
                token = secrets.token_urlsafe(32)
                served = claim_server(f"http://{address}:{SERVER_PORT}", token)
                if served != class_path(env_class_of(spec.env)):
                    raise BadSpecError(f"warm pool {pool['metadata']['name']} serves {served}, not {spec.env!r}")
            except BaseException:
                self._undo(name)
                raise
            self._tokens[name] = SecretStr(token)
            made = self._read_claim(name)
            return self._claimed_sandbox(made or claim)

    def _ensure_warm_pool(self, template: dict[str, Any], pool: dict[str, Any]) -> None:
        """The template and its pool, made once (named by the pod's digest: one that exists is the same)."""
        name = template["metadata"]["name"]
        with self._policy_lock:
            if name in self._pools_made:
                return
            for plural, body in (("sandboxtemplates", template), ("sandboxwarmpools", pool)):
                try:
                    self._custom_call("create", plural, "create_namespaced_custom_object", body)
                except RetryableProviderError:
                    if self._custom_call("get", plural, "get_namespaced_custom_object", name=name) is None:
                        raise  # not a conflict with one already there
            self._pools_made.add(name)

    def _wait_bound(self, name: str, timeout_s: float = READY_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            claim = self._read_claim(name)
            if claim is None:
                raise RetryableProviderError(f"sandbox claim {name} disappeared before it was bound")
            if (address := bound_address(claim)) is not None:
                return address
            if (refused := refusal(claim)) is not None:
                raise BadSpecError(f"the agent-sandbox controller refused sandbox claim {name}: {refused}")
            time.sleep(0.2)
        raise RetryableProviderError(f"no warm sandbox was bound to claim {name} within {timeout_s:g} s")

    def _read_claim(self, name: str) -> dict[str, Any] | None:
        return self._custom_call("get", "sandboxclaims", "get_namespaced_custom_object", name=name)

    def _claimed_sandbox(self, claim: dict[str, Any]) -> Sandbox:
        name = claim["metadata"]["name"]
        labels = dict(claim["metadata"].get("labels") or {})
        labels.pop(SANDBOX_ROLE, None)
        return self._as_sandbox(name, str(bound_address(claim)), claim["metadata"].get("creationTimestamp"), labels)

    def _custom_call(self, verb: str, plural: str, method: str, body: Any = None, **kwargs: Any) -> Any:
        """A call on the agent-sandbox CRDs; None for a get of one that does not exist."""
        call = getattr(self._custom, method)
        args = (WARM_GROUP, WARM_VERSION, self.namespace, plural) + ((body,) if body is not None else ())
        try:
            return call(*args, **kwargs)
        except self._errors as e:
            if e.status == 404 and verb in ("get", "delete"):
                return None
            raise self._translate(e, verb, plural) from e

    def _check_egress(self) -> None:
        """Refuse to start sandboxes where egress is not denied (re-checked every minute)."""
        with self._policy_lock:
            if time.monotonic() - self._policy_checked_at < _POLICY_RECHECK_S:
                return
            listing = self._call(
                "list", "networkpolicies", self._networking.list_namespaced_network_policy, self.namespace
            )
            policies = [self._api.sanitize_for_serialization(p) for p in listing.items]
            findings = egress_findings(policies)
            if findings:
                raise UnsupportedPolicy(
                    f"namespace {self.namespace} does not deny sandbox egress: {'; '.join(findings)} "
                    "(install the hillclimb chart there, or remove the policy)"
                )
            self._policy_checked_at = time.monotonic()

    def _read_pod(self, name: str) -> Any:
        try:
            return self._core.read_namespaced_pod(name, self.namespace)
        except self._errors as e:
            if e.status == 404:
                return None
            raise self._translate(e, "get", "pods") from e

    def _phase(self, name: str) -> str:
        if self.warm_pool is not None:
            return "Running" if self._read_claim(name) is not None else "Gone"
        pod = self._read_pod(name)
        return "Gone" if pod is None else (pod.status.phase if pod.status and pod.status.phase else "Pending")

    def _destroy(self, name: str) -> None:
        """The pod and what it owns (Kubernetes would collect them; not every API server runs a
        collector); a claimed sandbox's claim (its controller deletes the sandbox with it)."""
        self._tokens.pop(name, None)
        if self.warm_pool is not None:
            self._custom_call("delete", "sandboxclaims", "delete_namespaced_custom_object", name=name)
            return
        deletions = (
            ("pods", self._core.delete_namespaced_pod, name),
            ("secrets", self._core.delete_namespaced_secret, f"{name}-token"),
            ("networkpolicies", self._networking.delete_namespaced_network_policy, f"{name}-egress"),
        )
        for resource, delete, object_name in deletions:
            try:
                delete(object_name, self.namespace)
            except self._errors as e:
                if e.status != 404:
                    raise self._translate(e, "delete", resource) from e

    def _undo(self, name: str) -> None:
        """Remove what a failed create made. A create fails most often because the API server is
        throttling (429), and then so may these deletes: they are tried again after its
        Retry-After, since nothing else would remove a pod of a live run before its deadline."""
        for attempt in range(1, _UNDO_ATTEMPTS + 1):
            try:
                self._destroy(name)
                return
            except RetryableProviderError as e:
                if attempt == _UNDO_ATTEMPTS:
                    raise
                time.sleep(max(e.delay_s, _UNDO_DELAY_S * attempt))

    def _log_tail(self, name: str) -> str:
        try:
            read = self._core.read_namespaced_pod_log
            return read(name, self.namespace, container="server", tail_lines=_LOG_LINES) or ""
        except self._errors as e:
            if e.status in (400, 404):  # gone, or never started
                return ""
            raise self._translate(e, "get", "pods/log") from e

    def _list(self, selector: dict[str, str]) -> list[Sandbox]:
        wanted = {SANDBOX_ROLE: "sandbox", **selector}
        label_selector = ",".join(f"{k}={v}" for k, v in wanted.items())
        if self.warm_pool is not None:
            listing = self._custom_call(
                "list", "sandboxclaims", "list_namespaced_custom_object", label_selector=label_selector
            )
            claims = [c for c in listing["items"] if not c["metadata"].get("deletionTimestamp")]
            return [self._claimed_sandbox(c) for c in claims if bound_address(c) is not None]
        listing = self._call(
            "list", "pods", self._core.list_namespaced_pod, self.namespace, label_selector=label_selector
        )
        return [self._sandbox(p) for p in listing.items if not p.metadata.deletion_timestamp]

    def _sandbox(self, pod: Any) -> Sandbox:
        name = pod.metadata.name
        created = pod.metadata.creation_timestamp
        labels = dict(pod.metadata.labels or {})
        labels.pop(SANDBOX_ROLE, None)
        labels.pop(SANDBOX_NAME, None)
        return self._as_sandbox(name, f"{name}.{SERVICE}.{self.namespace}.svc", created, labels)

    def _as_sandbox(self, name: str, host: str, created: Any, labels: dict[str, str]) -> Sandbox:
        return Sandbox(
            id=name,
            endpoint=f"ws://{host}:{SERVER_PORT}/ws",
            token=self._tokens.get(name),
            provider=self.name,
            created_at=created or utc_from_timestamp(float(labels.get(LABEL_PREFIX + "created-at", 0))),
            labels=labels,
        )

    # -- errors ---------------------------------------------------------------------------

    def _call(self, verb: str, resource: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except self._errors as e:
            raise self._translate(e, verb, resource) from e

    def _translate(self, error: Any, verb: str, resource: str) -> ProviderError:
        said = f"{verb} {resource} in namespace {self.namespace}: HTTP {error.status} {error.reason}"
        body = (error.body or "")[:500] if isinstance(error.body, str) else ""
        if error.status == 403:
            forbidden = f"forbidden: the service account may not {verb} {resource} in {self.namespace}"
            return FatalProviderError(f"{forbidden} (the chart's Role grants what the provider uses): {body}")
        if error.status == 422:
            return BadSpecError(f"the API server refused the {resource} object: {body}")
        if error.status in (409, 429) or error.status >= 500:
            retry_after = (error.headers or {}).get("Retry-After", "")
            delay = float(retry_after) if retry_after.isdigit() else 0.0
            return RetryableProviderError(f"{said}: {body}", delay_s=delay)
        return FatalProviderError(f"{said}: {body}")
