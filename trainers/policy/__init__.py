"""Policies: what turns a prompt's token ids into an action's token ids and log-probs."""

from trainers.policy.base import EpisodeInfo, GenerateRequest, Generation, Policy, SamplingParams

__all__ = ["EpisodeInfo", "GenerateRequest", "Generation", "Policy", "SamplingParams"]
