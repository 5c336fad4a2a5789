"""hillclimb's ground floor: the error tree and the run-config schema.

Every other package (envs, providers, trainers, orchestrator) stands on this one; it imports none
of them, so validating a config or naming an error loads no runtime code.
"""
