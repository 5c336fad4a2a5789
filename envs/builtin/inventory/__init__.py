"""The inventory environment: a deterministic warehouse exposed as MCP tools."""

from envs.builtin.inventory.env import InventoryAction, InventoryEnv, InventoryObservation, InventoryState

__all__ = ["InventoryAction", "InventoryEnv", "InventoryObservation", "InventoryState"]
