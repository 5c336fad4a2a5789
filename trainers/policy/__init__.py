"""Policies: what turns a prompt's token ids into an action's token ids and log-probs."""

from hillclimb.config.rollout import SamplingParams
from trainers.policy.base import EpisodeInfo, GenerateRequest, Generation, Policy

__all__ = ["EpisodeInfo", "GenerateRequest", "Generation", "Policy", "SamplingParams"]
