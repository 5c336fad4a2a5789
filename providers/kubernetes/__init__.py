"""Kubernetes sandboxes: a provider plugin (`pip install "hillclimb[k8s]"`), one pod per sandbox.

provider      `KubernetesProvider`: creates, lists and destroys sandboxes through the API
pod           one sandbox's Pod and its token Secret
egress        default-deny egress NetworkPolicies, and one pod's allow-list
warm_pool     sandboxes claimed from a server-side warm pool (the agent-sandbox CRDs)
leases        run liveness across the cluster: a Lease per process holding a run's sandboxes
"""
