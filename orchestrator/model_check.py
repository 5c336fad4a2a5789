"""Is the configured model there? Checked in the driver before Ray starts, so that a wrong path or
an unreachable hub id is one line within seconds, not minutes of actor restarts and hub retries.

    tiny model or none       ─► nothing to check
    a directory / GGUF file  ─► `resolve_model`'s checks; a GGUF is converted here, once, before
    a catalog name             the actors that load it start
    a hub id                 ─► config.json from the local cache, or fetched with a short timeout
"""

from __future__ import annotations

from typing import Any

from hillclimb.errors import ConfigError, ModelLoadError, ModelNotFoundError
from trainers.models.gguf import loadable

HUB_TIMEOUT_S = 10.0


def check_model_available(policy: Any) -> None:
    """Raise ConfigError, naming the key, if the policy's Hugging Face model cannot be found."""
    model = getattr(policy, "model", None)
    if getattr(model, "type", None) != "hf":
        return
    name = model.name_or_path
    try:
        kind, _ = loadable(name)
    except (ModelNotFoundError, ModelLoadError) as e:
        raise type(e)(f"policy.model.name_or_path={name!r}: {e}") from None
    if kind == "hub":
        _check_hub(name, model.revision)


def _check_hub(repo_id: str, revision: str | None) -> None:
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(repo_id, "config.json", revision=revision, etag_timeout=HUB_TIMEOUT_S)
    except Exception as e:  # the hub client's errors span httpx, OSError and its own types; all mean "not there"
        raise ConfigError(
            f"policy.model.name_or_path={repo_id!r}: not a local directory, and not in the Hugging Face cache or "
            f"reachable on the Hub ({type(e).__name__}); check the id, download it first, or give a local directory"
        ) from None
