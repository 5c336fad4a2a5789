"""The local provider: isolated sandbox processes on this machine, the embedded default."""

from providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]
