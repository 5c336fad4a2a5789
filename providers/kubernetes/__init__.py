"""The Kubernetes sandbox provider's parts (issue 16). So far: the egress NetworkPolicies
(`egress`); the pod manifests and the provider itself build on them."""
